"""Hugging Face config <-> our ModelConfig, for `ExaoneMoeConfig` (K-EXAONE) and `Exaone4Config`.

`hf_config_to_model_config` accepts every configuration the HF classes accept and raises
`ConfigError` naming the HF field for what our model cannot express (grouped routing, RoPE
scaling, biases, non-SiLU activations, ...). The reverse, `model_config_to_hf_config`, raises
`ConfigError` naming our field where HF cannot express a recipe.

Semantics carried over from the HF modeling code:
- HF applies RoPE on a layer iff `config.sliding_window is None or layer is sliding`; ours
  applies it on sliding layers, and on global ones iff `rope_on_global_layers`.
- `layer_types` / `mlp_layer_types` are explicit per-layer lists in HF; we keep a compact
  pattern (`attention_pattern`, `moe_first_k_dense`) when it reproduces them exactly and the
  explicit list (`layer_types`, `moe_layer_types`) otherwise.
"""

from __future__ import annotations

from typing import Any

from exaone_train.config.schema import ModelConfig
from exaone_train.errors import ConfigError
from exaone_train.model.layout import FULL, SLIDING, layer_types, moe_layers

MOE_MODEL_TYPE, DENSE_MODEL_TYPE = "exaone_moe", "exaone4"
FAMILY_OF_MODEL_TYPE = {MOE_MODEL_TYPE: "kexaone", DENSE_MODEL_TYPE: "exaone4"}
ARCHITECTURE = {"kexaone": "ExaoneMoeForCausalLM", "exaone4": "Exaone4ForCausalLM"}
# HF config fields that would change the math and that we have no equivalent for: any truthy
# value is refused.
_REFUSED_IF_TRUE = ("attention_bias", "mlp_bias", "bias", "use_qkv_bias", "swiglu_limits",
                    "mtp_share_layers")


def _get(hf: Any, name: str, default: Any = None) -> Any:
    return hf.get(name, default) if isinstance(hf, dict) else getattr(hf, name, default)


def _rope_theta(hf: Any) -> float:
    """RoPE base; only plain RoPE ("default" type, no scaling) is supported."""
    params = _get(hf, "rope_parameters") or _get(hf, "rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ConfigError("rope_parameters.rope_type", rope_type,
                          "only plain RoPE ('default') is supported; RoPE scaling is not")
    theta = params.get("rope_theta", _get(hf, "rope_theta"))
    if theta is None:
        raise ConfigError("rope_parameters.rope_theta", None, "is required")
    return float(theta)


def _compact_pattern(types: list[str]) -> str | None:
    """Shortest L/G pattern repeating at least twice into `types` exactly (or the whole list
    for models of at most 4 layers); None when only an explicit list describes it."""
    letters = "".join("L" if t == SLIDING else "G" for t in types)
    n = len(letters)
    for period in range(1, n + 1):
        if n % period == 0 and letters[:period] * (n // period) == letters:
            return letters[:period] if (period < n or n <= 4) else None
    return None


def _per_layer_window(hf: Any, types: list[str], window: int | None) -> int | None:
    """`sliding_windows` (one size per layer, 0 = global; some EXAONE configs carry it) must
    agree with `layer_types` and hold one size: we have a single window."""
    per_layer = _get(hf, "sliding_windows")
    if per_layer is None:
        return window
    sizes = {int(w) for w in per_layer if int(w) > 0}
    agrees = len(per_layer) == len(types) and all(
        (int(w) > 0) == (t == SLIDING) for w, t in zip(per_layer, types, strict=True))
    if not agrees or len(sizes) > 1:
        raise ConfigError("sliding_windows", list(per_layer),
                          "needs one window size on the sliding layers of layer_types, 0 elsewhere")
    return sizes.pop() if sizes else window


def _attention_fields(hf: Any, n_layers: int) -> dict[str, Any]:
    types = list(_get(hf, "layer_types") or [])
    if len(types) != n_layers:
        raise ConfigError("layer_types", types, f"needs num_hidden_layers={n_layers} entries")
    bad = sorted(set(types) - {SLIDING, FULL})
    if bad:
        raise ConfigError("layer_types", bad, f"entries must be '{SLIDING}' or '{FULL}'")
    window = _per_layer_window(hf, types, _get(hf, "sliding_window"))
    if window is None and SLIDING in types:
        raise ConfigError("sliding_window", None,
                          "sliding_attention layers need a window size")
    pattern = _compact_pattern(types)
    return dict(
        attention_pattern=pattern or "G",
        layer_types=None if pattern is not None else types,
        sliding_window_tokens=int(window) if window is not None else None,
        # HF: RoPE on a layer iff sliding_window is None or the layer is sliding.
        rope_on_global_layers=window is None,
    )


def _moe_fields(hf: Any, n_layers: int) -> dict[str, Any]:
    for name in ("n_group", "topk_group"):
        if int(_get(hf, name, 1) or 1) != 1:
            raise ConfigError(name, _get(hf, name),
                              "grouped expert routing (n_group/topk_group > 1) is not supported")
    score = _get(hf, "scoring_func", "sigmoid")
    if score != "sigmoid":
        raise ConfigError("scoring_func", score, "ExaoneMoe routes with sigmoid scores only")
    kinds = list(_get(hf, "mlp_layer_types") or [])
    if not kinds:
        k = int(_get(hf, "first_k_dense_replace", 1))
        kinds = ["dense" if i < k else "sparse" for i in range(n_layers)]
    if len(kinds) != n_layers or set(kinds) - {"dense", "sparse"}:
        raise ConfigError("mlp_layer_types", kinds,
                          f"needs num_hidden_layers={n_layers} entries of 'dense'/'sparse'")
    first_sparse = kinds.index("sparse") if "sparse" in kinds else n_layers
    prefix_form = kinds == ["dense"] * first_sparse + ["sparse"] * (n_layers - first_sparse)
    moe_size = int(_get(hf, "moe_intermediate_size"))
    top_k, norm_topk = int(_get(hf, "num_experts_per_tok")), bool(_get(hf, "norm_topk_prob", True))
    if norm_topk != (top_k > 1):
        # megatron-core normalises the top-k sigmoid scores exactly when top_k > 1
        raise ConfigError("norm_topk_prob", norm_topk,
                          f"with num_experts_per_tok={top_k} our router normalises the top-k "
                          f"scores iff top_k > 1")
    n_shared = int(_get(hf, "num_shared_experts", 1) or 0)
    return dict(
        num_experts=int(_get(hf, "num_experts")),
        moe_ffn_hidden_size=moe_size,
        moe_top_k=top_k,
        moe_shared_expert_ffn_hidden_size=moe_size * n_shared if n_shared else None,
        moe_first_k_dense=first_sparse if prefix_form else 1,
        moe_layer_types=None if prefix_form else kinds,
        moe_router_score="sigmoid",
        moe_routed_scaling_factor=float(_get(hf, "routed_scaling_factor", 1.0)),
        moe_norm_topk_prob=norm_topk,
        moe_expert_bias=True,  # e_score_correction_bias is always present in ExaoneMoe
    )


def _mtp_layers(hf: Any) -> int:
    n = int(_get(hf, "num_nextn_predict_layers", 0) or 0)
    mtp_types = _get(hf, "mtp_layer_types")
    if mtp_types is not None:
        n = len(mtp_types)
        if any(t != FULL for t in mtp_types):
            raise ConfigError("mtp_layer_types", list(mtp_types),
                              "our MTP block's layer is full attention (layout.mtp_layer_type)")
    if n > 1:
        raise ConfigError("num_nextn_predict_layers", n, "K-EXAONE has 0 or 1 MTP block")
    steps = _get(hf, "mtp_num_speculative_steps")
    if steps is not None and int(steps) > n:
        raise ConfigError("mtp_num_speculative_steps", steps,
                          f"repeated MTP layers are not supported (num_nextn_predict_layers={n})")
    return n


def _check_refused(hf: Any) -> None:
    for name in _REFUSED_IF_TRUE:
        if _get(hf, name):
            raise ConfigError(name, _get(hf, name), "is not supported by our model")
    act = _get(hf, "hidden_act", "silu")
    if act != "silu":
        raise ConfigError("hidden_act", act, "only SiLU (SwiGLU) MLPs are supported")
    dropout = float(_get(hf, "attention_dropout", 0.0) or 0.0)
    if dropout != 0.0:
        raise ConfigError("attention_dropout", dropout, "our model trains without dropout")


def hf_config_to_model_config(hf_config: Any, name: str = "hf_import") -> ModelConfig:
    """Our ModelConfig for an `ExaoneMoeConfig` / `Exaone4Config` (object or config.json dict)."""
    model_type = _get(hf_config, "model_type")
    if model_type not in FAMILY_OF_MODEL_TYPE:
        raise ConfigError("model_type", model_type,
                          f"must be one of {sorted(FAMILY_OF_MODEL_TYPE)}")
    _check_refused(hf_config)
    family = FAMILY_OF_MODEL_TYPE[model_type]
    n_layers = int(_get(hf_config, "num_hidden_layers"))
    hidden, heads = int(_get(hf_config, "hidden_size")), int(_get(hf_config, "num_attention_heads"))
    fields: dict[str, Any] = dict(
        name=name,
        family=family,
        num_layers=n_layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_query_groups=int(_get(hf_config, "num_key_value_heads") or heads),
        head_dim=int(_get(hf_config, "head_dim") or hidden // heads),
        ffn_hidden_size=int(_get(hf_config, "intermediate_size")),
        vocab_size=int(_get(hf_config, "vocab_size")),
        max_position_embeddings=int(_get(hf_config, "max_position_embeddings")),
        rope_theta=_rope_theta(hf_config),
        norm_eps=float(_get(hf_config, "rms_norm_eps", 1e-5)),
        norm_placement="pre" if family == "kexaone" else "qk_reorder",
        qk_norm=True,
        tie_embeddings=bool(_get(hf_config, "tie_word_embeddings", False)),
        init_std=float(_get(hf_config, "initializer_range", 0.02)),
        **_attention_fields(hf_config, n_layers),
    )
    if family == "kexaone":
        fields.update(_moe_fields(hf_config, n_layers), mtp_num_layers=_mtp_layers(hf_config))
    return ModelConfig(**fields)


def _hf_layer_types(m: ModelConfig) -> tuple[list[str], int | None]:
    types = layer_types(m)
    if SLIDING in types and m.rope_on_global_layers:
        raise ConfigError("model.rope_on_global_layers", True,
                          "HF EXAONE applies RoPE on global layers only when there is no "
                          "sliding window at all")
    if m.rope_on_global_layers:
        return types, None  # no window anywhere: HF sliding_window=None means RoPE everywhere
    # No RoPE on global layers needs a non-None HF sliding_window, even if no layer slides.
    return types, m.sliding_window_tokens or m.max_position_embeddings


def _common_hf_fields(m: ModelConfig) -> dict[str, Any]:
    types, window = _hf_layer_types(m)
    return dict(
        vocab_size=m.vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.ffn_hidden_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_query_groups,
        head_dim=m.head_dim,
        hidden_act="silu",
        max_position_embeddings=m.max_position_embeddings,
        initializer_range=m.init_std,
        rms_norm_eps=m.norm_eps,
        tie_word_embeddings=m.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": m.rope_theta},
        sliding_window=window,
        layer_types=types,
    )


def _moe_hf_fields(m: ModelConfig) -> dict[str, Any]:
    if m.norm_placement != "pre":
        raise ConfigError("model.norm_placement", m.norm_placement,
                          "ExaoneMoe (K-EXAONE) uses pre-norm")
    if m.num_experts is None or m.moe_ffn_hidden_size is None:
        raise ConfigError("model.num_experts", m.num_experts, "ExaoneMoe needs an MoE model")
    if m.moe_router_score != "sigmoid" or not m.moe_expert_bias:
        raise ConfigError("model.moe_router_score", m.moe_router_score,
                          "ExaoneMoe routes with sigmoid scores and an expert bias")
    if m.rope_on_global_layers:
        raise ConfigError("model.rope_on_global_layers", True,
                          "ExaoneMoe always has a sliding window, so global layers take no RoPE")
    shared = m.moe_shared_expert_ffn_hidden_size or 0
    if shared % m.moe_ffn_hidden_size:
        raise ConfigError("model.moe_shared_expert_ffn_hidden_size", shared,
                          f"HF needs a multiple of model.moe_ffn_hidden_size="
                          f"{m.moe_ffn_hidden_size} (num_shared_experts)")
    return dict(
        mlp_layer_types=["sparse" if x else "dense" for x in moe_layers(m)],
        moe_intermediate_size=m.moe_ffn_hidden_size,
        num_experts=m.num_experts,
        num_experts_per_tok=m.moe_top_k,
        num_shared_experts=shared // m.moe_ffn_hidden_size,
        norm_topk_prob=m.moe_top_k > 1,  # what megatron-core's router does
        routed_scaling_factor=m.moe_routed_scaling_factor,
        n_group=1,
        topk_group=1,
        num_nextn_predict_layers=m.mtp_num_layers,
    )


def model_config_to_hf_config(m: ModelConfig) -> Any:
    """The `transformers` config object (ExaoneMoeConfig / Exaone4Config) for our ModelConfig."""
    from transformers import Exaone4Config, ExaoneMoeConfig

    fields = _common_hf_fields(m)
    if m.family == "kexaone":
        return ExaoneMoeConfig(**fields, **_moe_hf_fields(m))
    if m.num_experts is not None:
        raise ConfigError("model.num_experts", m.num_experts, "Exaone4 is a dense model")
    if m.norm_placement != "qk_reorder":
        raise ConfigError("model.norm_placement", m.norm_placement,
                          "Exaone4 uses QK-Reorder-LN ('qk_reorder')")
    if m.mtp_num_layers:
        raise ConfigError("model.mtp_num_layers", m.mtp_num_layers, "Exaone4 has no MTP block")
    return Exaone4Config(**fields)
