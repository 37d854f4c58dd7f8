"""Per-layer layout derived from a ModelConfig: which layers use a sliding window, which skip
RoPE, which are MoE. Pure Python (no torch): validation, counts, export and the model builder
all read the same answers from here."""

from __future__ import annotations

from exaone_train.config.schema import ModelConfig

SLIDING, FULL = "sliding_attention", "full_attention"


def layer_types(m: ModelConfig) -> list[str]:
    """One of SLIDING/FULL per decoder layer (HF `layer_types` semantics)."""
    if m.layer_types is not None:
        return list(m.layer_types)
    if m.sliding_window_tokens is None:
        return [FULL] * m.num_layers
    pattern = m.attention_pattern
    return [SLIDING if pattern[i % len(pattern)] == "L" else FULL for i in range(m.num_layers)]


def mtp_layer_type(m: ModelConfig) -> str:
    # The MTP block's decoder layer attends globally (full attention, no RoPE) in K-EXAONE's
    # public layout; it is a dense layer.
    return FULL


def rope_skipped(m: ModelConfig) -> list[bool]:
    """True where a layer (decoder layers, then MTP layers) applies no RoPE."""
    types = layer_types(m) + [mtp_layer_type(m)] * m.mtp_num_layers
    if m.rope_on_global_layers:
        return [False] * len(types)
    return [t == FULL for t in types]


def moe_layers(m: ModelConfig) -> list[bool]:
    """True where a decoder layer's FFN is MoE."""
    if m.num_experts is None:
        return [False] * m.num_layers
    if m.moe_layer_types is not None:
        return [t == "sparse" for t in m.moe_layer_types]
    return [i >= m.moe_first_k_dense for i in range(m.num_layers)]


def padded_vocab_size(m: ModelConfig, tp: int = 1) -> int:
    """Vocab padded to a multiple of `vocab_pad_multiple * tp` (each TP shard stays aligned)."""
    multiple = m.vocab_pad_multiple * tp
    return ((m.vocab_size + multiple - 1) // multiple) * multiple
