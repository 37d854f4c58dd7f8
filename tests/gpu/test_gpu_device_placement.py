"""GPU only: tests/unit/test_device_placement.py's scenario (a training step with its
checkpoint save, a validation pass, a NIAH sample) on CUDA, recorded at the dispatcher: every
collective's tensors, every forward input, every parameter and buffer on `state.device()`
(cuda:LOCAL_RANK). fp32 and bf16 (megatron's Float16OptimizerWithFloat16Params takes only CUDA
parameters); the Transformer Engine spec too where it is installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from exaone_train.parallel import state
from tests.unit.test_device_placement import assert_all_on_rank_device, run_scenario

pytestmark = pytest.mark.gpu

IMPLS = ["local"] + (["transformer_engine"] if importlib.util.find_spec("transformer_engine")
                     else [])


@pytest.fixture(autouse=True)
def _needs_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    yield
    state.teardown()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_step_validation_niah_and_save_stay_on_the_gpu(tmp_path, dtype, impl):
    extra = ["train.document_attention_mask=false"] if impl == "transformer_engine" else []
    rec = run_scenario(tmp_path, f"precision.dtype={dtype}",
                       f"precision.transformer_impl={impl}", *extra)
    assert state.device().type == "cuda"
    assert_all_on_rank_device(rec)


def test_this_gpu_refuses_the_fp8_recipes_it_cannot_run():
    """The builder's check on the detected GPU (TE itself fails only in the first forward)."""
    from exaone_train.config.schema import PrecisionConfig
    from exaone_train.errors import ConfigError
    from exaone_train.model.builder import _precision_kwargs
    from exaone_train.train.hardware import fp8_unsupported

    cc, cuda = torch.cuda.get_device_capability(), torch.version.cuda
    for recipe in ("delayed", "tensorwise", "blockwise", "mxfp8"):
        prec = PrecisionConfig(dtype="bf16", fp8=recipe, transformer_impl="transformer_engine")
        if fp8_unsupported(recipe, cc, cuda) is None:
            _precision_kwargs(prec)
        else:
            with pytest.raises(ConfigError, match="precision.fp8"):
                _precision_kwargs(prec)
    if cc == (9, 0):  # H100 / H200: no MXFP8
        assert fp8_unsupported("mxfp8", cc, cuda) is not None
