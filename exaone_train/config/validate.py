"""One validation pass over a resolved recipe. Every rule raises ConfigError naming the field
path, the value and the rule. Nothing is silently changed."""

from __future__ import annotations

from data_pipeline.config import validate_stage
from exaone_train.config.schema import (
    CheckpointConfig,
    ModelConfig,
    ParallelConfig,
    PrecisionConfig,
    RecipeConfig,
)
from exaone_train.errors import ConfigError
from exaone_train.model import backend
from exaone_train.model.layout import SLIDING, layer_types
from exaone_train.optim.config import validate_optim
from exaone_train.parallel.dims import ParallelDims

_FP8_RECIPES = ("delayed", "tensorwise", "blockwise", "mxfp8")
_CP_COMM_TYPES = ("all_gather", "a2a", "p2p", "a2a+p2p")
DATA_SOURCES = ("pipeline", "synthetic")
VERIFY_ON_LOAD = ("sha256", "size")


def _require(cond: bool, field: str, value: object, rule: str) -> None:
    if not cond:
        raise ConfigError(field, value, rule)


def validate_model(m: ModelConfig) -> None:
    _require(m.family in ("kexaone", "exaone4"), "model.family", m.family,
             "must be 'kexaone' or 'exaone4'")
    for name in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                 "head_dim", "ffn_hidden_size", "vocab_size"):
        _require(getattr(m, name) > 0, f"model.{name}", getattr(m, name), "must be > 0")
    _require(m.num_attention_heads % m.num_query_groups == 0, "model.num_query_groups",
             m.num_query_groups, f"must divide model.num_attention_heads={m.num_attention_heads}")
    _require(m.norm_placement in ("pre", "qk_reorder"), "model.norm_placement",
             m.norm_placement, "must be 'pre' or 'qk_reorder'")
    _require(len(m.attention_pattern) > 0 and set(m.attention_pattern) <= {"L", "G"},
             "model.attention_pattern", m.attention_pattern, "must be a string of L and G")
    _require(len(m.attention_pattern) <= m.num_layers, "model.attention_pattern",
             m.attention_pattern, f"is longer than model.num_layers={m.num_layers}")
    if m.layer_types is not None:
        _require(len(m.layer_types) == m.num_layers, "model.layer_types", len(m.layer_types),
                 f"needs one entry per layer (model.num_layers={m.num_layers})")
        bad = set(m.layer_types) - {"sliding_attention", "full_attention"}
        _require(not bad, "model.layer_types", sorted(bad),
                 "entries must be 'sliding_attention' or 'full_attention'")
    wants_window = "L" in m.attention_pattern or (
        m.layer_types is not None and "sliding_attention" in m.layer_types)
    if m.sliding_window_tokens is not None:
        _require(m.sliding_window_tokens > 0, "model.sliding_window_tokens",
                 m.sliding_window_tokens, "must be > 0 (or null for no sliding window)")
    elif wants_window:
        raise ConfigError("model.sliding_window_tokens", None,
                          "sliding-window layers (L in attention_pattern) need a window size")
    _require(m.vocab_pad_multiple > 0, "model.vocab_pad_multiple", m.vocab_pad_multiple, "> 0")
    if m.num_experts is not None:
        _require(m.num_experts > 0, "model.num_experts", m.num_experts, "must be > 0 or null")
        _require(0 < m.moe_top_k <= m.num_experts, "model.moe_top_k", m.moe_top_k,
                 f"must be in [1, model.num_experts={m.num_experts}]")
        _require(m.moe_ffn_hidden_size is not None and m.moe_ffn_hidden_size > 0,
                 "model.moe_ffn_hidden_size", m.moe_ffn_hidden_size, "MoE models need it > 0")
        _require(m.moe_router_score in ("sigmoid", "softmax"), "model.moe_router_score",
                 m.moe_router_score, "must be 'sigmoid' or 'softmax'")
        # megatron-core always renormalises the selected top-k sigmoid scores when top-k > 1
        _require(m.moe_norm_topk_prob or m.moe_top_k == 1 or m.moe_router_score != "sigmoid",
                 "model.moe_norm_topk_prob", m.moe_norm_topk_prob,
                 "megatron-core normalises sigmoid top-k weights when moe_top_k > 1")
        if m.moe_layer_types is not None:
            _require(len(m.moe_layer_types) == m.num_layers, "model.moe_layer_types",
                     len(m.moe_layer_types), f"needs model.num_layers={m.num_layers} entries")
    _require(m.mtp_num_layers in (0, 1), "model.mtp_num_layers", m.mtp_num_layers,
             "K-EXAONE has 0 or 1 MTP block")


def validate_parallel(p: ParallelConfig, m: ModelConfig) -> None:
    for name in ("tp", "pp", "ep", "cp"):
        _require(getattr(p, name) >= 1, f"parallel.{name}", getattr(p, name), "must be >= 1")
    etp = p.expert_tp if p.expert_tp is not None else p.tp
    _require(etp >= 1, "parallel.expert_tp", p.expert_tp, "must be >= 1 (or null = parallel.tp)")
    if m.num_experts is not None and p.ep == 1:
        # megatron-core marks expert weights as dense params when EP=1 and reduces their grads
        # over the dense DP group only; with expert_tp < tp the TP ranks (which route different
        # tokens under sequence parallelism) would never sum their expert grads.
        _require(etp == p.tp, "parallel.expert_tp", p.expert_tp,
                 f"must equal parallel.tp={p.tp} when parallel.ep=1")
    _require(m.num_attention_heads % p.tp == 0, "parallel.tp", p.tp,
             f"does not divide model.num_attention_heads={m.num_attention_heads}")
    _require(m.num_query_groups % p.tp == 0, "parallel.tp", p.tp,
             f"does not divide model.num_query_groups={m.num_query_groups}")
    _require(m.ffn_hidden_size % p.tp == 0, "parallel.tp", p.tp,
             f"does not divide model.ffn_hidden_size={m.ffn_hidden_size}")
    _require(not p.sequence_parallel or p.tp > 1, "parallel.sequence_parallel",
             p.sequence_parallel, "needs parallel.tp > 1")
    if m.num_experts is not None and p.tp > 1:
        _require(p.sequence_parallel, "parallel.sequence_parallel", p.sequence_parallel,
                 "MoE models with parallel.tp > 1 need sequence parallelism (megatron-core "
                 "MoE layers require it)")
    if p.ep > 1:
        _require(m.num_experts is not None, "parallel.ep", p.ep, "needs an MoE model")
    if m.num_experts is not None:
        _require(m.num_experts % p.ep == 0, "parallel.ep", p.ep,
                 f"does not divide model.num_experts={m.num_experts}")
    stages = p.pp * (p.virtual_pp or 1)
    _require(m.num_layers % stages == 0, "parallel.pp", f"{p.pp} x virtual_pp={p.virtual_pp}",
             f"pp*virtual_pp={stages} does not divide model.num_layers={m.num_layers}")
    if p.virtual_pp is not None:
        _require(p.pp > 1, "parallel.virtual_pp", p.virtual_pp, "needs parallel.pp > 1")
        # megatron-core picks the interleaved schedule for any virtual size, and that schedule
        # wants one model chunk per virtual stage; one chunk is plain 1F1B.
        _require(p.virtual_pp >= 2, "parallel.virtual_pp", p.virtual_pp,
                 "must be >= 2 (or null: one stage per pipeline rank)")

    _require(p.cp_comm_type in _CP_COMM_TYPES, "parallel.cp_comm_type", p.cp_comm_type,
             f"must be one of {_CP_COMM_TYPES}")
    _require(p.moe_token_dispatcher in ("alltoall", "allgather"), "parallel.moe_token_dispatcher",
             p.moe_token_dispatcher, "must be 'alltoall' or 'allgather'")
    _require(p.recompute in ("none", "selective", "full"), "parallel.recompute", p.recompute,
             "must be none | selective | full")


def validate_batching(global_batch_samples: int, micro_batch_samples: int, dp: int,
                      p: ParallelConfig) -> int:
    """The number of micro-batches per step on each data-parallel rank, checked against what
    megatron-core's schedules assert mid-step: the interleaved schedule (parallel.virtual_pp)
    runs micro-batches in groups of parallel.pp and refuses a count that is not a multiple."""
    per_step = micro_batch_samples * dp
    _require(global_batch_samples > 0 and global_batch_samples % per_step == 0,
             "train.global_batch_samples", global_batch_samples,
             f"must be a multiple of train.micro_batch_samples={micro_batch_samples} x "
             f"data-parallel size {dp}")
    num_microbatches = global_batch_samples // per_step
    if p.virtual_pp is not None:
        _require(num_microbatches % p.pp == 0, "train.global_batch_samples",
                 global_batch_samples,
                 f"gives {num_microbatches} micro-batches per data-parallel rank (/ "
                 f"train.micro_batch_samples={micro_batch_samples} / data-parallel size {dp}); "
                 f"the interleaved pipeline schedule (parallel.virtual_pp={p.virtual_pp}) needs "
                 f"a multiple of parallel.pp={p.pp}")
    return num_microbatches


def validate_train(cfg: RecipeConfig) -> None:
    """The `train:` section's own numbers (the world-size rules are `validate_batching`'s)."""
    t = cfg.train
    for name in ("seq_length_tokens", "micro_batch_samples", "global_batch_samples"):
        _require(getattr(t, name) > 0, f"train.{name}", getattr(t, name), "must be > 0")
    _require(t.global_batch_samples % t.micro_batch_samples == 0, "train.global_batch_samples",
             t.global_batch_samples,
             f"must be a multiple of train.micro_batch_samples={t.micro_batch_samples}")
    for name in ("train_steps", "train_tokens"):
        value = getattr(t, name)
        _require(value is None or value > 0, f"train.{name}", value, "must be > 0 or null")


def validate_data_stage(cfg: RecipeConfig, reads_train_data: bool = True) -> None:
    """`train.data_source` and the data stage a pipeline run reads: a stage of `data.stages`,
    valid, with the trainer's sequence length. `reads_train_data=False` (a plan, NIAH): the
    stage is checked if the recipe has data stages, and its length may differ."""
    t = cfg.train
    _require(t.data_source in DATA_SOURCES, "train.data_source", t.data_source,
             f"must be one of {DATA_SOURCES}")
    if t.data_source != "pipeline" or (not cfg.data.stages and not reads_train_data):
        return
    _require(t.data_stage in cfg.data.stages, "train.data_stage", t.data_stage,
             f"is not one of data.stages {sorted(cfg.data.stages)}")
    stage = cfg.data.stages[t.data_stage]
    validate_stage(stage, f"data.stages.{t.data_stage}")
    _require(not reads_train_data or stage.seq_length == t.seq_length_tokens,
             "train.seq_length_tokens", t.seq_length_tokens,
             f"must equal data.stages.{t.data_stage}.seq_length={stage.seq_length}")


def validate_checkpoint_config(c: CheckpointConfig) -> None:
    _require(c.interval_steps >= 0, "checkpoint.interval_steps", c.interval_steps, "must be >= 0")
    _require(c.interval_minutes >= 0, "checkpoint.interval_minutes", c.interval_minutes,
             "must be >= 0")
    _require(c.keep_last >= 1, "checkpoint.keep_last", c.keep_last,
             "must be >= 1 (the newest checkpoint is never removed)")
    _require(c.verify_on_load in VERIFY_ON_LOAD, "checkpoint.verify_on_load", c.verify_on_load,
             "must be 'sha256' or 'size'")
    _require(not c.async_save, "checkpoint.async_save", c.async_save,
             "is not implemented yet (megatron-core's async save overlaps a CUDA->CPU copy with "
             "training; see docs/CHECKPOINTS.md): saves are synchronous, set it to false")


def validate_precision(prec: PrecisionConfig, require_te_installed: bool = True) -> None:
    """`require_te_installed=False` (a plan on a login node): a recipe that needs Transformer
    Engine is accepted here; the trainer's own validate() refuses it where TE is missing."""
    _require(prec.dtype in ("fp32", "bf16"), "precision.dtype", prec.dtype, "must be fp32 | bf16")
    _require(prec.transformer_impl in ("auto", "local", "transformer_engine"),
             "precision.transformer_impl", prec.transformer_impl,
             "must be auto | local | transformer_engine")
    te = backend.transformer_engine_installed() or not require_te_installed
    if prec.fp8 is not None:
        _require(prec.fp8 in _FP8_RECIPES, "precision.fp8", prec.fp8,
                 f"must be null or one of {_FP8_RECIPES}")
        _require(te, "precision.fp8", prec.fp8,
                 "FP8 needs Transformer Engine, which is not installed "
                 "(pip install 'exaone-train[gpu]' on a GPU node); we never fall back to BF16")
        _require(prec.transformer_impl != "local", "precision.fp8", prec.fp8,
                 "FP8 needs precision.transformer_impl=transformer_engine or auto")
    if prec.transformer_impl == "transformer_engine":
        _require(te, "precision.transformer_impl", prec.transformer_impl,
                 "Transformer Engine is not installed")


def validate_fp8_gpu(prec: PrecisionConfig, capability: tuple[int, int],
                     cuda_version: str | None, gpu: str) -> None:
    """The FP8 recipe on a GPU of `capability` (CUDA `cuda_version`, None = unknown), named
    `gpu` in the error: Transformer Engine itself fails only at the first forward."""
    from exaone_train.train.hardware import fp8_unsupported

    if prec.fp8 is None:
        return
    problem = fp8_unsupported(prec.fp8, capability, cuda_version)
    _require(problem is None, "precision.fp8", prec.fp8, f"{problem} ({gpu})")


def validate_fp8(cfg: RecipeConfig) -> None:
    """FP8 format, the BF16 first/last layers (megatron-core's rules, checked before it asserts
    mid-build) and, with `logging.gpu_type` given, the recipe against that GPU."""
    prec, layers = cfg.precision, cfg.model.num_layers // cfg.parallel.pp
    _require(prec.fp8_format in ("hybrid", "e4m3"), "precision.fp8_format", prec.fp8_format,
             "must be 'hybrid' (E4M3 forward, E5M2 gradients) or 'e4m3'")
    for name, n in zip(("fp8_bf16_first_layers", "fp8_bf16_last_layers"), prec.fp8_bf16_layers,
                       strict=True):
        _require(0 <= n <= layers, f"precision.{name}", n,
                 f"must be in [0, {layers}] (decoder layers per pipeline stage: "
                 f"model.num_layers={cfg.model.num_layers} / parallel.pp={cfg.parallel.pp})")
        _require(n == 0 or prec.fp8 != "delayed", f"precision.{name}", n,
                 "must be 0 with precision.fp8=delayed (megatron-core: delayed scaling cannot "
                 "leave and re-enter the FP8 region per layer; its amax reduction would be wrong)")
    gpu = cfg.logging.gpu_type
    if prec.fp8 is not None and gpu is not None:
        from exaone_train.train.hardware import gpu_spec

        validate_fp8_gpu(prec, gpu_spec(gpu).compute_capability, None, f"logging.gpu_type={gpu}")


def validate_context_parallel(cfg: RecipeConfig, local: bool) -> None:
    """cp > 1: what each attention path runs (the length rules: `ParallelDims.seq_rule`)."""
    p, m = cfg.parallel, cfg.model
    if local:
        _require(p.cp_comm_type == "all_gather", "parallel.cp_comm_type", p.cp_comm_type,
                 "the local attention path implements 'all_gather' only (Transformer Engine "
                 "is not installed or precision.transformer_impl=local)")
        return
    # TE's ring (p2p) context parallelism has no sliding window; a2a and all_gather do
    _require(SLIDING not in layer_types(m) or p.cp_comm_type in ("all_gather", "a2a"),
             "parallel.cp_comm_type", p.cp_comm_type,
             "Transformer Engine supports sliding-window layers under context parallelism "
             "only with 'all_gather' or 'a2a'")
    if p.cp_comm_type == "a2a":  # Ulysses scatters the (TP-local) KV heads over CP
        _require((m.num_query_groups // p.tp) % p.cp == 0, "parallel.cp", p.cp,
                 f"cp_comm_type=a2a needs parallel.cp to divide the KV heads per TP rank "
                 f"(model.num_query_groups={m.num_query_groups} / parallel.tp={p.tp})")


def validate_backend(cfg: RecipeConfig) -> None:
    """What the trainer can run here (the planner may still lay out other layouts)."""
    local = cfg.precision.transformer_impl == "local" or not backend.transformer_engine_installed()
    if cfg.parallel.cp > 1:
        validate_context_parallel(cfg, local)
    if not local and cfg.train.document_attention_mask and cfg.parallel.cp > 1:
        # document masks on TE are packed THD batches (train/packing.py); TE's a2a+p2p
        # (hierarchical) context parallelism has no THD
        _require(cfg.parallel.cp_comm_type != "a2a+p2p", "parallel.cp_comm_type",
                 cfg.parallel.cp_comm_type, "Transformer Engine has no packed (THD) sequences "
                 "with 'a2a+p2p', which train.document_attention_mask=true needs on this path")


def validate(cfg: RecipeConfig, runnable_here: bool = True, reads_train_data: bool = True) -> None:
    """Raise ConfigError on the first broken rule: every rule of the recipe, once, before
    anything is built or written. `runnable_here=False` (`plan`, `launch --dry-run`, `model
    info` on a login node) leaves out what depends on this machine (Transformer Engine
    installed, which attention path runs); the trainer validates again where it runs.
    `reads_train_data=False` (plan, NIAH): see `validate_data_stage`."""
    validate_model(cfg.model)
    validate_parallel(cfg.parallel, cfg.model)
    ParallelDims.of(cfg.parallel).check_seq(cfg.train.seq_length_tokens)
    validate_precision(cfg.precision, require_te_installed=runnable_here)
    validate_fp8(cfg)
    if runnable_here:
        validate_backend(cfg)
    validate_train(cfg)
    validate_data_stage(cfg, reads_train_data)
    validate_optim(cfg.optim)
    validate_checkpoint_config(cfg.checkpoint)
