"""Transformer Engine specs (GPU, `pip install '.[gpu]'`). Not exercised on the CPU CI: the
GPU-marked tests in tests/gpu build and train through this path on a lent GPU.

Unfused on purpose (norm, then linear) so the K-EXAONE pre-norm layout and EXAONE 4.0's
post-norms share one layer shape with the local spec; FP8 runs through TE's linears and
attention. TE's own RMSNorm marks its weight for sequence-parallel grad reduction.
"""

from __future__ import annotations

from megatron.core.extensions.transformer_engine import TENorm, TERowParallelLinear
from megatron.core.extensions.transformer_engine_spec_provider import TESpecProvider


class PostNormTERowParallelLinear(TERowParallelLinear):
    """TERowParallelLinear followed by RMSNorm on its TP-reduced output (QK-Reorder-LN)."""

    def __init__(self, input_size: int, output_size: int, *, config, **kwargs) -> None:
        super().__init__(input_size, output_size, config=config, **kwargs)
        self.post_norm = TENorm(config=config, hidden_size=output_size,
                                eps=config.layernorm_epsilon)

    def forward(self, x):
        output, bias = super().forward(x)
        return self.post_norm(output), bias


class ExaoneTESpecProvider(TESpecProvider):
    def __init__(self, post_norm: bool = False) -> None:
        super().__init__()
        self.post_norm = post_norm

    def fuse_layernorm_and_linear(self) -> bool:
        return False

    def layer_norm(self, rms_norm: bool = False, for_qk: bool = False) -> type:
        return TENorm  # RMSNorm through config.normalization

    def row_parallel_linear(self) -> type:
        return PostNormTERowParallelLinear if self.post_norm else TERowParallelLinear
