"""Peak dense FLOP/s per GPU for MFU, from the recipe's precision and the detected GPU."""

from __future__ import annotations

import torch

from exaone_train.config.schema import RecipeConfig
from exaone_train.errors import ConfigError
from exaone_train.train.hardware import peak_flops


def detect_gpu_type() -> str | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name().lower()
    return next((k for k in ("h200", "h100", "a100", "b200") if k in name), None)


def peak_flops_per_gpu(cfg: RecipeConfig) -> float | None:
    """None when unknown (CPU): MFU is then not reported rather than made up."""
    gpu = cfg.logging.gpu_type or detect_gpu_type()
    if gpu is None:
        return None
    try:
        return peak_flops(gpu, fp8=cfg.precision.fp8 is not None)
    except ConfigError:
        return None
