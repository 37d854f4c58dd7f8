"""`exaone-train convert from-hf / to-hf` and `exaone-train eval loss` end to end, in-process
through the real CLI entry point, on tiny random HF models; plus the model checkpoint format
and the errors a user sees for bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from exaone_train.export import tiny
from launcher.cli import main

CASES = {
    "kexaone_mtp": (lambda: tiny.kexaone_config(), True, "ExaoneMoeForCausalLM"),
    "kexaone_no_shared": (tiny.kexaone_no_shared_expert_config, False, "ExaoneMoeForCausalLM"),
    "exaone4_32b": (lambda: tiny.exaone4_config("32b"), False, "Exaone4ForCausalLM"),
    "exaone4_1p2b": (lambda: tiny.exaone4_config("1.2b"), False, "Exaone4ForCausalLM"),
}


def _hf_dir(tmp_path, case: str):
    make_config, with_mtp, _ = CASES[case]
    hf = tiny.build_hf_model(make_config())
    return hf, tiny.save_hf_model(hf, tmp_path / "hf", with_mtp=with_mtp)


@pytest.mark.parametrize("case", sorted(CASES))
def test_from_hf_to_hf_round_trip(case, tmp_path):
    """HF -> our checkpoint -> HF: identical tensors and names (mtp.* included), a config that
    transformers loads as the right class, and identical logits."""
    from transformers import AutoModelForCausalLM

    hf, hf_dir = _hf_dir(tmp_path, case)
    assert main(["convert", "from-hf", str(hf_dir), str(tmp_path / "ckpt")]) == 0
    assert (tmp_path / "ckpt" / "config.yaml").is_file()
    assert (tmp_path / "ckpt" / "model" / "metadata.json").is_file()
    assert main(["convert", "to-hf", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 0

    before, after = load_file(hf_dir / "model.safetensors"), load_file(tmp_path / "out" /
                                                                       "model.safetensors")
    assert sorted(before) == sorted(after)
    for key in before:
        assert torch.equal(before[key], after[key]), key
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager")
    assert type(exported).__name__ == CASES[case][2]
    for field in ("layer_types", "sliding_window", "tie_word_embeddings", "vocab_size",
                  "mlp_layer_types", "num_experts", "num_shared_experts"):
        assert getattr(exported.config, field, None) == getattr(hf.config, field, None), field
    ids = torch.randint(0, hf.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(exported(input_ids=ids).logits, hf(input_ids=ids).logits)


def test_eval_loss_matches_transformers(tmp_path, capsys):
    """`eval loss --json` equals transformers' own loss (labels=ids) on the same weights."""
    hf, hf_dir = _hf_dir(tmp_path, "kexaone_mtp")
    assert main(["convert", "from-hf", str(hf_dir), str(tmp_path / "ckpt")]) == 0
    tokens = np.random.RandomState(0).randint(0, hf.config.vocab_size, (2, 30))
    np.save(tmp_path / "tokens.npy", tokens)
    capsys.readouterr()
    assert main(["eval", "loss", str(tmp_path / "ckpt"), "--tokens",
                 str(tmp_path / "tokens.npy"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with torch.no_grad():
        ids = torch.from_numpy(tokens)
        ref = hf(input_ids=ids, labels=ids).loss.item()
    assert result["tokens"] == 2 * 29
    assert abs(result["loss"] - ref) <= 1e-5 * ref, (result["loss"], ref)


def test_eval_loss_accepts_one_dimensional_tokens(tmp_path, capsys):
    hf, hf_dir = _hf_dir(tmp_path, "exaone4_1p2b")
    assert main(["convert", "from-hf", str(hf_dir), str(tmp_path / "ckpt")]) == 0
    tokens = np.random.RandomState(1).randint(0, hf.config.vocab_size, (25,))
    np.save(tmp_path / "t.npy", tokens)
    capsys.readouterr()
    assert main(["eval", "loss", str(tmp_path / "ckpt"), "--tokens", str(tmp_path / "t.npy"),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with torch.no_grad():
        ids = torch.from_numpy(tokens)[None]
        assert abs(result["loss"] - hf(input_ids=ids, labels=ids).loss.item()) <= 1e-5 * 10


def test_model_checkpoint_reload_is_exact(tmp_path):
    """save_model_checkpoint -> load_model_checkpoint restores every tensor and the config."""
    from exaone_train.checkpoint.model_checkpoint import (
        load_model_checkpoint,
        save_model_checkpoint,
    )
    from exaone_train.config.load import load_recipe
    from exaone_train.model.builder import build_model
    from exaone_train.parallel import state

    cfg = load_recipe("tiny_cpu")
    state.setup(cfg.parallel, cfg.seed)
    try:
        model = build_model(cfg.model, cfg.parallel, cfg.precision)
        with torch.no_grad():  # make the expert bias (a buffer) nonzero too
            model.decoder.layers[1].mlp.router.expert_bias.normal_()
        save_model_checkpoint(model, cfg, tmp_path / "ck")
        with pytest.raises(Exception, match="not empty"):
            save_model_checkpoint(model, cfg, tmp_path / "ck")
        cfg2, loaded = load_model_checkpoint(tmp_path / "ck")
        assert cfg2 == cfg
        want, got = model.state_dict(), loaded.state_dict()
        for key, t in want.items():
            if isinstance(t, torch.Tensor):
                assert torch.equal(t, got[key]), key
    finally:
        state.teardown()


# ------------------------------------------------------------------ bad inputs


def _rewrite_tensors(hf_dir, edit) -> None:
    path = hf_dir / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor_is_named(tmp_path, capsys):
    _, hf_dir = _hf_dir(tmp_path, "kexaone_mtp")
    _rewrite_tensors(hf_dir, lambda t: t.pop("model.layers.2.mlp.experts.5.up_proj.weight"))
    assert main(["convert", "from-hf", str(hf_dir), str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err
    assert "CheckpointError" in err and "model.layers.2.mlp.experts.5.up_proj.weight" in err


def test_renamed_tensor_is_named(tmp_path, capsys):
    _, hf_dir = _hf_dir(tmp_path, "exaone4_32b")
    old, new = "model.layers.1.post_feedforward_layernorm.weight", "model.layers.1.ffn_norm.weight"
    _rewrite_tensors(hf_dir, lambda t: t.__setitem__(new, t.pop(old)))
    assert main(["convert", "from-hf", str(hf_dir), str(tmp_path / "ck")]) == 2
    assert old in capsys.readouterr().err


def test_unexpected_tensor_is_named(tmp_path, capsys):
    _, hf_dir = _hf_dir(tmp_path, "exaone4_32b")
    _rewrite_tensors(hf_dir, lambda t: t.__setitem__("model.layers.0.self_attn.q_proj.bias",
                                                      torch.zeros(64)))
    assert main(["convert", "from-hf", str(hf_dir), str(tmp_path / "ck")]) == 2
    assert "model.layers.0.self_attn.q_proj.bias" in capsys.readouterr().err


@pytest.mark.parametrize("field,value", [("n_group", 2), ("attention_bias", True),
                                         ("hidden_act", "gelu"),
                                         ("rope_parameters", {"rope_type": "yarn", "factor": 4.0,
                                                              "rope_theta": 1e4})])
def test_unmappable_config_field_is_named(field, value, tmp_path, capsys):
    _, hf_dir = _hf_dir(tmp_path, "kexaone_mtp")
    config = json.loads((hf_dir / "config.json").read_text())
    config[field] = value
    (hf_dir / "config.json").write_text(json.dumps(config))
    assert main(["convert", "from-hf", str(hf_dir), str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err
    assert "ConfigError" in err and field in err


def test_not_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["convert", "to-hf", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "config.yaml" in capsys.readouterr().err
    assert main(["convert", "from-hf", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "config.json" in capsys.readouterr().err


def test_eval_rejects_out_of_vocab_tokens(tmp_path, capsys):
    hf, hf_dir = _hf_dir(tmp_path, "exaone4_1p2b")
    assert main(["convert", "from-hf", str(hf_dir), str(tmp_path / "ckpt")]) == 0
    np.save(tmp_path / "bad.npy", np.array([[1, 2, hf.config.vocab_size]]))
    assert main(["eval", "loss", str(tmp_path / "ckpt"), "--tokens",
                 str(tmp_path / "bad.npy")]) == 2
    assert "DataError" in capsys.readouterr().err


def test_sharded_hf_output_loads_in_transformers(tmp_path):
    """Past the shard size, to-hf writes safetensors shards + index; transformers and our own
    reader both load them."""
    from transformers import AutoModelForCausalLM

    from exaone_train.export.hf_io import read_hf_tensors, write_hf_dir

    hf, hf_dir = _hf_dir(tmp_path, "exaone4_32b")
    tensors = load_file(hf_dir / "model.safetensors")
    write_hf_dir(tmp_path / "sharded", hf.config, tensors, "Exaone4ForCausalLM",
                 max_shard_bytes=100_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    again = read_hf_tensors(tmp_path / "sharded")
    assert sorted(again) == sorted(tensors)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded", attn_implementation="eager")
    ids = torch.arange(12)[None]
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, hf(input_ids=ids).logits)


def test_conversion_never_builds_transformer_engine(tmp_path, monkeypatch):
    """Issue 14 item 8: on a node with Transformer Engine and CUDA, `auto` picks TE and its
    grouped experts (weights `experts.linear_fc1.weight{e}`, which mapping.py does not name).
    That node is simulated by making `use_transformer_engine` answer as it would there (TE
    itself cannot run here); conversion must still build the local spec both ways, and the
    checkpoint keeps the user's `auto` for whoever loads it."""
    from exaone_train.checkpoint.model_checkpoint import read_config
    from exaone_train.config.schema import PrecisionConfig
    from exaone_train.errors import ConfigError
    from exaone_train.export.convert import convert_from_hf
    from exaone_train.model import builder

    asked = []

    def te_node_answer(precision):
        asked.append(precision.transformer_impl)
        return precision.transformer_impl != "local"

    monkeypatch.setattr(builder, "use_transformer_engine", te_node_answer)
    _, hf_dir = _hf_dir(tmp_path, "kexaone_mtp")
    assert main(["convert", "from-hf", str(hf_dir), str(tmp_path / "ckpt")]) == 0
    assert main(["convert", "to-hf", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 0
    assert asked and set(asked) == {"local"}, asked
    assert read_config(tmp_path / "ckpt").precision.transformer_impl == "auto"
    with pytest.raises(ConfigError, match="precision.transformer_impl"):
        convert_from_hf(hf_dir, tmp_path / "ck2", PrecisionConfig(transformer_impl="transformer_engine"))
