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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from exaone_train.config.schema import ModelConfig
from exaone_train.errors import CheckpointError
from exaone_train.model.layout import moe_layers

Tensor = torch.Tensor
# HF keys that carry no weights (old checkpoints store RoPE buffers).
_IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)


def _empty_shared_expert(h: int) -> tuple[tuple[str, tuple[int, int]], ...]:
    """Names and shapes of transformers' zero-width shared expert (num_shared_experts=0)."""
    return (("gate_proj.weight", (0, h)), ("up_proj.weight", (0, h)), ("down_proj.weight", (h, 0)))


class _Source:
    """HF tensors consumed by name; a missing key is a CheckpointError naming it."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        self.tensors = dict(tensors)
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.tensors

    def take(self, key: str, shape: tuple[int, ...] | None = None) -> Tensor:
        if key not in self.tensors:
            raise CheckpointError(f"HF checkpoint is missing tensor {key!r}")
        t = self.tensors[key]
        if shape is not None and tuple(t.shape) != shape:
            raise CheckpointError(f"HF tensor {key!r} has shape {tuple(t.shape)}, "
                                  f"expected {shape}")
        self.used.add(key)
        return t

    def unused(self) -> list[str]:
        return sorted(k for k in self.tensors if k not in self.used
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


def _attention_in(src: _Source, hf: str, mc: str, m: ModelConfig) -> dict[str, Tensor]:
    h, d = m.hidden_size, m.head_dim
    q = src.take(f"{hf}.self_attn.q_proj.weight", (m.num_attention_heads * d, h))
    k = src.take(f"{hf}.self_attn.k_proj.weight", (m.num_query_groups * d, h))
    v = src.take(f"{hf}.self_attn.v_proj.weight", (m.num_query_groups * d, h))
    out = {
        f"{mc}.self_attention.linear_qkv.weight": pack_qkv(q, k, v, m),
        f"{mc}.self_attention.linear_proj.weight":
            src.take(f"{hf}.self_attn.o_proj.weight", (h, m.num_attention_heads * d)),
    }
    if m.qk_norm:
        out[f"{mc}.self_attention.q_layernorm.weight"] = src.take(f"{hf}.self_attn.q_norm.weight")
        out[f"{mc}.self_attention.k_layernorm.weight"] = src.take(f"{hf}.self_attn.k_norm.weight")
    return out


def _gated_in(src: _Source, hf: str, mc: str, ffn: int, h: int) -> dict[str, Tensor]:
    gate = src.take(f"{hf}.gate_proj.weight", (ffn, h))
    up = src.take(f"{hf}.up_proj.weight", (ffn, h))
    return {f"{mc}.linear_fc1.weight": torch.cat([gate, up]),
            f"{mc}.linear_fc2.weight": src.take(f"{hf}.down_proj.weight", (h, ffn))}


def _experts_in(src: _Source, hf: str, mc: str, m: ModelConfig) -> dict[str, Tensor]:
    """Per-expert HF tensors (the on-disk format) or transformers' fused in-memory ones."""
    h, ffn, n = m.hidden_size, m.moe_ffn_hidden_size or 0, m.num_experts or 0
    out: dict[str, Tensor] = {}
    fused = src.has(f"{hf}.experts.gate_up_proj")
    if fused:
        gate_up = src.take(f"{hf}.experts.gate_up_proj", (n, 2 * ffn, h))
        down = src.take(f"{hf}.experts.down_proj", (n, h, ffn))
    for e in range(n):
        dst = f"{mc}.experts.local_experts.{e}"
        if fused:
            out[f"{dst}.linear_fc1.weight"] = gate_up[e]
            out[f"{dst}.linear_fc2.weight"] = down[e]
        else:
            out.update(_gated_in(src, f"{hf}.experts.{e}", dst, ffn, h))
    return out


def _moe_in(src: _Source, hf: str, mc: str, m: ModelConfig) -> dict[str, Tensor]:
    n, h = m.num_experts or 0, m.hidden_size
    bias_key = f"{hf}.e_score_correction_bias"
    if not src.has(bias_key) and src.has(f"{hf}.gate.e_score_correction_bias"):
        bias_key = f"{hf}.gate.e_score_correction_bias"  # transformers' in-memory name
    out = {f"{mc}.router.weight": src.take(f"{hf}.gate.weight", (n, h)),
           f"{mc}.router.expert_bias": src.take(bias_key, (n,)).float()}
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


def _layer_in(src: _Source, hf: str, mc: str, m: ModelConfig, is_moe: bool) -> dict[str, Tensor]:
    out = _attention_in(src, hf, mc, m)
    if is_moe:
        out.update(_moe_in(src, f"{hf}.mlp", f"{mc}.mlp", m))
    else:
        out.update(_gated_in(src, f"{hf}.mlp", f"{mc}.mlp", m.ffn_hidden_size, m.hidden_size))
    out.update({mc_key: src.take(hf_key) for mc_key, hf_key in _layer_norm_names(hf, mc, m)})
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


def _mtp_in(src: _Source, m: ModelConfig) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for i in range(m.mtp_num_layers):
        mc = f"mtp.layers.{i}"
        for ours, theirs in _MTP_NAMES:
            out[f"{mc}.{ours}.weight"] = src.take(f"mtp.{theirs}.weight")
        out.update(_layer_in(src, f"mtp.layers.{i}", f"{mc}.transformer_layer", m, False))
    return out


def hf_to_mcore(hf_tensors: Mapping[str, Tensor], m: ModelConfig,
                padded_vocab: int) -> dict[str, Tensor]:
    """Full megatron state dict (TP=PP=EP=1 names and shapes) from HF tensors.

    Raises CheckpointError naming a missing, misshapen or unexpected HF tensor.
    """
    src = _Source(hf_tensors)
    v, h = m.vocab_size, m.hidden_size
    out = {"embedding.word_embeddings.weight":
           pad_vocab(src.take("model.embed_tokens.weight", (v, h)), padded_vocab)}
    for i, is_moe in enumerate(moe_layers(m)):
        out.update(_layer_in(src, f"model.layers.{i}", f"decoder.layers.{i}", m, is_moe))
    out["decoder.final_layernorm.weight"] = src.take("model.norm.weight", (h,))
    if m.tie_embeddings:
        if src.has("lm_head.weight"):
            src.take("lm_head.weight", (v, h))  # a tied copy some writers store
    else:
        out["output_layer.weight"] = pad_vocab(src.take("lm_head.weight", (v, h)), padded_vocab)
    out.update(_mtp_in(src, m))
    unused = src.unused()
    if unused:
        raise CheckpointError(f"HF checkpoint has {len(unused)} tensor(s) the model config does "
                              f"not use, e.g. {unused[:5]} (renamed tensor or config mismatch?)")
    return out


# ---------------------------------------------------------------- megatron -> HF


def _take(sd: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in sd:
        raise CheckpointError(f"model state dict is missing {key!r}")
    return sd[key]


def _attention_out(sd: Mapping[str, Tensor], mc: str, hf: str, m: ModelConfig) -> dict:
    q, k, v = unpack_qkv(_take(sd, f"{mc}.self_attention.linear_qkv.weight"), m)
    out = {f"{hf}.self_attn.q_proj.weight": q, f"{hf}.self_attn.k_proj.weight": k,
           f"{hf}.self_attn.v_proj.weight": v,
           f"{hf}.self_attn.o_proj.weight": _take(sd, f"{mc}.self_attention.linear_proj.weight")}
    if m.qk_norm:
        out[f"{hf}.self_attn.q_norm.weight"] = _take(sd, f"{mc}.self_attention.q_layernorm.weight")
        out[f"{hf}.self_attn.k_norm.weight"] = _take(sd, f"{mc}.self_attention.k_layernorm.weight")
    return out


def _gated_out(sd: Mapping[str, Tensor], mc: str, hf: str) -> dict[str, Tensor]:
    gate, up = _take(sd, f"{mc}.linear_fc1.weight").chunk(2, dim=0)
    return {f"{hf}.gate_proj.weight": gate, f"{hf}.up_proj.weight": up,
            f"{hf}.down_proj.weight": _take(sd, f"{mc}.linear_fc2.weight")}


def _moe_out(sd: Mapping[str, Tensor], mc: str, hf: str, m: ModelConfig) -> dict[str, Tensor]:
    out = {f"{hf}.gate.weight": _take(sd, f"{mc}.router.weight"),
           f"{hf}.e_score_correction_bias": _take(sd, f"{mc}.router.expert_bias").float()}
    for e in range(m.num_experts or 0):
        out.update(_gated_out(sd, f"{mc}.experts.local_experts.{e}", f"{hf}.experts.{e}"))
    if m.moe_shared_expert_ffn_hidden_size:
        out.update(_gated_out(sd, f"{mc}.shared_experts", f"{hf}.shared_experts"))
    else:  # what transformers itself saves for num_shared_experts=0
        dtype = out[f"{hf}.gate.weight"].dtype
        out.update({f"{hf}.shared_experts.{name}": torch.zeros(shape, dtype=dtype)
                    for name, shape in _empty_shared_expert(m.hidden_size)})
    return out


def _layer_out(sd: Mapping[str, Tensor], mc: str, hf: str, m: ModelConfig,
               is_moe: bool) -> dict[str, Tensor]:
    out = _attention_out(sd, mc, hf, m)
    out.update(_moe_out(sd, f"{mc}.mlp", f"{hf}.mlp", m) if is_moe
               else _gated_out(sd, f"{mc}.mlp", f"{hf}.mlp"))
    out.update({hf_key: _take(sd, mc_key) for mc_key, hf_key in _layer_norm_names(hf, mc, m)})
    return out


def mcore_to_hf(sd: Mapping[str, Tensor], m: ModelConfig) -> dict[str, Tensor]:
    """HF tensors (on-disk names: per-expert MoE weights, `mlp.e_score_correction_bias`,
    `mtp.*`) from a full megatron state dict; padded vocab rows are stripped."""
    v = m.vocab_size
    out = {"model.embed_tokens.weight": _take(sd, "embedding.word_embeddings.weight")[:v]}
    for i, is_moe in enumerate(moe_layers(m)):
        out.update(_layer_out(sd, f"decoder.layers.{i}", f"model.layers.{i}", m, is_moe))
    out["model.norm.weight"] = _take(sd, "decoder.final_layernorm.weight")
    if not m.tie_embeddings:
        out["lm_head.weight"] = _take(sd, "output_layer.weight")[:v]
    for i in range(m.mtp_num_layers):
        mc = f"mtp.layers.{i}"
        for ours, theirs in _MTP_NAMES:
            out[f"mtp.{theirs}.weight"] = _take(sd, f"{mc}.{ours}.weight")
        out.update(_layer_out(sd, f"{mc}.transformer_layer", f"mtp.layers.{i}", m, False))
    return {k: t.detach().contiguous() for k, t in out.items()}


def weight_keys(sd: Iterable[str]) -> list[str]:
    """State-dict keys that hold weights (megatron adds `_extra_state` entries)."""
    return [k for k in sd if not k.endswith("_extra_state")]
