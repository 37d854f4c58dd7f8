"""megatron-core layer specs for K-EXAONE and EXAONE 4.0.

The local (pure torch) specs run anywhere and are what CPU tests use; the Transformer Engine
specs are used on GPU when TE is installed (`precision.transformer_impl`).
"""

from __future__ import annotations

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.backends import LocalSpecProvider
from megatron.core.models.gpt.gpt_layer_specs import get_mlp_module_spec_for_backend
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.multi_token_prediction import (
    MultiTokenPredictionBlockSubmodules,
    get_mtp_layer_spec_for_backend,
)
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from exaone_train.config.schema import ModelConfig
from exaone_train.model.layers import LocalCoreAttention, PostNormRowParallelLinear, RMSNorm
from exaone_train.model.layout import moe_layers


class ExaoneLocalSpecProvider(LocalSpecProvider):
    """megatron-core's local modules, with our RMSNorm and core attention; with
    `post_norm=True` every row-parallel output (attention proj, MLP fc2) is RMS-normalised."""

    def __init__(self, post_norm: bool = False) -> None:
        super().__init__()
        self.post_norm = post_norm

    def layer_norm(self, rms_norm: bool = False, for_qk: bool = False) -> type:
        return RMSNorm

    def core_attention(self) -> type:
        return LocalCoreAttention

    def row_parallel_linear(self) -> type:
        return PostNormRowParallelLinear if self.post_norm else super().row_parallel_linear()


def _layer_spec(m: ModelConfig, backend, num_experts: int | None) -> ModuleSpec:
    pre_norm = m.norm_placement == "pre"
    norm = backend.layer_norm(rms_norm=True)
    qk_norm = backend.layer_norm(rms_norm=True, for_qk=True) if m.qk_norm else IdentityOp
    grouped = num_experts is not None and not isinstance(backend, ExaoneLocalSpecProvider)
    mlp = get_mlp_module_spec_for_backend(backend=backend, num_experts=num_experts,
                                          moe_grouped_gemm=grouped)
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=norm if pre_norm else IdentityOp,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=backend.column_parallel_linear(),
                    core_attention=backend.core_attention(),
                    linear_proj=backend.row_parallel_linear(),
                    q_layernorm=qk_norm,
                    k_layernorm=qk_norm,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=norm if pre_norm else IdentityOp,
            mlp=mlp,
            mlp_bda=get_bias_dropout_add,
        ),
    )


def backend_for(m: ModelConfig, use_te: bool):
    if use_te:
        from exaone_train.model.te_specs import ExaoneTESpecProvider

        return ExaoneTESpecProvider(post_norm=m.norm_placement == "qk_reorder")
    return ExaoneLocalSpecProvider(post_norm=m.norm_placement == "qk_reorder")


def decoder_block_spec(m: ModelConfig, layer_offset: int, num_local_layers: int,
                       use_te: bool) -> TransformerBlockSubmodules:
    """Specs of the decoder layers this pipeline stage builds, plus the final norm."""
    backend = backend_for(m, use_te)
    dense = _layer_spec(m, backend, None)
    moe = _layer_spec(m, backend, m.num_experts) if m.num_experts else None
    kinds = moe_layers(m)[layer_offset: layer_offset + num_local_layers]
    specs = [moe if is_moe else dense for is_moe in kinds]
    return TransformerBlockSubmodules(layer_specs=specs, layer_norm=backend.layer_norm(True))


def mtp_block_spec(m: ModelConfig, use_te: bool) -> MultiTokenPredictionBlockSubmodules | None:
    """The MTP block: enorm/hnorm -> eh_proj (2H->H) -> one *dense* decoder layer -> norm."""
    if m.mtp_num_layers == 0:
        return None
    backend = backend_for(m, use_te)
    layer = get_mtp_layer_spec_for_backend(_layer_spec(m, backend, None), backend)
    return MultiTokenPredictionBlockSubmodules(layer_specs=[layer] * m.mtp_num_layers)
