"""validate() names the field, the value and the rule; bad recipes never reach megatron-core."""

import pytest

from exaone_train.config.load import load_recipe
from exaone_train.errors import ConfigError


def test_shipped_recipes_validate():
    for model in ("kexaone_236b", "exaone4_32b", "exaone4_1p2b", "tiny_kexaone", "tiny_exaone4"):
        assert load_recipe("tiny_cpu", [f"model={model}"]).model.name == model


@pytest.mark.parametrize("overrides, field, words", [
    (["parallel.tp=3"], "parallel.tp", "num_attention_heads"),
    (["model=kexaone_236b", "parallel.tp=16"], "parallel.tp", "num_query_groups=8"),
    (["parallel.ep=3"], "parallel.ep", "num_experts=8"),
    (["parallel.pp=3"], "parallel.pp", "num_layers=4"),
    (["parallel.pp=2", "parallel.virtual_pp=4"], "parallel.pp", "num_layers=4"),
    (["parallel.pp=2", "parallel.virtual_pp=1"], "parallel.virtual_pp", ">= 2"),
    (["parallel.virtual_pp=2"], "parallel.virtual_pp", "parallel.pp > 1"),
    (["model.sliding_window_tokens=0"], "model.sliding_window_tokens", "> 0"),
    (["model.sliding_window_tokens=null"], "model.sliding_window_tokens", "window size"),
    (["model.attention_pattern=LLLLLG"], "model.attention_pattern", "longer than"),
    (["model.attention_pattern=LXG"], "model.attention_pattern", "L and G"),
    (["model.vocab_pad_multiple=0"], "model.vocab_pad_multiple", "> 0"),
    (["precision.fp8=tensorwise"], "precision.fp8", "Transformer Engine"),
    (["parallel.sequence_parallel=true"], "parallel.sequence_parallel", "tp > 1"),
    (["model.moe_top_k=9"], "model.moe_top_k", "num_experts=8"),
])
def test_bad_config_names_field(overrides, field, words):
    with pytest.raises(ConfigError) as err:
        load_recipe("tiny_cpu", overrides)
    assert err.value.field == field
    assert words in str(err.value)


def test_interleaved_pipeline_is_accepted():
    p = load_recipe("tiny_cpu", ["parallel.pp=2", "parallel.virtual_pp=2"]).parallel
    assert (p.pp, p.virtual_pp) == (2, 2)


@pytest.mark.parametrize("global_batch, micro, dp, vpp, ok", [
    (4, 1, 1, 2, True),  # 4 micro-batches on PP2: fine
    (6, 1, 1, 2, True),
    (8, 2, 2, 2, True),  # 2 micro-batches per DP rank
    (3, 1, 1, 2, False),  # megatron-core: remainder 1 < PP=2 ("dependency bubbles")
    (4, 2, 2, 2, False),  # 1 micro-batch per DP rank < PP ("should range in [PP, M]")
    (3, 1, 1, None, True),  # plain 1F1B takes any count
    (5, 2, 1, None, False),  # not a multiple of micro x dp
])
def test_batching_rules_of_the_pipeline_schedules(global_batch, micro, dp, vpp, ok):
    from exaone_train.config.validate import validate_batching

    overrides = ["parallel.pp=2"] + ([f"parallel.virtual_pp={vpp}"] if vpp else [])
    p = load_recipe("tiny_cpu", overrides).parallel
    if ok:
        assert validate_batching(global_batch, micro, dp, p) == global_batch // (micro * dp)
        return
    with pytest.raises(ConfigError) as err:
        validate_batching(global_batch, micro, dp, p)
    assert err.value.field == "train.global_batch_samples"
    assert ("multiple of parallel.pp=2" if vpp else "multiple of train.micro") in str(err.value)


def test_interleaved_build_needs_a_virtual_stage():
    from exaone_train.model.builder import build_model

    cfg = load_recipe("tiny_cpu", ["parallel.pp=2", "parallel.virtual_pp=2"])
    with pytest.raises(ValueError, match="vp_stage=None"):
        build_model(cfg.model, cfg.parallel, cfg.precision)


def test_distributed_optimizer_is_accepted():
    # the layer-wise distributed optimizer (optim/layer_wise.py) runs with Muon and AdamW
    for optim in ("tiny_muon_wsd", "adamw_wsd"):
        cfg = load_recipe("tiny_cpu", ["parallel.distributed_optimizer=true", f"optim={optim}"])
        assert cfg.parallel.distributed_optimizer
    cfg = load_recipe("tiny_cpu", ["model=kexaone_236b", "parallel=kexaone_64xh100"])
    assert cfg.parallel.distributed_optimizer


def test_unknown_key_is_config_error():
    with pytest.raises(ConfigError, match="model.bogus"):
        load_recipe("tiny_cpu", ["model.bogus=1"])


def test_vocab_padded_for_tp():
    from exaone_train.model.layout import padded_vocab_size

    m = load_recipe("tiny_cpu", ["model.vocab_size=4000"]).model
    assert padded_vocab_size(m, 1) == 4096
    assert padded_vocab_size(m, 2) == 4096
    assert padded_vocab_size(m, 4) == 4096
    assert padded_vocab_size(m, 8) == 4096
    assert padded_vocab_size(m, 3) == 4224  # multiple of 128*3


def test_context_parallel_runs_on_the_local_path():
    cfg = load_recipe("tiny_cpu", ["parallel.cp=2", "precision.transformer_impl=local"])
    assert cfg.parallel.cp == 2 and cfg.parallel.cp_comm_type == "all_gather"


@pytest.mark.parametrize("overrides, field, words", [
    (["parallel.cp=2", "train.seq_length_tokens=258"], "train.seq_length_tokens", "2*parallel.cp=4"),
    (["parallel.cp=3"], "train.seq_length_tokens", "2*parallel.cp=6"),  # 256 % 6
    (["parallel.cp_comm_type=ring"], "parallel.cp_comm_type", "must be one of"),
    (["parallel.cp=2", "parallel.cp_comm_type=a2a", "precision.transformer_impl=local"],
     "parallel.cp_comm_type", "'all_gather' only"),
    (["model=kexaone_236b", "parallel.tp=4", "parallel.sequence_parallel=true", "parallel.cp=2",
      "train.seq_length_tokens=12"], "train.seq_length_tokens", "parallel.tp=4"),
])
def test_bad_context_parallel_names_field(overrides, field, words):
    with pytest.raises(ConfigError) as err:
        load_recipe("tiny_cpu", overrides)
    assert err.value.field == field
    assert words in str(err.value)


@pytest.mark.parametrize("model, comm, cp, field, words", [
    # TE's ring CP has no sliding window; K-EXAONE / EXAONE 4.0 32B have window layers
    ("kexaone_236b", "p2p", 2, "parallel.cp_comm_type", "'all_gather' or 'a2a'"),
    ("exaone4_32b", "a2a+p2p", 2, "parallel.cp_comm_type", "'all_gather' or 'a2a'"),
    ("kexaone_236b", "a2a", 16, "parallel.cp", "num_query_groups=8"),  # Ulysses splits KV heads
])
def test_transformer_engine_context_parallel_rules(model, comm, cp, field, words):
    """The TE path's rules, checked directly (TE is not installed on the CPU CI)."""
    from exaone_train.config.validate import validate_context_parallel

    cfg = load_recipe("tiny_cpu", [f"model={model}"])
    cfg.parallel.cp, cfg.parallel.cp_comm_type = cp, comm
    with pytest.raises(ConfigError) as err:
        validate_context_parallel(cfg, local=False)
    assert err.value.field == field
    assert words in str(err.value)


def test_transformer_engine_context_parallel_accepts_all_gather_and_a2a():
    # fails (ConfigError) if the TE-path rules refuse a layout TE can run
    from exaone_train.config.validate import validate_context_parallel

    cfg = load_recipe("tiny_cpu", ["model=kexaone_236b", "parallel.cp=2"])
    for comm in ("all_gather", "a2a"):
        cfg.parallel.cp_comm_type = comm
        assert validate_context_parallel(cfg, local=False) is None
    cfg = load_recipe("tiny_cpu", ["model=exaone4_1p2b", "parallel.cp=2"])  # no window layers
    cfg.parallel.cp_comm_type = "p2p"
    assert validate_context_parallel(cfg, local=False) is None
