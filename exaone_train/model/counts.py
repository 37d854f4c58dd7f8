"""Parameter and FLOP counts from a ModelConfig alone (nothing is built, so the 236B model can
be counted on a laptop). tests/unit/test_counts.py checks the formulas against the real
megatron-core module on tiny configs.

Conventions: counts use the tokenizer vocab (`vocab_size`, not the TP-padded one); the expert
bias is a buffer, not a parameter; "active" counts what one token touches: embeddings row
excluded from nothing (embedding + LM head are counted, as the public model cards do), top-k
routed experts + shared expert in MoE layers.
"""

from __future__ import annotations

from exaone_train.config.schema import ModelConfig
from exaone_train.model.layout import SLIDING, layer_types, moe_layers


def attention_params(m: ModelConfig) -> int:
    q = m.num_attention_heads * m.head_dim
    kv = m.num_query_groups * m.head_dim
    qk_norm = 2 * m.head_dim if m.qk_norm else 0
    return m.hidden_size * (q + 2 * kv) + q * m.hidden_size + qk_norm


def dense_ffn_params(m: ModelConfig) -> int:
    return 3 * m.hidden_size * m.ffn_hidden_size  # SwiGLU: gate, up, down


def expert_params(m: ModelConfig) -> int:
    return 3 * m.hidden_size * (m.moe_ffn_hidden_size or 0)


def shared_expert_params(m: ModelConfig) -> int:
    return 3 * m.hidden_size * (m.moe_shared_expert_ffn_hidden_size or 0)


def layer_params(m: ModelConfig, is_moe: bool, active: bool = False) -> int:
    norms = 2 * m.hidden_size  # pre-norms, or EXAONE 4.0's two post-norms
    if not is_moe:
        return attention_params(m) + dense_ffn_params(m) + norms
    n_experts = m.moe_top_k if active else (m.num_experts or 0)
    router = m.hidden_size * (m.num_experts or 0)
    return (attention_params(m) + norms + router + n_experts * expert_params(m)
            + shared_expert_params(m))


def mtp_params(m: ModelConfig) -> int:
    """enorm + hnorm + eh_proj (2H->H) + one dense decoder layer + final norm, per MTP block."""
    h = m.hidden_size
    return m.mtp_num_layers * (2 * h + 2 * h * h + layer_params(m, is_moe=False) + h)


def embedding_params(m: ModelConfig) -> int:
    return m.vocab_size * m.hidden_size * (1 if m.tie_embeddings else 2)


def total_params(m: ModelConfig, include_mtp: bool = False) -> int:
    body = sum(layer_params(m, moe) for moe in moe_layers(m)) + m.hidden_size  # + final norm
    return body + embedding_params(m) + (mtp_params(m) if include_mtp else 0)


def active_params(m: ModelConfig) -> int:
    body = sum(layer_params(m, moe, active=True) for moe in moe_layers(m)) + m.hidden_size
    return body + embedding_params(m)


def attention_context_tokens(m: ModelConfig, seq_len_tokens: int) -> float:
    """Keys each query sees, averaged over positions and summed over decoder + MTP layers."""
    s = seq_len_tokens
    full = (s + 1) / 2
    total = 0.0
    for t in layer_types(m) + ["full_attention"] * m.mtp_num_layers:
        if t == SLIDING and m.sliding_window_tokens is not None:
            w = min(m.sliding_window_tokens, s)
            total += (w * (w + 1) / 2 + (s - w) * w) / s  # ramp up to W, then W each
        else:
            total += full
    return total


def training_flops_per_token(m: ModelConfig, seq_len_tokens: int) -> float:
    """6 x (active matmul parameters) + the attention score/value term, forward + backward.

    Matmul parameters exclude norms and the input embedding (a lookup, not a matmul); with
    tied embeddings the LM head matmul still counts once.
    """
    h, v = m.hidden_size, m.vocab_size
    matmul = active_params(m) - embedding_params(m) + v * h  # LM head
    matmul -= sum(2 * h + (2 * m.head_dim if m.qk_norm else 0) for _ in range(m.num_layers)) + h
    if m.mtp_num_layers:
        matmul += mtp_params(m) - m.mtp_num_layers * (5 * h + (2 * m.head_dim if m.qk_norm else 0))
        matmul += m.mtp_num_layers * v * h  # MTP reuses the LM head: one more matmul
    attn = 4 * m.num_attention_heads * m.head_dim * attention_context_tokens(m, seq_len_tokens)
    return 6 * matmul + 3 * attn


def model_info(m: ModelConfig, seq_len_tokens: int = 8192) -> dict:
    return {
        "name": m.name,
        "family": m.family,
        "total_params": total_params(m),
        "active_params_per_token": active_params(m),
        "mtp_params": mtp_params(m),
        "total_params_with_mtp": total_params(m, include_mtp=True),
        "non_embedding_params": total_params(m) - embedding_params(m),
        "seq_len_tokens": seq_len_tokens,
        "training_flops_per_token": int(training_flops_per_token(m, seq_len_tokens)),
    }
