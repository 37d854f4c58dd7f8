"""`exaone_train.model.counts` against real modules on tiny configs: the megatron-core model our
builder makes (padded vocab accounted for) and the independent `transformers` implementation
(unpadded vocab; the expert bias is a buffer in both)."""

from __future__ import annotations

import dataclasses

import pytest

from exaone_train.config.load import load_recipe
from exaone_train.config.schema import ModelConfig, ParallelConfig, PrecisionConfig
from exaone_train.export.hf_config import model_config_to_hf_config
from exaone_train.model.builder import build_model
from exaone_train.model.counts import mtp_params, total_params
from exaone_train.model.layout import padded_vocab_size
from exaone_train.parallel import state


def _variants() -> dict[str, ModelConfig]:
    kexaone = load_recipe("tiny_cpu").model
    exaone4 = load_recipe("tiny_cpu", ["model=tiny_exaone4"]).model
    return {
        "kexaone_mtp": kexaone,
        "kexaone_no_mtp": dataclasses.replace(kexaone, mtp_num_layers=0),
        "kexaone_mixed_moe_tied": dataclasses.replace(
            kexaone, moe_layer_types=["dense", "sparse", "dense", "sparse"], tie_embeddings=True,
            vocab_size=1000),
        "exaone4_32b": exaone4,
        "exaone4_1p2b_tied": dataclasses.replace(
            exaone4, attention_pattern="G", sliding_window_tokens=None, rope_on_global_layers=True,
            tie_embeddings=True, vocab_size=3000),
    }


VARIANTS = _variants()


@pytest.fixture(scope="module", autouse=True)
def single_process():
    state.setup(ParallelConfig(), seed=0)
    yield
    state.teardown()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_counts_match_megatron_module(name):
    m = VARIANTS[name]
    model = build_model(m, ParallelConfig(), PrecisionConfig(dtype="fp32"))
    params = dict(model.named_parameters())
    body = sum(p.numel() for k, p in params.items() if not k.startswith("mtp."))
    mtp = sum(p.numel() for k, p in params.items() if k.startswith("mtp."))
    padding_rows = padded_vocab_size(m) - m.vocab_size
    embedding_copies = 1 if m.tie_embeddings else 2
    assert body == total_params(m) + padding_rows * m.hidden_size * embedding_copies
    assert mtp == mtp_params(m)
    assert (mtp > 0) == (m.mtp_num_layers > 0)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_counts_match_transformers_module(name):
    """HF has no MTP module and no vocab padding: its count is exactly total_params."""
    from transformers import AutoModelForCausalLM

    m = VARIANTS[name]
    if m.family == "kexaone" and m.norm_placement != "pre":
        pytest.skip("not an HF layout")
    hf = AutoModelForCausalLM.from_config(model_config_to_hf_config(m))
    assert sum(p.numel() for p in hf.parameters()) == total_params(m)
