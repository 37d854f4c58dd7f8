"""Which layer implementation the builder picks: Transformer Engine (flash / fused attention,
grouped GEMM) or megatron-core's local layers with our `LocalCoreAttention` (O(s^2) scores).
No torch import: the dry-run planner on a login node asks the same question."""

from __future__ import annotations

import functools
import importlib.util

from exaone_train.config.schema import PrecisionConfig


@functools.cache
def transformer_engine_installed() -> bool:
    """Looked up once per process (the layout search asks for each of thousands of plans)."""
    return importlib.util.find_spec("transformer_engine") is not None


def uses_transformer_engine(prec: PrecisionConfig, cuda: bool) -> bool:
    """`precision.transformer_impl` resolved on a machine with (`cuda`) or without a GPU:
    `local` and `transformer_engine` are what they say; `auto` is Transformer Engine when it is
    installed and a GPU is visible, the local layers otherwise."""
    if prec.transformer_impl == "local":
        return False
    if prec.transformer_impl == "transformer_engine":
        return True
    return cuda and transformer_engine_installed()
