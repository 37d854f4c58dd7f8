"""GPU-only mismatches made visible on CPU (issue 14): FP8 recipes refused on GPUs that cannot
run them, the FP8 format and BF16 first/last layers handed to megatron-core, no
`reset_position_ids` setting that changes nothing, the plan's attention following the builder,
and the GPU FP8 test needing no built data."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from exaone_train.config.load import compose_recipe, load_recipe, to_object
from exaone_train.config.validate import validate_fp8
from exaone_train.errors import ConfigError
from exaone_train.parallel import state
from exaone_train.train.hardware import GPU_SPECS, fp8_unsupported
from launcher.resource_plan import load_for_plan, make_plan


@pytest.fixture(autouse=True)
def _teardown():
    yield
    state.teardown()


# ---- item 6: FP8 recipe by GPU ---------------------------------------------------------------
# Transformer Engine's rules (transformer_engine.pytorch: check_fp8_support,
# check_mxfp8_support, check_fp8_block_scaling_support): FP8 >= 8.9, blockwise >= 9.0 with
# CUDA >= 12.9, MXFP8 10.x-11.x.
@pytest.mark.parametrize("recipe, gpu, cuda, runs", [
    ("mxfp8", "h100", "12.9", False), ("mxfp8", "h200", "12.9", False),
    ("mxfp8", "b200", "12.9", True), ("blockwise", "h100", "12.8", False),
    ("blockwise", "h100", "12.9", True), ("blockwise", "h100", None, True),
    ("tensorwise", "a100", "12.9", False), ("delayed", "a100", None, False),
    ("tensorwise", "h100", "12.1", True), ("delayed", "b200", None, True),
])
def test_fp8_recipe_against_gpu_capability(recipe, gpu, cuda, runs):
    problem = fp8_unsupported(recipe, GPU_SPECS[gpu].compute_capability, cuda)
    assert (problem is None) == runs, problem


def test_mxfp8_on_h100_is_a_config_error_in_validate_and_plan():
    overrides = ["precision.fp8=mxfp8", "logging.gpu_type=h100"]
    with pytest.raises(ConfigError, match=r"precision\.fp8.*10\.x.*9\.0.*logging\.gpu_type=h100"):
        load_for_plan("kexaone_236b", overrides)  # the one validate() pass
    cfg = to_object(compose_recipe("kexaone_236b", overrides))  # unvalidated, to plan it
    with pytest.raises(ConfigError, match=r"precision\.fp8.*10\.x.*9\.0.*logging\.gpu_type=h100"):
        validate_fp8(cfg)
    with pytest.raises(ConfigError, match=r"precision\.fp8.*gpu_type=h100"):
        make_plan(cfg, 64, gpus_per_node=8, gpu_type="h100")
    assert make_plan(cfg, 64, gpus_per_node=8, gpu_type="b200")["memory"]["fp8"] == "mxfp8"


# ---- item 7: FP8 format and BF16 first/last layers ------------------------------------------
@pytest.mark.parametrize("overrides, fp8, bf16_layers", [
    (["precision.fp8=tensorwise"], "hybrid", (1, 1)),  # Megatron-Bridge's current scaling
    (["precision.fp8=delayed"], "hybrid", None),
    (["precision.fp8=mxfp8"], "hybrid", None),
    (["precision.fp8=tensorwise", "precision.fp8_format=e4m3",
      "precision.fp8_bf16_first_layers=0", "precision.fp8_bf16_last_layers=2"], "e4m3", (0, 2)),
])
def test_fp8_settings_reach_megatron(overrides, fp8, bf16_layers):
    """The TransformerConfig arguments (megatron-core builds an FP8 TransformerConfig only
    with Transformer Engine installed, so the keyword arguments are checked, by field name)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    from exaone_train.model.builder import _precision_kwargs

    cfg = load_for_plan("tiny_cpu", overrides)
    validate_fp8(cfg)
    kw = _precision_kwargs(cfg.precision)
    assert set(kw) <= {f.name for f in dataclasses.fields(TransformerConfig)}
    assert (kw["fp8"], kw["fp8_recipe"]) == (fp8, cfg.precision.fp8)
    assert kw["first_last_layers_bf16"] == (bf16_layers is not None)
    if bf16_layers is not None:
        assert (kw["num_layers_at_start_in_bf16"], kw["num_layers_at_end_in_bf16"]) == bf16_layers


@pytest.mark.parametrize("overrides, field", [
    (["precision.fp8_format=e5m2"], "precision.fp8_format"),
    (["precision.fp8=delayed", "precision.fp8_bf16_first_layers=1"],
     "precision.fp8_bf16_first_layers"),
    (["precision.fp8=tensorwise", "parallel.pp=2", "precision.fp8_bf16_last_layers=3"],
     "precision.fp8_bf16_last_layers"),  # 4 layers / pp 2: at most 2 per stage
])
def test_fp8_settings_megatron_would_refuse_are_config_errors(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_for_plan("tiny_cpu", overrides)  # the one validate() pass
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate_fp8(to_object(compose_recipe("tiny_cpu", overrides)))


# ---- item 9: no reset_position_ids ----------------------------------------------------------
def test_reset_position_ids_is_not_a_setting():
    with pytest.raises(ConfigError, match="reset_position_ids"):
        load_recipe("tiny_cpu", ["train.reset_position_ids=true"])


def test_per_document_positions_change_nothing():
    """Why the setting is gone: the loss with positions restarted at every document equals the
    loss with 0..s-1 (megatron's GPTModel ignores position_ids under RoPE; and RoPE's scores
    depend on i - j only, so inside a document mask a restart would be implied)."""
    from exaone_train.model.builder import build_model
    from exaone_train.train.step import collate
    from exaone_train.train.synthetic import SyntheticStageDataset

    cfg = load_recipe("tiny_cpu", ["train.data_source=synthetic"])
    state.setup(cfg.parallel, cfg.seed)
    model = build_model(cfg.model, cfg.parallel, cfg.precision).eval()
    data = SyntheticStageDataset(64, cfg.model.vocab_size, seed=3, min_doc_tokens=5)
    b = collate([data[0], data[1]], document_mask=True)
    reset = torch.from_numpy(data[0].position_ids), torch.from_numpy(data[1].position_ids)
    per_doc = torch.stack(reset).long()
    assert not torch.equal(per_doc, b.position_ids)  # the samples do hold several documents
    with torch.no_grad():
        losses = [model(b.input_ids, pos, b.attention_mask, labels=b.labels)
                  for pos in (b.position_ids, per_doc)]
    assert torch.equal(losses[0], losses[1])


# ---- item 10: the plan's attention is the builder's -----------------------------------------
def _plan(monkeypatch, impl: str, te_installed: bool) -> dict:
    from exaone_train.model import backend

    monkeypatch.setattr(backend, "transformer_engine_installed", lambda: te_installed)
    cfg = load_for_plan("exaone4_32b", [f"precision.transformer_impl={impl}"])
    return make_plan(cfg, 8, gpus_per_node=8, gpu_type="h100", seq_len_tokens=8192,
                     micro_batch_samples=1, global_batch_samples=64)


def test_plan_counts_local_attention_when_auto_has_no_transformer_engine(monkeypatch):
    auto = _plan(monkeypatch, "auto", te_installed=False)
    local = _plan(monkeypatch, "local", te_installed=False)
    te = _plan(monkeypatch, "transformer_engine", te_installed=True)
    auto_te = _plan(monkeypatch, "auto", te_installed=True)
    acts = [p["memory"]["activations"] for p in (auto, local, te, auto_te)]
    assert [a["flash_attention_assumed"] for a in acts] == [False, False, True, True]
    assert acts[0]["per_layer_per_microbatch_gib"] == acts[1]["per_layer_per_microbatch_gib"]
    assert acts[2]["per_layer_per_microbatch_gib"] == acts[3]["per_layer_per_microbatch_gib"]
    # the blockwise local attention's fp32 output and log-sum-exp: 4 bytes * 40 heads *
    # (128 + 1) per token (MODELS.md; no [s, s] scores any more)
    extra = acts[0]["per_layer_per_microbatch_gib"] - acts[2]["per_layer_per_microbatch_gib"]
    assert extra == pytest.approx(4 * 40 * 129 * 8192 / 1024**3)
    assert any("transformer_impl=auto" in w for w in auto["warnings"])
    assert not any("transformer_impl=auto" in w for w in auto_te["warnings"])


# ---- item 12: the GPU FP8 test builds no data files -----------------------------------------
def test_gpu_fp8_test_reads_synthetic_data(tmp_path):
    from exaone_train.train.trainer import build_data
    from tests.gpu.test_fp8 import fp8_test_recipe

    cfg = fp8_test_recipe(tmp_path, "bf16")  # the FP8 variant needs TE to validate
    assert cfg.train.data_source == "synthetic"
    sample = build_data(cfg)[0]
    assert len(sample.tokens) == cfg.train.seq_length_tokens + 1


# ---- issue 17 item 1: document masks on the TE path are packed THD batches -------------------
def test_kexaone_with_document_masks_validates_on_the_te_path(monkeypatch):
    """Where Transformer Engine is installed, the headline recipe (FP8, hence TE, and document
    masks) passes validate(): documents become THD packs (train/packing.py). TE's a2a+p2p
    context parallelism has no THD: a ConfigError naming the field."""
    from exaone_train.config.validate import validate
    from exaone_train.model import backend
    from exaone_train.train.step import thd_tp_split

    monkeypatch.setattr(backend, "transformer_engine_installed", lambda: True)
    cfg = to_object(compose_recipe("kexaone_236b", []))
    assert cfg.train.document_attention_mask and cfg.precision.fp8 is not None
    validate(cfg, reads_train_data=False)
    overrides = ["precision.transformer_impl=transformer_engine", "parallel.cp=2",
                 "parallel.cp_comm_type=a2a+p2p", "model.attention_pattern=GGGG",
                 "model.sliding_window_tokens=null"]
    full_attention = to_object(compose_recipe("tiny_cpu", overrides))
    with pytest.raises(ConfigError, match=r"parallel\.cp_comm_type.*a2a\+p2p.*THD"):
        validate(full_attention, reads_train_data=False)
    validate(to_object(compose_recipe("tiny_cpu", overrides[:-3] + ["parallel.cp_comm_type=a2a"])),
             reads_train_data=False)
    # the trainer packs THD exactly where the TE layers run with document masks
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert thd_tp_split(cfg) == cfg.parallel.tp  # sequence parallel: T/cp splits over TP
    assert thd_tp_split(to_object(compose_recipe("kexaone_236b", [
        "train.document_attention_mask=false"]))) is None
    assert thd_tp_split(to_object(compose_recipe("tiny_cpu", [
        "precision.transformer_impl=local"]))) is None
