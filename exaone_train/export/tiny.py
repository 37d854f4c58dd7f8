"""Tiny random Hugging Face EXAONE models, made locally (no model hub): references for parity
tests and the convert CLI's examples.

Every weight is random, including what HF initialises to constants (norm weights = 1, router
expert bias = 0), so a mapping that swaps or drops a tensor changes the logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

_COMMON: dict[str, Any] = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
               intermediate_size=96, max_position_embeddings=512, rms_norm_eps=1e-5,
               rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def kexaone_config(**overrides: Any) -> Any:
    """ExaoneMoeConfig: 5 layers (LLLG + L: not a multiple of the pattern), window 4, vocab 300
    (padded to 384), dense layer 0 then MoE (8 experts, top-2, 1 shared expert)."""
    from transformers import ExaoneMoeConfig

    kw: dict[str, Any] = dict(_COMMON, vocab_size=300, num_hidden_layers=5, sliding_window=4,
              sliding_window_pattern=4, moe_intermediate_size=16, num_experts=8,
              num_experts_per_tok=2, num_shared_experts=1, first_k_dense_replace=1,
              routed_scaling_factor=2.5, norm_topk_prob=True, tie_word_embeddings=False)
    kw.update(overrides)
    return ExaoneMoeConfig(**kw)


def kexaone_no_shared_expert_config(**overrides: Any) -> Any:
    """The ExaoneMoeConfig of issue 18: no shared expert (transformers then saves zero-size
    `shared_experts` weights), one dense leading layer, 3 layers, all sliding (window 12)."""
    from transformers import ExaoneMoeConfig

    kw: dict[str, Any] = dict(
        vocab_size=300, hidden_size=64, intermediate_size=128, moe_intermediate_size=24,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_experts=8, num_experts_per_tok=2, num_shared_experts=0, first_k_dense_replace=1,
        sliding_window=12, max_position_embeddings=64)
    kw.update(overrides)
    return ExaoneMoeConfig(**kw)


def exaone4_config(layout: str = "32b", **overrides: Any) -> Any:
    """Exaone4Config. "32b": LLLG hybrid, window 4, no RoPE on global layers, untied.
    "1.2b": all global layers, RoPE everywhere (sliding_window=None), tied embeddings."""
    from transformers import Exaone4Config

    kw: dict[str, Any]
    if layout == "32b":
        kw = dict(_COMMON, vocab_size=256, num_hidden_layers=4, sliding_window=4,
                  sliding_window_pattern=4, tie_word_embeddings=False)
    elif layout == "1.2b":
        kw = dict(_COMMON, vocab_size=200, num_hidden_layers=3, sliding_window=None,
                  layer_types=["full_attention"] * 3, tie_word_embeddings=True)
    else:
        raise ValueError(f"layout must be '32b' or '1.2b', got {layout!r}")
    kw.update(overrides)
    return Exaone4Config(**kw)


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere: N(0, 0.05) matrices, norms 1 + N(0, 0.1), routers N(0, 0.5)
    (decisive routing), expert bias N(0, 0.1)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if "inv_freq" in name:
            continue
        if name.endswith("e_score_correction_bias"):
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        elif "norm" in name:
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        elif name.endswith("mlp.gate.weight"):
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def mtp_tensors(config: Any, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random `mtp.*` tensors in the public K-EXAONE layout (one dense MTP layer)."""
    gen = torch.Generator().manual_seed(seed)
    h, d = config.hidden_size, config.head_dim
    q, kv, ffn = config.num_attention_heads * d, config.num_key_value_heads * d, config.intermediate_size

    def mat(*shape: int) -> torch.Tensor:
        return 0.05 * torch.randn(shape, generator=gen)

    def norm(n: int) -> torch.Tensor:
        return 1 + 0.1 * torch.randn(n, generator=gen)

    layer = "mtp.layers.0"
    return {
        "mtp.fc.weight": mat(h, 2 * h), "mtp.norm.weight": norm(h),
        "mtp.pre_fc_norm_embedding.weight": norm(h), "mtp.pre_fc_norm_hidden.weight": norm(h),
        f"{layer}.input_layernorm.weight": norm(h),
        f"{layer}.post_attention_layernorm.weight": norm(h),
        f"{layer}.self_attn.q_proj.weight": mat(q, h), f"{layer}.self_attn.k_proj.weight": mat(kv, h),
        f"{layer}.self_attn.v_proj.weight": mat(kv, h), f"{layer}.self_attn.o_proj.weight": mat(h, q),
        f"{layer}.self_attn.q_norm.weight": norm(d), f"{layer}.self_attn.k_norm.weight": norm(d),
        f"{layer}.mlp.gate_proj.weight": mat(ffn, h), f"{layer}.mlp.up_proj.weight": mat(ffn, h),
        f"{layer}.mlp.down_proj.weight": mat(h, ffn),
    }


def build_hf_model(config: Any, seed: int = 0) -> torch.nn.Module:
    """The transformers model for `config` (eager attention, fp32, eval mode), randomised."""
    from transformers import AutoModelForCausalLM

    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager",
                                             dtype=torch.float32)
    return randomize_(model, seed).eval()


def save_hf_model(model: Any, out_dir: str | Path, with_mtp: bool = False) -> Path:
    """`save_pretrained` (the public on-disk names), plus `mtp.*` tensors when asked (HF's
    ExaoneMoe has no MTP module; public K-EXAONE checkpoints carry them beside the model)."""
    from safetensors.torch import load_file, save_file

    out = Path(out_dir)
    if with_mtp:
        model.config.num_nextn_predict_layers = 1
    model.save_pretrained(str(out))
    if with_mtp:
        path = out / "model.safetensors"
        tensors = load_file(str(path))
        tensors.update(mtp_tensors(model.config))
        save_file(tensors, str(path), metadata={"format": "pt"})
    return out
