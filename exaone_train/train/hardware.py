"""Dense peak throughput per GPU type, for the dry-run plan and the trainer's MFU callback.

Vendor datasheet figures for dense (no 2:4 sparsity) tensor-core math, in FLOP/s per GPU.
The trainer reports MFU against the bf16 peak, FP8 runs included: that is the common convention
(Megatron-LM, torchtitan), and it keeps BF16 and FP8 runs comparable. `peak_flops(fp8=True)`
gives the FP8 figure for whoever wants the other ratio. Importing this module needs no torch
(the dry-run plan runs on a login node).
"""

from __future__ import annotations

from dataclasses import dataclass

from exaone_train.errors import ConfigError


@dataclass(frozen=True)
class GpuSpec:
    name: str
    bf16_dense_flops: float  # FLOP/s per GPU
    fp8_dense_flops: float | None  # None: no FP8 tensor cores
    memory_gib: float  # usable HBM per GPU as the vendor states it (GB ~ GiB here, rounded)
    compute_capability: tuple[int, int]  # CUDA compute capability (what FP8 recipes need)


TFLOPS = 1e12

GPU_SPECS: dict[str, GpuSpec] = {
    "h100": GpuSpec("NVIDIA H100 SXM", 989 * TFLOPS, 1979 * TFLOPS, 80, (9, 0)),
    "h200": GpuSpec("NVIDIA H200 SXM", 989 * TFLOPS, 1979 * TFLOPS, 141, (9, 0)),
    "a100": GpuSpec("NVIDIA A100 SXM", 312 * TFLOPS, None, 80, (8, 0)),
    "b200": GpuSpec("NVIDIA B200", 2250 * TFLOPS, 4500 * TFLOPS, 180, (10, 0)),
}


def gpu_spec(gpu_type: str) -> GpuSpec:
    """The spec of `gpu_type` (case-insensitive key of GPU_SPECS)."""
    key = gpu_type.lower()
    if key not in GPU_SPECS:
        raise ConfigError("gpu_type", gpu_type, f"must be one of {sorted(GPU_SPECS)}")
    return GPU_SPECS[key]


def peak_flops(gpu_type: str, fp8: bool = False) -> float:
    """Dense peak FLOP/s of one GPU; fp8=True asks for the FP8 peak (ConfigError if none)."""
    spec = gpu_spec(gpu_type)
    if not fp8:
        return spec.bf16_dense_flops
    if spec.fp8_dense_flops is None:
        raise ConfigError("gpu_type", gpu_type, f"{spec.name} has no FP8 tensor cores")
    return spec.fp8_dense_flops


def detect_gpu_type() -> str | None:
    """Key of GPU_SPECS for this process's GPU; None without CUDA or for an unknown GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name().lower()
    return next((k for k in GPU_SPECS if k in name), None)


def mfu_peak_flops(gpu_type: str | None) -> float | None:
    """The bf16 dense peak MFU is quoted against (FP8 runs too: see the module doc); `gpu_type`
    None = detect. None when unknown (CPU): MFU is then not reported rather than made up."""
    gpu = gpu_type or detect_gpu_type()
    if gpu is None or gpu.lower() not in GPU_SPECS:
        return None
    return peak_flops(gpu)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(".")[:2])


def fp8_unsupported(recipe: str, capability: tuple[int, int],
                    cuda_version: str | None) -> str | None:
    """Why Transformer Engine cannot run FP8 `recipe` on a GPU of compute `capability` with
    CUDA `cuda_version` (None: unknown, that part unchecked), or None when it can. TE's own
    checks (transformer_engine.pytorch: check_fp8_support, check_mxfp8_support,
    check_fp8_block_scaling_support) fail only inside the first forward."""
    cc = tuple(capability)
    have = f"compute capability {cc[0]}.{cc[1]}"
    cuda = _version(cuda_version) if cuda_version else None
    if recipe == "mxfp8":
        if not (10, 0) <= cc < (12, 0):
            return f"MXFP8 needs compute capability 10.x-11.x (B200/GB200); this GPU has {have}"
    elif recipe == "blockwise":
        if cc < (9, 0):
            return f"blockwise FP8 needs compute capability >= 9.0 (H100); this GPU has {have}"
        if cuda is not None and cuda < (12, 9):
            return f"blockwise FP8 needs CUDA >= 12.9; this torch is built with CUDA {cuda_version}"
    elif cc < (8, 9):
        return f"FP8 needs compute capability >= 8.9 (Ada, H100); this GPU has {have}"
    elif cc < (9, 0) and cuda is not None and cuda < (12, 1):
        return f"FP8 on Ada needs CUDA >= 12.1; this torch is built with CUDA {cuda_version}"
    return None
