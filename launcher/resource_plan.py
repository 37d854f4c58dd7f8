"""Dry-run plan of a run: layout, memory and time, from the recipe alone (no model is built, so
the 236B plan runs on a login node). `exaone-train plan` prints it; the trainer writes the same
dict as `plan.json` next to its checkpoints (`make_plan(cfg, world_size)`).

Layout follows megatron-core 0.16 `initialize_model_parallel` (default order tp-cp-ep-dp-pp):
  DP = world / (TP*PP*CP); experts are laid out within each pipeline stage's DP*CP*TP ranks as
  ExpertTP x EP x ExpertDP, so EP*ExpertTP must divide DP*CP*TP and
  ExpertDP = world / (ExpertTP*EP*PP).

Memory per GPU (bytes per parameter; "d" = the group the distributed optimizer shards over:
DP*CP for dense parameters, ExpertDP for expert parameters):
  bf16 params 2 + fp32 main grads 4 + fp32 master 4 + optimizer state (AdamW 8, Muon 4)
  without the distributed optimizer: 2 + 4 + 4 + state          (18 for AdamW, 14 for Muon)
  with it:                           2 + 4 + (4 + state) / d    (Megatron's "6 + 12/d")
  fp32 recipes keep no separate master copy: 4 + 4 + state (/d).
Muon updates the 2-D hidden matrices (attention, MLP, experts, router, MTP projection); the
embedding, LM head and norms use AdamW.

Activations: see `activation_formula()` (printed in the plan).
"""

from __future__ import annotations

import math
from typing import Any

from exaone_train.config.schema import ModelConfig, ParallelConfig, RecipeConfig
from exaone_train.config.validate import validate_batching, validate_fp8_gpu
from exaone_train.errors import ConfigError
from exaone_train.model.backend import transformer_engine_installed, uses_transformer_engine
from exaone_train.model.counts import (
    attention_params,
    dense_ffn_params,
    expert_params,
    shared_expert_params,
    training_flops_per_token,
)
from exaone_train.model.layout import (
    SLIDING,
    layer_types,
    moe_layers,
    padded_vocab_size,
)
from exaone_train.parallel.dims import ParallelDims
from exaone_train.train.hardware import gpu_spec, peak_flops

GIB = 1024**3
DEFAULT_MFU = 0.4
DEFAULT_SEQ_LEN_TOKENS = 8192
DEFAULT_GLOBAL_BATCH_TOKENS = 8 * 1024 * 1024  # assumed when neither recipe nor caller gives one
OPTIMIZER_STATE_BYTES = {"adamw": 8, "muon": 4}  # fp32 exp_avg + exp_avg_sq | fp32 momentum

# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


def check_layout(p: ParallelConfig, m: ModelConfig, world_size: int, seq_len_tokens: int) -> None:
    """Rules megatron-core enforces at start-up, raised here as ConfigError before submission."""
    dims = ParallelDims.of(p, world_size)
    dims.check_world(moe=m.num_experts is not None)
    if m.num_experts is not None and (m.moe_ffn_hidden_size or 0) % p.etp:
        raise ConfigError("parallel.expert_tp", p.etp,
                          f"does not divide model.moe_ffn_hidden_size={m.moe_ffn_hidden_size}")
    if m.num_experts is not None and p.tp > 1 and not p.sequence_parallel:
        raise ConfigError("parallel.sequence_parallel", p.sequence_parallel,
                          "megatron-core refuses to train MoE with parallel.tp > 1 without "
                          "sequence parallelism")
    dims.check_seq(seq_len_tokens, field="seq_len_tokens")


def layout(p: ParallelConfig, m: ModelConfig, world_size: int) -> dict[str, Any]:
    dims = ParallelDims.of(p, world_size)
    experts = m.num_experts is not None
    return {
        "tp": p.tp, "pp": p.pp, "virtual_pp": p.virtual_pp, "cp": p.cp, "dp": dims.dp,
        "ep": p.ep, "expert_tp": p.etp, "expert_dp": dims.expert_dp if experts else None,
        "experts_per_ep_rank": m.num_experts // p.ep if m.num_experts is not None else None,
        "model_parallel_size": dims.model_parallel,
        "sequence_parallel": p.sequence_parallel,
        "distributed_optimizer": p.distributed_optimizer,
        "recompute": p.recompute,
    }


def pipeline_stages(p: ParallelConfig, m: ModelConfig) -> list[dict[str, Any]]:
    """Decoder layers held by each pipeline rank (megatron-core's uniform split; with virtual
    stages rank r holds chunks r, r+PP, r+2PP, ...). Embedding on the first rank; final norm,
    LM head and the MTP block on the last."""
    vpp = p.virtual_pp or 1
    per_chunk = m.num_layers // (p.pp * vpp)
    stages = []
    for rank in range(p.pp):
        chunks = [[per_chunk * (v * p.pp + rank), per_chunk * (v * p.pp + rank + 1)]
                  for v in range(vpp)]
        stages.append({"stage": rank, "layer_ranges": chunks,
                       "num_layers": per_chunk * vpp,
                       "embedding": rank == 0, "lm_head": rank == p.pp - 1,
                       "mtp": rank == p.pp - 1 and m.mtp_num_layers > 0})
    return stages


# --------------------------------------------------------------------------------------------
# Parameters per GPU
# --------------------------------------------------------------------------------------------


def _layer_split(m: ModelConfig, is_moe: bool, tp: int, ep: int, expert_tp: int) -> dict[str, float]:
    """Parameters of one decoder layer on one GPU, by optimizer group."""
    h, norms = m.hidden_size, 2 * m.hidden_size + (2 * m.head_dim if m.qk_norm else 0)
    matrices = attention_params(m) - (2 * m.head_dim if m.qk_norm else 0)
    if is_moe:
        matrices += shared_expert_params(m)
        router = h * (m.num_experts or 0)  # replicated across TP
        experts = (m.num_experts or 0) * expert_params(m) / (ep * expert_tp)
        return {"dense_muon": matrices / tp + router, "adamw": norms, "expert_muon": experts}
    return {"dense_muon": (matrices + dense_ffn_params(m)) / tp, "adamw": norms, "expert_muon": 0.0}


def _stage_params(m: ModelConfig, p: ParallelConfig, stage: dict[str, Any]) -> dict[str, float]:
    moe = moe_layers(m)
    out = {"dense_muon": 0.0, "adamw": 0.0, "expert_muon": 0.0}
    split = {is_moe: _layer_split(m, is_moe, p.tp, p.ep, p.etp) for is_moe in set(moe)}
    for start, end in stage["layer_ranges"]:
        for i in range(start, end):
            for k, v in split[moe[i]].items():  # layer by layer: the same float sums
                out[k] += v
    vocab_shard = padded_vocab_size(m, p.tp) * m.hidden_size / p.tp
    if stage["embedding"]:
        out["adamw"] += vocab_shard
    if stage["lm_head"]:
        # Tied embeddings: megatron-core keeps a copy of the word embeddings on the last stage.
        out["adamw"] += vocab_shard + m.hidden_size
    if stage["mtp"]:
        h = m.hidden_size
        dense = _layer_split(m, False, p.tp, p.ep, p.etp)
        out["dense_muon"] += m.mtp_num_layers * (2 * h * h / p.tp + dense["dense_muon"])
        out["adamw"] += m.mtp_num_layers * (3 * h + dense["adamw"])  # enorm, hnorm, final norm
    return out


def optimizer_name(cfg: RecipeConfig, optimizer: str | None) -> str:
    """The explicit argument (`plan --optimizer`), else the recipe's `optim.algorithm`."""
    name = optimizer or cfg.optim.algorithm
    if name not in OPTIMIZER_STATE_BYTES:
        field = "--optimizer" if optimizer else "optim.algorithm"
        raise ConfigError(field, name, f"plan knows {sorted(OPTIMIZER_STATE_BYTES)}")
    return name


def static_memory(params: dict[str, float], lay: dict[str, Any], dtype: str, optim: str,
                  distributed: bool) -> dict[str, float]:
    """Bytes on one GPU for params + grads + master + optimizer state (formula: module doc)."""
    param_b, master_b = (4, 0) if dtype == "fp32" else (2, 4)
    dense_d = lay["dp"] * lay["cp"] if distributed else 1
    expert_d = (lay["expert_dp"] or 1) if distributed else 1
    muon_state = OPTIMIZER_STATE_BYTES[optim]
    groups = [("dense_muon", muon_state, dense_d), ("adamw", 8, dense_d),
              ("expert_muon", muon_state, expert_d)]
    n = sum(params.values())
    sharded = sum(params[g] * (master_b + state) / d for g, state, d in groups)
    return {"params_bytes": n * param_b, "grads_bytes": n * 4,
            "master_and_optimizer_bytes": sharded,
            "total_bytes": n * (param_b + 4) + sharded}


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------


def activation_formula() -> str:
    return (
        "per layer, per micro-batch, per GPU, bytes = e * (s/CP) * b * X / TP  "
        "(e = 2 bf16 | 4 fp32; norm terms are divided by TP only with sequence parallelism). "
        "recompute=none|selective: X = attention [2h + 2(a+2g)d + ad] (norm in, QKV in, "
        "Q/K/V before and after QK-norm+RoPE, core-attention out) + dense MLP [2h + 3f] or "
        "MoE [2h + k(h + 3f_e) + 3f_s] (norm in, router/fc1 in, per routed copy: permuted "
        "input, gate/up, SwiGLU out; shared expert). Without flash attention "
        "(transformer_impl=local, or auto without Transformer Engine) the local attention is "
        "blockwise (model/blockwise.py, no s^2 term): recompute=none also keeps its fp32 output "
        "and row log-sum-exp, 4*a*(d+1)*(s/CP)*b/TP (measured: bench/attention_memory.py), and "
        "under CP the keys/values it attends to: sliding-window layers the halo-extended "
        "e*2g*d*(s/CP + 2(W-1))*b/TP (halo exchange, parallel/halo.py), global layers (and "
        "windows longer than a chunk s/(2CP)) the all-gathered e*2g*d*s*b/TP; selective "
        "recompute (core_attn) drops them. Each stage adds once the working set of one layer's "
        "attention backward: fp32 dQ, dK, dV and dO copied into the kernel's layout (plus fp32 "
        "copies of Q, K, V, dO and the cast gradients when e=2), 4 tiles of a/TP x 256 x 256 "
        "fp32 scores, and under selective the recomputed layer's kept set. With Transformer "
        "Engine's flash attention selective == none. recompute=full: X = h (layer input only) "
        "plus one layer's recompute working set per stage. Peak on pipeline rank 0 = "
        "layers_per_stage * per-layer * in-flight micro-batches, in-flight = PP (1F1B) or "
        "PP*(1 + (PP-1)/(PP*VPP)) (interleaved), at most the number of micro-batches; rank r "
        "holds PP-r in 1F1B; the last rank adds fp32 logits 4*(s/CP)*b*V/TP per output head "
        "(LM head + MTP). Per-GPU total = max over ranks of static + activations.")


def _layer_activation_elems(m: ModelConfig, is_moe: bool, sp: bool, tp: int) -> float:
    """X / TP of activation_formula(), per token."""
    h, a, g, d = m.hidden_size, m.num_attention_heads, m.num_query_groups, m.head_dim
    norm = (2 * h) / (tp if sp else 1)
    attn = (2 * (a + 2 * g) * d + a * d) / tp
    if is_moe:
        mlp = (m.moe_top_k * (h + 3 * (m.moe_ffn_hidden_size or 0))
               + 3 * (m.moe_shared_expert_ffn_hidden_size or 0)) / tp
    else:
        mlp = 3 * m.ffn_hidden_size / tp
    return 2 * norm + attn + mlp


def in_flight_microbatches(p: ParallelConfig, stage: int, num_microbatches: int) -> float:
    """Micro-batches whose activations pipeline rank `stage` holds at its peak, in units of
    the whole stage. 1F1B: PP - stage. Interleaved (megatron-core's warm-up): (PP-stage-1)*2 +
    (VPP-1)*PP + 1 chunks of L/(PP*VPP) layers, i.e. PP*(1 + (PP-1)/(PP*VPP)) on rank 0."""
    if p.virtual_pp is None:
        return float(min(p.pp - stage, num_microbatches))
    chunks = (p.pp - stage - 1) * 2 + (p.virtual_pp - 1) * p.pp + 1
    return min(chunks, num_microbatches * p.virtual_pp) / p.virtual_pp


def attention_is_flash(cfg: RecipeConfig) -> bool:
    """What the builder picks on a GPU node with this environment's packages: Transformer
    Engine's flash attention, or the local blockwise attention (`auto` without Transformer
    Engine installed)."""
    return uses_transformer_engine(cfg.precision, cuda=True)


# --------------------------------------------------------------------------------------------
# The local (blockwise) attention: what it keeps and what it exchanges under CP
# --------------------------------------------------------------------------------------------

BLOCK_TOKENS = 256  # exaone_train.model.blockwise.BLOCK_TOKENS (that module imports torch)
LIVE_TILES = 4  # score tiles alive at once in a tile's backward: P, dP, dP - delta, dS


def halo_tokens(m: ModelConfig) -> int | None:
    """Keys a sliding-window query sees before itself (W-1), None without sliding windows."""
    if m.sliding_window_tokens is None or SLIDING not in layer_types(m):
        return None
    return m.sliding_window_tokens - 1


def cp_exchange(cfg: RecipeConfig, seq_len_tokens: int) -> list[str]:
    """How each decoder layer reaches the keys of other CP ranks: "none" (CP 1), "halo" (local
    path, sliding window within one chunk: `parallel.halo.halo_fits`, W-1 <= s/(2CP)) or
    "all_gather" (global layers, longer windows, and Transformer Engine's attention)."""
    p = cfg.parallel
    if p.cp == 1:
        return ["none"] * cfg.model.num_layers
    halo = halo_tokens(cfg.model)
    fits = halo is not None and 0 < halo <= seq_len_tokens // p.cp // 2
    local = not attention_is_flash(cfg)
    return ["halo" if local and fits and t == SLIDING else "all_gather"
            for t in layer_types(cfg.model)]


def keys_held(cfg: RecipeConfig, exchange: str, seq_len_tokens: int) -> float:
    """Key (and value) positions one CP rank's attention of a layer holds."""
    s_local = seq_len_tokens / cfg.parallel.cp
    if exchange == "halo":
        return s_local + 2 * (halo_tokens(cfg.model) or 0)  # [halo, chunk, halo, chunk]
    return float(seq_len_tokens) if exchange == "all_gather" else s_local


def blockwise_saved_bytes_per_token(m: ModelConfig, tp: int, e: int) -> float:
    """Bytes the blockwise attention saves for backward per query token on one GPU beyond its
    q/k/v inputs: the fp32 output (apart from the layer's output) and row log-sum-exp. The
    same for fp32 and bf16 activations (bench/attention_memory.py measures both)."""
    del e  # the saved output and LSE are fp32 whatever the activations' dtype
    return 4 * m.num_attention_heads / tp * (m.head_dim + 1)


def blockwise_working_bytes(m: ModelConfig, tp: int, e: int, q_tokens: float,
                            k_tokens: float) -> float:
    """Transient peak of one blockwise attention backward (per sample, one GPU): fp32 dQ, dK,
    dV, dO copied into the kernel's [b, g, rep, s, d] layout; with e < 4 also fp32 copies of
    q, k, v and dO, and the gradients cast back; plus LIVE_TILES fp32 score tiles per query
    head. bench/attention_memory.py prints this against the measured peak."""
    a, g, d = m.num_attention_heads / tp, m.num_query_groups / tp, m.head_dim
    q_elems, kv_elems = a * d * q_tokens, 2 * g * d * k_tokens
    grads = 4 * (q_elems + kv_elems) + e * q_elems
    copies = 0.0 if e == 4 else 4 * (2 * q_elems + kv_elems) + e * (q_elems + kv_elems)
    return grads + copies + LIVE_TILES * 4 * a * BLOCK_TOKENS**2


def _attention_kept_bytes(cfg: RecipeConfig, exchange: str, seq_len_tokens: int,
                          micro_batch_samples: int) -> float:
    """What the local attention keeps for backward beyond X (recompute=none): fp32 output and
    LSE, and under CP the exchanged keys/values (activation_formula)."""
    m, p = cfg.model, cfg.parallel
    e = 4 if cfg.precision.dtype == "fp32" else 2
    s, b = seq_len_tokens / p.cp, micro_batch_samples
    kv = 0.0 if exchange == "none" else (
        e * 2 * m.num_query_groups / p.tp * m.head_dim * keys_held(cfg, exchange, seq_len_tokens))
    return b * (s * blockwise_saved_bytes_per_token(m, p.tp, e) + kv)


def attention_working_bytes(cfg: RecipeConfig, seq_len_tokens: int,
                            micro_batch_samples: int) -> float:
    """Held once per stage: the largest layer's blockwise attention backward working set, plus
    under selective recompute that layer's recomputed kept set (0 with flash attention)."""
    if attention_is_flash(cfg):
        return 0.0
    m, p = cfg.model, cfg.parallel
    e = 4 if cfg.precision.dtype == "fp32" else 2
    s, b = seq_len_tokens / p.cp, micro_batch_samples
    worst = 0.0
    for ex in set(cp_exchange(cfg, seq_len_tokens)):
        work = b * blockwise_working_bytes(m, p.tp, e, s, keys_held(cfg, ex, seq_len_tokens))
        if p.recompute == "selective":
            work += _attention_kept_bytes(cfg, ex, seq_len_tokens, micro_batch_samples)
        worst = max(worst, work)
    return worst


def layer_activation_bytes(cfg: RecipeConfig, seq_len_tokens: int,
                           micro_batch_samples: int) -> list[float]:
    """Bytes one micro-batch leaves stored per decoder layer on one GPU (activation_formula)."""
    m, p = cfg.model, cfg.parallel
    e = 4 if cfg.precision.dtype == "fp32" else 2
    s, b = seq_len_tokens / p.cp, micro_batch_samples
    if p.recompute == "full":
        return [e * s * b * m.hidden_size / (p.tp if p.sequence_parallel else 1)] * m.num_layers
    kept = not attention_is_flash(cfg) and p.recompute == "none"
    return [e * s * b * _layer_activation_elems(m, moe, p.sequence_parallel, p.tp)
            + (_attention_kept_bytes(cfg, ex, seq_len_tokens, b) if kept else 0.0)
            for moe, ex in zip(moe_layers(m), cp_exchange(cfg, seq_len_tokens), strict=True)]


def activation_memory(cfg: RecipeConfig, stages: list[dict[str, Any]], seq_len_tokens: int,
                      micro_batch_samples: int, num_microbatches: int) -> dict[str, Any]:
    """Peak activation bytes per pipeline rank; sets `stage["activation_gib"]`."""
    m, p = cfg.model, cfg.parallel
    per_layer = layer_activation_bytes(cfg, seq_len_tokens, micro_batch_samples)
    # Full recompute re-materialises one layer at a time in backward: add that working set;
    # one layer's attention backward is transient on every path (0 with flash attention).
    working = attention_working_bytes(cfg, seq_len_tokens, micro_batch_samples)
    if p.recompute == "full":
        full = RecipeConfig(model=m, parallel=ParallelConfig(**{**vars(p), "recompute": "none"}),
                            precision=cfg.precision)
        working += max(layer_activation_bytes(full, seq_len_tokens, micro_batch_samples))
    s, b = seq_len_tokens / p.cp, micro_batch_samples
    logits = 4 * s * b * padded_vocab_size(m, p.tp) / p.tp * (1 + m.mtp_num_layers)
    for st in stages:
        held = sum(per_layer[i] for a, z in st["layer_ranges"] for i in range(a, z))
        flight = in_flight_microbatches(p, st["stage"], num_microbatches)
        peak = held * flight + working + (logits if st["lm_head"] else 0.0)
        st["activation_gib"] = peak / GIB
        st["in_flight_microbatches"] = flight
    return {
        "formula": activation_formula(),
        "flash_attention_assumed": attention_is_flash(cfg),
        "per_layer_per_microbatch_gib": max(per_layer) / GIB,
        "logits_gib": logits / GIB,
        "peak_gib": max(st["activation_gib"] for st in stages),
        "in_flight_microbatches_first_stage": stages[0]["in_flight_microbatches"],
    }


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


def _batch(cfg: RecipeConfig, dp: int, seq_len: int, micro: int, global_batch: int | None) -> int:
    gb = global_batch or cfg.train.global_batch_samples
    if gb is None:  # assumed: the smallest multiple of DP*micro (x PP if interleaved) ~8M tokens
        per = dp * micro * (cfg.parallel.pp if cfg.parallel.virtual_pp is not None else 1)
        return per * max(1, math.ceil(DEFAULT_GLOBAL_BATCH_TOKENS / seq_len / per))
    validate_batching(int(gb), micro, dp, cfg.parallel)
    return int(gb)


def _stages_with_static_memory(cfg: RecipeConfig, lay: dict[str, Any],
                               optim: str) -> list[dict[str, Any]]:
    """Pipeline stages with their parameters and static memory, replicated and distributed
    optimizer (the breakdown is the recipe's choice's)."""
    m, p = cfg.model, cfg.parallel
    stages = pipeline_stages(p, m)
    for st in stages:
        params = _stage_params(m, p, st)
        st["params"] = int(sum(params.values()))
        st["expert_params"] = int(params["expert_muon"])
        mem = {k: static_memory(params, lay, cfg.precision.dtype, optim, k == "distributed")
               for k in ("replicated", "distributed")}
        st["static_gib"] = {k: v["total_bytes"] / GIB for k, v in mem.items()}
        st["static_breakdown_gib"] = {
            k: v / GIB for k, v in mem["distributed" if p.distributed_optimizer else
                                       "replicated"].items()}
    return stages


def make_plan(cfg: RecipeConfig, world_size: int, *, gpus_per_node: int | None = None,
              gpu_type: str = "h100", seq_len_tokens: int | None = None,
              micro_batch_samples: int | None = None, global_batch_samples: int | None = None,
              mfu: float = DEFAULT_MFU, optimizer: str | None = None) -> dict[str, Any]:
    """The dry-run plan of `cfg` on `world_size` GPUs: a JSON-ready dict (plan.json)."""
    m, p = cfg.model, cfg.parallel
    seq = int(seq_len_tokens or cfg.train.seq_length_tokens
              or min(DEFAULT_SEQ_LEN_TOKENS, m.max_position_embeddings))
    micro = int(micro_batch_samples or cfg.train.micro_batch_samples or 1)
    gpn = gpus_per_node or world_size
    if world_size % gpn:
        raise ConfigError("gpus_per_node", gpn, f"does not divide world_size={world_size}")
    if not 0 < mfu <= 1:
        raise ConfigError("mfu", mfu, "must be in (0, 1]")
    check_layout(p, m, world_size, seq)
    spec = gpu_spec(gpu_type)
    validate_fp8_gpu(cfg.precision, spec.compute_capability, None, f"gpu_type={gpu_type}")
    lay = layout(p, m, world_size)
    gb = _batch(cfg, lay["dp"], seq, micro, global_batch_samples)
    optim = optimizer_name(cfg, optimizer)
    stages = _stages_with_static_memory(cfg, lay, optim)
    acts = activation_memory(cfg, stages, seq, micro, gb // (lay["dp"] * micro))
    chosen = "distributed" if p.distributed_optimizer else "replicated"
    for st in stages:
        st["total_gib"] = st["static_gib"][chosen] + st["activation_gib"]
    worst = max(stages, key=lambda st: st["total_gib"])
    flops_tok = training_flops_per_token(m, seq)
    tokens_step = gb * seq
    peak = peak_flops(gpu_type)
    step_s = flops_tok * tokens_step / (world_size * peak * mfu)
    total_gib = worst["total_gib"]
    return {
        "model": m.name,
        "world": {"world_size": world_size, "nodes": world_size // gpn, "gpus_per_node": gpn,
                  "gpu_type": gpu_type.lower(), "gpu_name": spec.name,
                  "gpu_memory_gib": spec.memory_gib},
        "parallel": lay,
        "pipeline": {"layers_per_stage": m.num_layers // p.pp,
                     "layers_per_virtual_stage": m.num_layers // (p.pp * (p.virtual_pp or 1)),
                     "stages": stages},
        "batch": {"seq_len_tokens": seq, "micro_batch_samples": micro,
                  "global_batch_samples": gb, "tokens_per_step": tokens_step,
                  "num_microbatches": gb // (lay["dp"] * micro)},
        "memory": {
            "precision": cfg.precision.dtype, "fp8": cfg.precision.fp8, "optimizer": optim,
            "worst_stage": worst["stage"],
            "static_per_gpu_gib": worst["static_gib"],
            "static_breakdown_gib": worst["static_breakdown_gib"],
            "activations": acts,
            "total_per_gpu_gib": total_gib,
            "fits": total_gib < spec.memory_gib * 0.9,
        },
        "compute": {"training_flops_per_token": flops_tok, "peak_flops_per_gpu": peak,
                    "peak_basis": "bf16 dense", "assumed_mfu": mfu,
                    "step_time_s": step_s, "tokens_per_s": tokens_step / step_s,
                    "tokens_per_s_per_gpu": tokens_step / step_s / world_size},
        "warnings": _warnings(cfg, lay, gpn, total_gib, spec.memory_gib, seq),
    }


def _warnings(cfg: RecipeConfig, lay: dict[str, Any], gpn: int, total_gib: float,
              memory_gib: float, seq_len_tokens: int) -> list[str]:
    out = []
    if lay["tp"] > gpn:
        out.append(f"parallel.tp={lay['tp']} spans nodes (gpus_per_node={gpn}): TP traffic "
                   "would cross the network")
    if lay["tp"] * lay["cp"] > gpn and lay["cp"] > 1:
        out.append("tp*cp spans nodes: context-parallel ring traffic crosses the network")
    if total_gib >= memory_gib * 0.9:
        out.append(f"estimated {total_gib:.1f} GiB per GPU exceeds 90% of {memory_gib} GiB")
    if cfg.precision.fp8 and not transformer_engine_installed():
        out.append(f"precision.fp8={cfg.precision.fp8} needs Transformer Engine on the compute "
                   "nodes (not installed here; the trainer checks again at start)")
    if cfg.precision.transformer_impl == "auto" and not attention_is_flash(cfg):
        out.append("precision.transformer_impl=auto without Transformer Engine installed runs "
                   "the local blockwise attention (plain torch, memory counted above, slower "
                   "than flash); install it or set precision.transformer_impl="
                   "transformer_engine to plan its flash attention")
    out += _halo_warnings(cfg, seq_len_tokens)
    return out


def _halo_warnings(cfg: RecipeConfig, seq_len_tokens: int) -> list[str]:
    """Sliding-window layers that all-gather K/V under CP although a halo would do."""
    halo, cp = halo_tokens(cfg.model), cfg.parallel.cp
    if halo is None or cp == 1:
        return []
    if attention_is_flash(cfg):
        return [f"parallel.cp={cp} on Transformer Engine (cp_comm_type="
                f"{cfg.parallel.cp_comm_type}): sliding-window layers exchange the whole "
                "sequence's K/V as global layers do (the halo exchange is the local "
                "attention's); the step estimate counts an all-gather on every layer"]
    if "halo" not in cp_exchange(cfg, seq_len_tokens):
        return [f"sliding window needs {halo} keys before each CP chunk but a chunk holds "
                f"{seq_len_tokens // cp // 2} tokens (seq {seq_len_tokens}, cp {cp}): "
                "sliding-window layers all-gather K/V instead of the halo exchange"]
    return []


def load_for_plan(recipe: str, overrides: list[str]) -> RecipeConfig:
    """`load_recipe` for a login node: the whole validate() pass, except that what depends on
    this machine (Transformer Engine installed) is left to the trainer (the plan warns)."""
    from exaone_train.config.load import load_recipe

    return load_recipe(recipe, overrides, runnable_here=False, reads_train_data=False)


def curriculum_plan(cfg: RecipeConfig, world_size: int, **kwargs: Any) -> dict[str, Any] | None:
    """The recipe's curriculum (None without one): `CurriculumPlan.to_dict()` with each stage's
    memory per GPU, step time and duration from `make_plan` of the stage's recipe; a stage whose
    layout does not fit `world_size` carries its ConfigError instead (the trainer refuses it)."""
    if not cfg.curriculum.stages:
        return None
    from exaone_train.curriculum.stages import plan_curriculum

    plan = plan_curriculum(cfg)
    out = plan.to_dict()
    for st, row in zip(plan.stages, out["stages"], strict=True):
        try:
            p = make_plan(st.recipe, world_size, **kwargs)
        except ConfigError as e:
            row["error"] = str(e)
            continue
        step_s = p["compute"]["step_time_s"]
        row.update(dp=p["parallel"]["dp"], total_per_gpu_gib=p["memory"]["total_per_gpu_gib"],
                   fits=p["memory"]["fits"], step_time_s=step_s,
                   days=st.steps * step_s / 86400)
    return out


def smallest_world(cfg: RecipeConfig, gpus_per_node: int, part_node: bool = True,
                   max_world: int = 1 << 16) -> int:
    """The smallest world size the recipe's layout and batch run on (`plan` without --nodes):
    a multiple of tp*pp*cp and of `gpus_per_node` (or, with `part_node`, fewer GPUs of one
    node) that `check_layout` and the batch rules accept."""
    p, t = cfg.parallel, cfg.train
    step = ParallelDims.of(p).model_parallel
    for world in range(step, max_world + 1, step):
        if world % gpus_per_node and not (part_node and world < gpus_per_node):
            continue
        try:
            check_layout(p, cfg.model, world, t.seq_length_tokens)
            validate_batching(t.global_batch_samples, t.micro_batch_samples, world // step, p)
        except ConfigError:
            continue
        return world
    raise ConfigError("parallel", ParallelDims.of(p).describe(),
                      f"no world size up to {max_world} runs this layout with "
                      f"train.global_batch_samples={t.global_batch_samples} (fewer "
                      "--gpus-per-node, or give --nodes to see why)")
