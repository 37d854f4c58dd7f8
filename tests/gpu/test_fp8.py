"""GPU only (a lent H100/H200 with Transformer Engine): FP8 and BF16 runs of the same tiny
recipe agree within 1% after 200 steps. Skipped (with the reason) where there is no GPU; this
cannot be faked on CPU. The data is the synthetic stream: nothing to build first
(tests/unit/test_gpu_path.py checks that on CPU)."""

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("transformer_engine")


def fp8_test_recipe(tmp_path, precision: str):
    from exaone_train.config.load import load_recipe

    # FP8 GEMMs need dims divisible by 16: a slightly wider tiny model
    return load_recipe("tiny_cpu", [f"run.dir={tmp_path}/{precision}", f"precision={precision}",
                                    "logging.wandb=false", "train.train_steps=200",
                                    "train.data_source=synthetic",
                                    "train.document_attention_mask=false",
                                    "model.hidden_size=128", "model.ffn_hidden_size=256",
                                    "model.moe_ffn_hidden_size=64",
                                    "model.moe_shared_expert_ffn_hidden_size=64"])


def _final_loss(tmp_path, precision: str) -> float:
    from exaone_train.parallel import state
    from exaone_train.train.trainer import main

    cfg = fp8_test_recipe(tmp_path, precision)
    try:
        results = main(cfg)
    finally:
        state.teardown()
    return sum(r.loss for r in results[-10:]) / 10


def test_fp8_matches_bf16_within_one_percent(tmp_path):
    bf16 = _final_loss(tmp_path, "bf16")
    fp8 = _final_loss(tmp_path, "fp8")
    assert abs(fp8 - bf16) <= 0.01 * bf16, (fp8, bf16)
