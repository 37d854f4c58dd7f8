"""Tensor mapping between HF state dicts (ExaoneMoe / Exaone4 names) and the full (unsharded,
TP=PP=EP=1) megatron-core GPTModel state dict of our builder.

megatron-core layouts handled here:
- `linear_qkv.weight`: per query group g, rows [q heads of g; k_g; v_g] (head_dim rows each);
  `SelfAttention.get_query_key_value_tensors` splits it that way.
- `linear_fc1.weight` = [gate; up] (gated_linear_unit: `chunk(2)` -> silu(gate) * up).
- MoE: `mlp.router.weight`, `mlp.router.expert_bias` (HF `e_score_correction_bias`),
  `mlp.experts.local_experts.E.linear_fc{1,2}.weight`, `mlp.shared_experts.linear_fc{1,2}`.
- EXAONE 4.0 post-norms: `self_attention.linear_proj.post_norm.weight` and
  `mlp.linear_fc2.post_norm.weight` (HF `post_attention_layernorm` / `post_feedforward_layernorm`).
- MTP (megatron `mtp.layers.0.*`) <-> the `mtp.*` names of public K-EXAONE checkpoints (vLLM
  `exaone_moe_mtp.py`): enorm = `mtp.pre_fc_norm_embedding`, hnorm = `mtp.pre_fc_norm_hidden`,
  eh_proj = `mtp.fc` (both concatenate [embedding, hidden]), the decoder layer =
  `mtp.layers.0.*`, final_layernorm = `mtp.norm`.
- Vocab: rows padded with zeros on import to the padded vocab, stripped on export.

Both directions are described lazily first (`hf_to_mcore_lazy`, `mcore_to_hf_lazy`): every
output tensor is a `Lazy` naming its input tensors and the function of them, so a streaming
conversion computes one tensor at a time (`exaone_train.export.stream`); `hf_to_mcore` /
`mcore_to_hf` evaluate them all on in-memory state dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

import torch

from exaone_train.config.schema import ModelConfig
from exaone_train.errors import CheckpointError
from exaone_train.model.layout import moe_layers

Tensor = torch.Tensor
Get = Callable[[str], Tensor]
# HF keys that carry no weights (old checkpoints store RoPE buffers).
_IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)


def _empty_shared_expert(h: int) -> tuple[tuple[str, tuple[int, int]], ...]:
    """Names and shapes of transformers' zero-width shared expert (num_shared_experts=0)."""
    return (("gate_proj.weight", (0, h)), ("up_proj.weight", (0, h)), ("down_proj.weight", (h, 0)))


def _same(t: Tensor) -> Tensor:
    return t


@dataclass(frozen=True)
class Lazy:
    """A tensor computed when asked: `fn` of the source tensors named `inputs` (`get(name)`
    fetches one)."""

    inputs: tuple[str, ...]
    fn: Callable[..., Tensor] = _same

    def __call__(self, get: Get) -> Tensor:
        return self.fn(*(get(k) for k in self.inputs))


def evaluate(lazies: Mapping[str, Lazy], tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Every lazy tensor computed from in-memory `tensors`."""
    return {k: lz(tensors.__getitem__) for k, lz in lazies.items()}


class _Source:
    """HF tensors, by name and shape, consumed by name: a missing or misshapen key is a
    CheckpointError naming it."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.shapes = {k: tuple(s) for k, s in shapes.items()}
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.shapes

    def take(self, key: str, shape: tuple[int, ...] | None = None) -> str:
        if key not in self.shapes:
            raise CheckpointError(f"HF checkpoint is missing tensor {key!r}")
        if shape is not None and self.shapes[key] != shape:
            raise CheckpointError(f"HF tensor {key!r} has shape {self.shapes[key]}, "
                                  f"expected {shape}")
        self.used.add(key)
        return key

    def lazy(self, key: str, shape: tuple[int, ...] | None = None) -> Lazy:
        return Lazy((self.take(key, shape),))

    def unused(self) -> list[str]:
        return sorted(k for k in self.shapes if k not in self.used
                      and not k.endswith(_IGNORED_HF_SUFFIXES))


# ---------------------------------------------------------------- QKV and gated MLP layouts


def pack_qkv(q: Tensor, k: Tensor, v: Tensor, m: ModelConfig) -> Tensor:
    """HF q/k/v projections -> megatron's group-interleaved `linear_qkv.weight`."""
    g, d = m.num_query_groups, m.head_dim
    per_group = m.num_attention_heads // g
    q = q.reshape(g, per_group * d, -1)
    k, v = k.reshape(g, d, -1), v.reshape(g, d, -1)
    return torch.cat([q, k, v], dim=1).reshape(-1, q.shape[-1])


def unpack_qkv(qkv: Tensor, m: ModelConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of `pack_qkv`."""
    g, d = m.num_query_groups, m.head_dim
    per_group = m.num_attention_heads // g
    grouped = qkv.reshape(g, (per_group + 2) * d, -1)
    q, k, v = torch.split(grouped, [per_group * d, d, d], dim=1)
    hidden = qkv.shape[-1]
    return q.reshape(-1, hidden), k.reshape(-1, hidden), v.reshape(-1, hidden)


def pad_vocab(w: Tensor, padded_rows: int) -> Tensor:
    if w.shape[0] > padded_rows:
        raise CheckpointError(f"vocab of {w.shape[0]} rows exceeds the padded size {padded_rows}")
    return torch.cat([w, w.new_zeros(padded_rows - w.shape[0], *w.shape[1:])]) if (
        w.shape[0] < padded_rows) else w


# ---------------------------------------------------------------- HF -> megatron


def _attention_in(src: _Source, hf: str, mc: str, m: ModelConfig) -> dict[str, Lazy]:
    h, d = m.hidden_size, m.head_dim
    qkv = (src.take(f"{hf}.self_attn.q_proj.weight", (m.num_attention_heads * d, h)),
           src.take(f"{hf}.self_attn.k_proj.weight", (m.num_query_groups * d, h)),
           src.take(f"{hf}.self_attn.v_proj.weight", (m.num_query_groups * d, h)))
    out = {
        f"{mc}.self_attention.linear_qkv.weight": Lazy(qkv, lambda q, k, v: pack_qkv(q, k, v, m)),
        f"{mc}.self_attention.linear_proj.weight":
            src.lazy(f"{hf}.self_attn.o_proj.weight", (h, m.num_attention_heads * d)),
    }
    if m.qk_norm:
        out[f"{mc}.self_attention.q_layernorm.weight"] = src.lazy(f"{hf}.self_attn.q_norm.weight")
        out[f"{mc}.self_attention.k_layernorm.weight"] = src.lazy(f"{hf}.self_attn.k_norm.weight")
    return out


def _cat(*ts: Tensor) -> Tensor:
    return torch.cat(ts)


def _gated_in(src: _Source, hf: str, mc: str, ffn: int, h: int) -> dict[str, Lazy]:
    gate_up = (src.take(f"{hf}.gate_proj.weight", (ffn, h)), src.take(f"{hf}.up_proj.weight", (ffn, h)))
    return {f"{mc}.linear_fc1.weight": Lazy(gate_up, _cat),
            f"{mc}.linear_fc2.weight": src.lazy(f"{hf}.down_proj.weight", (h, ffn))}


def _expert(e: int) -> Callable[[Tensor], Tensor]:
    return lambda fused: fused[e]


def _experts_in(src: _Source, hf: str, mc: str, m: ModelConfig) -> dict[str, Lazy]:
    """Per-expert HF tensors (the on-disk format) or transformers' fused in-memory ones."""
    h, ffn, n = m.hidden_size, m.moe_ffn_hidden_size or 0, m.num_experts or 0
    out: dict[str, Lazy] = {}
    fused = src.has(f"{hf}.experts.gate_up_proj")
    if fused:
        gate_up = src.take(f"{hf}.experts.gate_up_proj", (n, 2 * ffn, h))
        down = src.take(f"{hf}.experts.down_proj", (n, h, ffn))
    for e in range(n):
        dst = f"{mc}.experts.local_experts.{e}"
        if fused:
            out[f"{dst}.linear_fc1.weight"] = Lazy((gate_up,), _expert(e))
            out[f"{dst}.linear_fc2.weight"] = Lazy((down,), _expert(e))
        else:
            out.update(_gated_in(src, f"{hf}.experts.{e}", dst, ffn, h))
    return out


def _float(t: Tensor) -> Tensor:
    return t.float()


def _moe_in(src: _Source, hf: str, mc: str, m: ModelConfig) -> dict[str, Lazy]:
    n, h = m.num_experts or 0, m.hidden_size
    bias_key = f"{hf}.e_score_correction_bias"
    if not src.has(bias_key) and src.has(f"{hf}.gate.e_score_correction_bias"):
        bias_key = f"{hf}.gate.e_score_correction_bias"  # transformers' in-memory name
    out = {f"{mc}.router.weight": src.lazy(f"{hf}.gate.weight", (n, h)),
           f"{mc}.router.expert_bias": Lazy((src.take(bias_key, (n,)),), _float)}
    out.update(_experts_in(src, hf, mc, m))
    if m.moe_shared_expert_ffn_hidden_size:
        out.update(_gated_in(src, f"{hf}.shared_experts", f"{mc}.shared_experts",
                             m.moe_shared_expert_ffn_hidden_size, h))
    else:
        _take_empty_shared_expert(src, f"{hf}.shared_experts", h)
    return out


def _take_empty_shared_expert(src: _Source, hf: str, h: int) -> None:
    """transformers builds `num_shared_experts=0` as a zero-width MLP and saves its
    [0, H] / [H, 0] weights: they hold nothing, so accept them (only at those shapes)."""
    for name, shape in _empty_shared_expert(h):
        if src.has(f"{hf}.{name}"):
            src.take(f"{hf}.{name}", shape)


def _layer_in(src: _Source, hf: str, mc: str, m: ModelConfig, is_moe: bool) -> dict[str, Lazy]:
    out = _attention_in(src, hf, mc, m)
    if is_moe:
        out.update(_moe_in(src, f"{hf}.mlp", f"{mc}.mlp", m))
    else:
        out.update(_gated_in(src, f"{hf}.mlp", f"{mc}.mlp", m.ffn_hidden_size, m.hidden_size))
    out.update({mc_key: src.lazy(hf_key) for mc_key, hf_key in _layer_norm_names(hf, mc, m)})
    return out


def _layer_norm_names(hf: str, mc: str, m: ModelConfig) -> list[tuple[str, str]]:
    """(megatron, HF) names of a layer's two hidden-size norms."""
    if m.norm_placement == "pre":
        return [(f"{mc}.input_layernorm.weight", f"{hf}.input_layernorm.weight"),
                (f"{mc}.pre_mlp_layernorm.weight", f"{hf}.post_attention_layernorm.weight")]
    return [(f"{mc}.self_attention.linear_proj.post_norm.weight",
             f"{hf}.post_attention_layernorm.weight"),
            (f"{mc}.mlp.linear_fc2.post_norm.weight", f"{hf}.post_feedforward_layernorm.weight")]


_MTP_NAMES = (("enorm", "pre_fc_norm_embedding"), ("hnorm", "pre_fc_norm_hidden"),
              ("eh_proj", "fc"), ("final_layernorm", "norm"))


def _mtp_in(src: _Source, m: ModelConfig) -> dict[str, Lazy]:
    out: dict[str, Lazy] = {}
    for i in range(m.mtp_num_layers):
        mc = f"mtp.layers.{i}"
        for ours, theirs in _MTP_NAMES:
            out[f"{mc}.{ours}.weight"] = src.lazy(f"mtp.{theirs}.weight")
        out.update(_layer_in(src, f"mtp.layers.{i}", f"{mc}.transformer_layer", m, False))
    return out


def _padded(rows: int) -> Callable[[Tensor], Tensor]:
    return lambda w: pad_vocab(w, rows)


def hf_to_mcore_lazy(hf_shapes: Mapping[str, tuple[int, ...]], m: ModelConfig,
                     padded_vocab: int) -> dict[str, Lazy]:
    """Every tensor of the full megatron state dict (TP=PP=EP=1 names and shapes) as a `Lazy`
    of the HF tensors, from the HF tensors' names and shapes alone.

    Raises CheckpointError naming a missing, misshapen or unexpected HF tensor.
    """
    src = _Source(hf_shapes)
    v, h = m.vocab_size, m.hidden_size
    out = {"embedding.word_embeddings.weight":
           Lazy((src.take("model.embed_tokens.weight", (v, h)),), _padded(padded_vocab))}
    for i, is_moe in enumerate(moe_layers(m)):
        out.update(_layer_in(src, f"model.layers.{i}", f"decoder.layers.{i}", m, is_moe))
    out["decoder.final_layernorm.weight"] = src.lazy("model.norm.weight", (h,))
    if m.tie_embeddings:
        if src.has("lm_head.weight"):
            src.take("lm_head.weight", (v, h))  # a tied copy some writers store
    else:
        out["output_layer.weight"] = Lazy((src.take("lm_head.weight", (v, h)),),
                                          _padded(padded_vocab))
    out.update(_mtp_in(src, m))
    unused = src.unused()
    if unused:
        raise CheckpointError(f"HF checkpoint has {len(unused)} tensor(s) the model config does "
                              f"not use, e.g. {unused[:5]} (renamed tensor or config mismatch?)")
    return out


def hf_to_mcore(hf_tensors: Mapping[str, Tensor], m: ModelConfig,
                padded_vocab: int) -> dict[str, Tensor]:
    """Full megatron state dict (TP=PP=EP=1 names and shapes) from in-memory HF tensors."""
    shapes = {k: tuple(t.shape) for k, t in hf_tensors.items()}
    return evaluate(hf_to_mcore_lazy(shapes, m, padded_vocab), hf_tensors)


# ---------------------------------------------------------------- megatron -> HF


def _take(keys: Collection[str], key: str) -> Lazy:
    if key not in keys:
        raise CheckpointError(f"model state dict is missing {key!r}")
    return Lazy((key,))


def _part(i: int, split: Callable[[Tensor], tuple[Tensor, ...]]) -> Callable[[Tensor], Tensor]:
    return lambda t: split(t)[i]


def _attention_out(keys: Collection[str], mc: str, hf: str, m: ModelConfig) -> dict[str, Lazy]:
    qkv = _take(keys, f"{mc}.self_attention.linear_qkv.weight").inputs

    def unpack(t: Tensor) -> tuple[Tensor, ...]:
        return unpack_qkv(t, m)

    out = {f"{hf}.self_attn.{name}_proj.weight": Lazy(qkv, _part(i, unpack))
           for i, name in enumerate("qkv")}
    out[f"{hf}.self_attn.o_proj.weight"] = _take(keys, f"{mc}.self_attention.linear_proj.weight")
    if m.qk_norm:
        out[f"{hf}.self_attn.q_norm.weight"] = _take(keys, f"{mc}.self_attention.q_layernorm.weight")
        out[f"{hf}.self_attn.k_norm.weight"] = _take(keys, f"{mc}.self_attention.k_layernorm.weight")
    return out


def _halves(t: Tensor) -> tuple[Tensor, ...]:
    return t.chunk(2, dim=0)


def _gated_out(keys: Collection[str], mc: str, hf: str) -> dict[str, Lazy]:
    fc1 = _take(keys, f"{mc}.linear_fc1.weight").inputs
    return {f"{hf}.gate_proj.weight": Lazy(fc1, _part(0, _halves)),
            f"{hf}.up_proj.weight": Lazy(fc1, _part(1, _halves)),
            f"{hf}.down_proj.weight": _take(keys, f"{mc}.linear_fc2.weight")}


def _zeros(shape: tuple[int, int]) -> Callable[[Tensor], Tensor]:
    return lambda like: torch.zeros(shape, dtype=like.dtype)


def _moe_out(keys: Collection[str], mc: str, hf: str, m: ModelConfig) -> dict[str, Lazy]:
    router = _take(keys, f"{mc}.router.weight")
    out = {f"{hf}.gate.weight": router,
           f"{hf}.e_score_correction_bias":
               Lazy(_take(keys, f"{mc}.router.expert_bias").inputs, _float)}
    for e in range(m.num_experts or 0):
        out.update(_gated_out(keys, f"{mc}.experts.local_experts.{e}", f"{hf}.experts.{e}"))
    if m.moe_shared_expert_ffn_hidden_size:
        out.update(_gated_out(keys, f"{mc}.shared_experts", f"{hf}.shared_experts"))
    else:  # what transformers itself saves for num_shared_experts=0 (the router's dtype)
        out.update({f"{hf}.shared_experts.{name}": Lazy(router.inputs, _zeros(shape))
                    for name, shape in _empty_shared_expert(m.hidden_size)})
    return out


def _layer_out(keys: Collection[str], mc: str, hf: str, m: ModelConfig,
               is_moe: bool) -> dict[str, Lazy]:
    out = _attention_out(keys, mc, hf, m)
    out.update(_moe_out(keys, f"{mc}.mlp", f"{hf}.mlp", m) if is_moe
               else _gated_out(keys, f"{mc}.mlp", f"{hf}.mlp"))
    out.update({hf_key: _take(keys, mc_key) for mc_key, hf_key in _layer_norm_names(hf, mc, m)})
    return out


def _vocab_rows(v: int) -> Callable[[Tensor], Tensor]:
    return lambda w: w[:v]


def _exported(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    return lambda *ts: fn(*ts).detach().contiguous()


def mcore_to_hf_lazy(keys: Collection[str], m: ModelConfig) -> dict[str, Lazy]:
    """Every HF tensor (on-disk names: per-expert MoE weights, `mlp.e_score_correction_bias`,
    `mtp.*`) as a `Lazy` of one tensor of the full megatron state dict whose names are
    `keys`; padded vocab rows are stripped."""
    v = m.vocab_size
    out = {"model.embed_tokens.weight":
           Lazy(_take(keys, "embedding.word_embeddings.weight").inputs, _vocab_rows(v))}
    for i, is_moe in enumerate(moe_layers(m)):
        out.update(_layer_out(keys, f"decoder.layers.{i}", f"model.layers.{i}", m, is_moe))
    out["model.norm.weight"] = _take(keys, "decoder.final_layernorm.weight")
    if not m.tie_embeddings:
        out["lm_head.weight"] = Lazy(_take(keys, "output_layer.weight").inputs, _vocab_rows(v))
    for i in range(m.mtp_num_layers):
        mc = f"mtp.layers.{i}"
        for ours, theirs in _MTP_NAMES:
            out[f"mtp.{theirs}.weight"] = _take(keys, f"{mc}.{ours}.weight")
        out.update(_layer_out(keys, f"{mc}.transformer_layer", f"mtp.layers.{i}", m, False))
    return {k: Lazy(lz.inputs, _exported(lz.fn)) for k, lz in out.items()}


def mcore_to_hf(sd: Mapping[str, Tensor], m: ModelConfig) -> dict[str, Tensor]:
    """HF tensors from a full in-memory megatron state dict (see `mcore_to_hf_lazy`)."""
    return evaluate(mcore_to_hf_lazy(sd.keys(), m), sd)


def weight_keys(sd: Iterable[str]) -> list[str]:
    """State-dict keys that hold weights (megatron adds `_extra_state` entries)."""
    return [k for k in sd if not k.endswith("_extra_state")]
