"""Peak dense FLOP/s per GPU for MFU, from the recipe's precision and the detected GPU."""

from __future__ import annotations

import torch

from exaone_train.config.schema import RecipeConfig

# Dense (no sparsity) peak TFLOP/s: (bf16, fp8).
PEAK_TFLOPS = {"h100": (989.0, 1979.0), "h200": (989.0, 1979.0), "a100": (312.0, None),
               "b200": (2250.0, 4500.0)}


def detect_gpu_type() -> str | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name().lower()
    return next((k for k in PEAK_TFLOPS if k in name), None)


def peak_flops_per_gpu(cfg: RecipeConfig) -> float | None:
    """None when unknown (CPU): MFU is then not reported rather than made up."""
    gpu = cfg.logging.gpu_type or detect_gpu_type()
    if gpu is None or gpu not in PEAK_TFLOPS:
        return None
    bf16, fp8 = PEAK_TFLOPS[gpu]
    peak = fp8 if cfg.precision.fp8 and fp8 else bf16
    return peak * 1e12
