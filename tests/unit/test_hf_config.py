"""HF config <-> ModelConfig: every layout the HF classes accept maps (explicit lists where no
pattern fits), the reverse gives back the same HF layout, and what cannot be mapped is a
ConfigError naming the field."""

from __future__ import annotations

import dataclasses

import pytest

from exaone_train.config.validate import validate_model
from exaone_train.errors import ConfigError
from exaone_train.export import tiny
from exaone_train.export.convert import model_config_for_hf
from exaone_train.export.hf_config import hf_config_to_model_config, model_config_to_hf_config
from exaone_train.model.layout import layer_types, moe_layers, rope_skipped


def test_pattern_kept_when_it_repeats_explicit_list_otherwise():
    eight = hf_config_to_model_config(tiny.exaone4_config("32b", num_hidden_layers=8))
    assert eight.attention_pattern == "LLLG" and eight.layer_types is None
    five = hf_config_to_model_config(tiny.kexaone_config(num_hidden_layers=5))
    assert five.layer_types == ["sliding_attention"] * 3 + ["full_attention", "sliding_attention"]
    for m in (eight, five):
        validate_model(m)
        assert rope_skipped(m)[: m.num_layers] == [t == "full_attention" for t in layer_types(m)]


def test_mlp_layer_types_and_first_k_dense():
    k2 = hf_config_to_model_config(tiny.kexaone_config(first_k_dense_replace=2))
    assert k2.moe_first_k_dense == 2 and k2.moe_layer_types is None
    assert moe_layers(k2) == [False, False, True, True, True]
    kinds = ["sparse", "dense", "sparse", "sparse", "dense"]
    mixed = hf_config_to_model_config(tiny.kexaone_config(mlp_layer_types=kinds))
    assert moe_layers(mixed) == [k == "sparse" for k in kinds]
    validate_model(mixed)


def test_rope_everywhere_iff_no_sliding_window():
    small = hf_config_to_model_config(tiny.exaone4_config("1.2b"))
    assert small.rope_on_global_layers and small.sliding_window_tokens is None
    assert not any(rope_skipped(small))
    big = hf_config_to_model_config(tiny.exaone4_config("32b"))
    assert not big.rope_on_global_layers


@pytest.mark.parametrize("make", [lambda: tiny.kexaone_config(),
                                  lambda: tiny.kexaone_config(mlp_layer_types=["dense", "sparse",
                                                              "dense", "sparse", "sparse"]),
                                  lambda: tiny.exaone4_config("32b"),
                                  lambda: tiny.exaone4_config("1.2b")])
def test_hf_config_round_trip(make):
    hf = make()
    back = model_config_to_hf_config(hf_config_to_model_config(hf))
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "head_dim", "layer_types",
                  "sliding_window", "tie_word_embeddings", "rms_norm_eps", "rope_parameters",
                  "mlp_layer_types", "moe_intermediate_size", "num_experts",
                  "num_experts_per_tok", "num_shared_experts", "routed_scaling_factor",
                  "norm_topk_prob", "max_position_embeddings"):
        assert getattr(back, field, None) == getattr(hf, field, None), field


def test_mtp_follows_the_weights_present():
    hf = tiny.kexaone_config(num_nextn_predict_layers=1)
    assert model_config_for_hf(hf, ["model.norm.weight"], "x").mtp_num_layers == 0
    assert model_config_for_hf(hf, ["mtp.fc.weight"], "x").mtp_num_layers == 1
    assert model_config_for_hf(tiny.kexaone_config(), ["mtp.fc.weight"], "x").mtp_num_layers == 1


@pytest.mark.parametrize("overrides,field", [
    (dict(n_group=2, topk_group=1), "n_group"),
    (dict(topk_group=2), "topk_group"),
    (dict(norm_topk_prob=False), "norm_topk_prob"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(num_nextn_predict_layers=2), "num_nextn_predict_layers"),
    (dict(mtp_layer_types=["sliding_attention"]), "mtp_layer_types"),
    (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
     "rope_parameters.rope_type"),
    (dict(attention_dropout=0.1), "attention_dropout"),
    (dict(sliding_windows=[4, 4, 8, 0, 4]), "sliding_windows"),
    (dict(sliding_windows=[4, 4, 4, 4, 4]), "sliding_windows"),
    (dict(swiglu_limits=[7.0] * 5), "swiglu_limits"),
    (dict(num_nextn_predict_layers=1, mtp_num_speculative_steps=3), "mtp_num_speculative_steps"),
])
def test_unmappable_hf_fields_are_named(overrides, field):
    with pytest.raises(ConfigError) as err:
        hf_config_to_model_config(tiny.kexaone_config(**overrides))
    assert err.value.field == field


def test_consistent_per_layer_windows_are_accepted():
    m = hf_config_to_model_config(tiny.kexaone_config(sliding_windows=[8, 8, 8, 0, 8]))
    assert m.sliding_window_tokens == 8


def test_bias_in_config_json_is_refused():
    config = tiny.exaone4_config("32b").to_dict()
    config["attention_bias"] = True
    with pytest.raises(ConfigError) as err:
        hf_config_to_model_config(config)
    assert err.value.field == "attention_bias"


def test_unexportable_recipes_are_named():
    kexaone = hf_config_to_model_config(tiny.kexaone_config())
    exaone4 = hf_config_to_model_config(tiny.exaone4_config("32b"))
    cases = [
        (dataclasses.replace(kexaone, norm_placement="qk_reorder"), "model.norm_placement"),
        (dataclasses.replace(kexaone, rope_on_global_layers=True), "model.rope_on_global_layers"),
        (dataclasses.replace(kexaone, moe_shared_expert_ffn_hidden_size=24),
         "model.moe_shared_expert_ffn_hidden_size"),
        (dataclasses.replace(exaone4, rope_on_global_layers=True), "model.rope_on_global_layers"),
        (dataclasses.replace(exaone4, mtp_num_layers=1), "model.mtp_num_layers"),
    ]
    for m, field in cases:
        with pytest.raises(ConfigError) as err:
            model_config_to_hf_config(m)
        assert err.value.field == field
