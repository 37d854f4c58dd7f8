"""Recipe -> megatron-core TransformerConfig + GPTModel. Builds what this rank owns; knows
shapes, not ranks (the pipeline stage comes from parallel_state through megatron-core)."""

from __future__ import annotations

import contextlib

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.enums import AttnBackend
from megatron.core.transformer.transformer_block import get_num_layers_to_build
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from exaone_train.config.schema import ModelConfig, ParallelConfig, PrecisionConfig
from exaone_train.model.backend import uses_transformer_engine
from exaone_train.model.layout import (
    SLIDING,
    layer_types,
    moe_layers,
    mtp_layer_type,
    padded_vocab_size,
    rope_skipped,
)
from exaone_train.model.specs import decoder_block_spec, mtp_block_spec
from exaone_train.parallel import state

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def use_transformer_engine(precision: PrecisionConfig) -> bool:
    """Transformer Engine layers on this machine (the planner asks the same function)."""
    return uses_transformer_engine(precision, cuda=torch.cuda.is_available())


def _layout_kwargs(m: ModelConfig) -> dict:
    """Sliding-window and RoPE layout, one flag per megatron layer_number."""
    types = layer_types(m)
    skip = rope_skipped(m)
    kw: dict = {"window_size": None, "window_attn_skip_freq": None,
                "no_rope_freq": [int(s) for s in skip[: m.num_layers]] if any(skip) else None}
    if m.sliding_window_tokens is not None and SLIDING in types:
        kw["window_size"] = (m.sliding_window_tokens - 1, 0)  # HF i-W < j <= i == mcore (W-1, 0)
        # one flag per decoder layer then per MTP layer (megatron indexes by layer_number)
        kw["window_attn_skip_freq"] = [int(t == SLIDING) for t in
                                       types + [mtp_layer_type(m)] * m.mtp_num_layers]
    return kw


def _pp_peers_coincide(p: ParallelConfig) -> bool:
    """The interleaved schedule on 2 pipeline ranks: the previous and the next stage are the
    same rank. megatron-core's batched p2p (`batch_p2p_comm`, its default) posts that peer's
    sends as [to prev (grad), to next (activation)] and its receives as [from prev
    (activation), from next (grad)]; same-peer point-to-point messages match in posting order,
    so the activation and the gradient arrive swapped (Megatron-LM issues #750, #1450). Its
    unbatched path orders them per rank parity and is right."""
    return p.virtual_pp is not None and p.pp == 2


def _parallel_kwargs(p: ParallelConfig) -> dict:
    kw = dict(tensor_model_parallel_size=p.tp, pipeline_model_parallel_size=p.pp,
              virtual_pipeline_model_parallel_size=p.virtual_pp,
              expert_model_parallel_size=p.ep, expert_tensor_parallel_size=p.etp,
              context_parallel_size=p.cp, sequence_parallel=p.sequence_parallel,
              batch_p2p_comm=not _pp_peers_coincide(p),
              cp_comm_type=p.cp_comm_type if p.cp > 1 else None)
    if p.recompute != "none":
        kw.update(recompute_granularity=p.recompute,
                  recompute_method="uniform" if p.recompute == "full" else None,
                  recompute_num_layers=1 if p.recompute == "full" else None)
    return kw


def _moe_kwargs(m: ModelConfig, p: ParallelConfig, prec: PrecisionConfig) -> dict:
    if not m.num_experts:
        return {}
    # With calculate_per_token_loss megatron-core multiplies each rank's aux / z loss by the
    # rank's *local* token count before finalize_model_grads divides by the global one. The
    # router sees 1/(tp*cp) of the tokens (sequence parallelism, context parallelism) while
    # its statistics are already reduced over that tp_cp group, so the summed gradient comes
    # out tp*cp times too small. Scaling the coefficients by tp*cp gives the 1-process
    # gradient; the logged losses are divided by the coefficient, so they do not change.
    token_split = p.tp * p.cp
    return dict(
        num_moe_experts=m.num_experts,
        moe_ffn_hidden_size=m.moe_ffn_hidden_size,
        moe_shared_expert_intermediate_size=m.moe_shared_expert_ffn_hidden_size,
        moe_layer_freq=[int(x) for x in moe_layers(m)],
        moe_router_topk=m.moe_top_k,
        moe_router_score_function=m.moe_router_score,
        moe_router_topk_scaling_factor=m.moe_routed_scaling_factor,
        moe_router_enable_expert_bias=m.moe_expert_bias,
        moe_router_bias_update_rate=m.moe_expert_bias_update_rate,
        moe_router_load_balancing_type="seq_aux_loss" if m.moe_seq_aux_loss_coeff > 0 else "none",
        moe_aux_loss_coeff=m.moe_seq_aux_loss_coeff * token_split,
        moe_z_loss_coeff=m.moe_z_loss_coeff * token_split or None,
        moe_router_dtype="fp32",
        moe_token_dispatcher_type=p.moe_token_dispatcher,
        moe_grouped_gemm=use_transformer_engine(prec),  # TEGroupedMLP on GPU
        moe_permute_fusion=False,
    )


def _precision_kwargs(prec: PrecisionConfig) -> dict:
    dtype = _DTYPES[prec.dtype]
    kw = dict(params_dtype=dtype, pipeline_dtype=dtype, bf16=prec.dtype == "bf16",
              attention_softmax_in_fp32=True)
    if prec.fp8 is not None:
        _check_fp8_on_this_gpu(prec)
        first, last = prec.fp8_bf16_layers
        kw.update(fp8=prec.fp8_format, fp8_recipe=prec.fp8,
                  fp8_amax_history_len=prec.fp8_amax_history_len,
                  first_last_layers_bf16=bool(first or last),
                  num_layers_at_start_in_bf16=first, num_layers_at_end_in_bf16=last)
    return kw


def _check_fp8_on_this_gpu(prec: PrecisionConfig) -> None:
    """The detected GPU and CUDA against the FP8 recipe (ConfigError, before any layer)."""
    if not torch.cuda.is_available():
        return  # validate() refuses FP8 without Transformer Engine; nothing to detect here
    from exaone_train.config.validate import validate_fp8_gpu

    validate_fp8_gpu(prec, torch.cuda.get_device_capability(), torch.version.cuda,
                     f"detected {torch.cuda.get_device_name()}")


def transformer_config(m: ModelConfig, p: ParallelConfig, prec: PrecisionConfig) -> TransformerConfig:
    """The megatron-core TransformerConfig equivalent of our recipe sections."""
    cpu = not torch.cuda.is_available()
    config = TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        kv_channels=m.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_eps,
        qk_layernorm=m.qk_norm,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.init_std,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        use_cpu_initialization=cpu,
        attention_backend=AttnBackend.local if cpu else AttnBackend.auto,
        mtp_num_layers=m.mtp_num_layers or None,
        mtp_loss_scaling_factor=m.mtp_loss_weight,
        # Loss = sum over tokens; finalize_model_grads divides by the global token count, so
        # gradient accumulation and DP give exactly the global per-token mean.
        calculate_per_token_loss=True,
        **_layout_kwargs(m), **_parallel_kwargs(p), **_moe_kwargs(m, p, prec),
        **_precision_kwargs(prec),
    )
    # megatron-core indexes both lists by layer_number, which runs on into the MTP layers, but
    # __post_init__ insists on num_layers entries: extend them after validation.
    if config.no_rope_freq is not None:
        config.no_rope_freq = [int(s) for s in rope_skipped(m)]
    return config


def build_model(m: ModelConfig, p: ParallelConfig, prec: PrecisionConfig,
                vp_stage: int | None = None, meta: bool = False) -> GPTModel:
    """Build this rank's part of the model (one virtual stage when `vp_stage` is given).
    `meta=True`: parameters on the meta device, uninitialised: names, shapes, dtypes and the
    sharded state dict without the memory (streaming HF conversion)."""
    if (p.virtual_pp is None) != (vp_stage is None):
        # megatron-core would silently build the layers of another stage
        raise ValueError(f"parallel.virtual_pp={p.virtual_pp} needs one build per virtual "
                         f"stage (vp_stage in 0..virtual_pp-1), got vp_stage={vp_stage}")
    config = transformer_config(m, p, prec)
    if meta:  # else megatron creates its layers on the GPU explicitly, meta context or not
        config.use_cpu_initialization, config.perform_initialization = True, False
    use_te = use_transformer_engine(prec)
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    offset = get_transformer_layer_offset(config, vp_stage=vp_stage, pp_rank=pp_rank)
    n_local = get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank)
    pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    with torch.device("meta") if meta else contextlib.nullcontext():
        model = GPTModel(
            config=config,
            transformer_layer_spec=decoder_block_spec(m, offset, n_local, use_te),
            vocab_size=padded_vocab_size(m, p.tp),
            max_sequence_length=m.max_position_embeddings,
            pre_process=pre,
            post_process=post,
            share_embeddings_and_output_weights=m.tie_embeddings,
            position_embedding_type="rope",
            rotary_base=int(m.rope_theta),
            mtp_block_spec=mtp_block_spec(m, use_te) if post else None,
            vp_stage=vp_stage,
        )
    if meta:
        return model
    # As megatron-LM's get_model (`.cuda(current_device)`): megatron's own layers are created
    # on the GPU, but the router weight (megatron creates it on the CPU) and any module built
    # without a device are not; the optimizer and DDP's buffers need every parameter here.
    return model.to(device=state.device())
