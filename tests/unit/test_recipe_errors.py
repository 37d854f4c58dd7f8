"""A recipe mistake is one clear ConfigError, raised once before anything is built or written,
by `train` and by `plan` / `launch --dry-run` alike: every rule of validate() (optim,
checkpoint, data stage, batching), Hydra's type and key errors said with the field and what
was expected (with "did you mean"), keys the schema does not have refused even with '+', and
a run.dir that is a file named as such."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from exaone_train.config.load import compose_recipe, load_recipe
from exaone_train.errors import ConfigError
from launcher.cli import main

RULES = [("optim.lr_peak=-1", "optim.lr_peak"),
         ("checkpoint.keep_last=0", "checkpoint.keep_last"),
         ("train.data_stage=nope", "train.data_stage"),
         ("train.global_batch_samples=7", "train.global_batch_samples"),
         ("train.data_source=files", "train.data_source")]


@pytest.mark.parametrize(("override", "field"), RULES)
def test_train_refuses_before_building_or_writing_anything(tmp_path, capsys, override, field):
    run_dir = tmp_path / "run"
    assert main(["train", f"run.dir={run_dir}", "logging.wandb=false", override]) == 2
    assert f"ConfigError: {field}=" in capsys.readouterr().err
    assert not run_dir.exists()  # no config.yaml, no run_info.json, no model was built


@pytest.mark.parametrize(("override", "field"), RULES[:3])
def test_plan_and_launch_dry_run_refuse_the_same(capsys, override, field):
    assert main(["plan", override]) == 2
    assert f"ConfigError: {field}=" in capsys.readouterr().err
    assert main(["launch", "--dry-run", "--nproc-per-node", "1", override]) == 2
    assert f"ConfigError: {field}=" in capsys.readouterr().err
    assert main(["launch", "--dry-run", override]) == 2  # auto processes: the recipe still
    assert f"ConfigError: {field}=" in capsys.readouterr().err


def test_plan_takes_a_long_stage_length_and_a_recipe_without_data():
    # the data stage's own length binds `train`, not a plan of another length
    assert main(["plan", "--recipe", "kexaone_236b", "train.seq_length_tokens=32768"]) == 0
    assert main(["plan", "--recipe", "exaone4_32b"]) == 0  # no data: section at all
    with pytest.raises(ConfigError, match="train.data_stage"):
        load_recipe("exaone4_32b", [])  # ... which `train` refuses


@pytest.mark.parametrize(("override", "field", "words"), [
    ("parallel.tp=two", "parallel.tp", "expected an integer"),
    ("train.train_steps=1.5", "train.train_steps", "expected an integer or null"),
    ("parallel.sequence_parallel=maybe", "parallel.sequence_parallel", "expected true or false"),
    ("parallel.tpp=2", "parallel.tpp", "did you mean parallel.tp"),
    ("model.hidden_sizee=3", "model.hidden_sizee", "did you mean model.hidden_size"),
    ("+parallel.tpp=2", "parallel.tpp", "did you mean parallel.tp"),
    ("+extra.foo=1", "extra", "is not a key of the recipe"),
    ("+data.stages.pretrain.shufle=false", "data.stages.pretrain.shufle",
     "did you mean data.stages.pretrain.shuffle"),
    ("optim=adamw_wsdd", "optim", "did you mean adamw_wsd"),
])
def test_hydra_errors_name_the_field_and_what_was_expected(override, field, words):
    with pytest.raises(ConfigError) as e:
        compose_recipe("tiny_cpu", [override])
    assert e.value.field == field
    assert words in str(e.value)
    assert "To append to your config use" not in str(e.value)  # Hydra's '+' advice is wrong


def test_keys_of_dict_sections_may_be_added():
    cfg = compose_recipe("tiny_cpu", ["+optim.class_lr_multipliers.embedding=0.5"])
    assert cfg.optim.class_lr_multipliers.embedding == 0.5


@pytest.mark.parametrize("inside", [False, True])
def test_run_dir_that_is_a_file_is_a_config_error(tmp_path, capsys, inside):
    f = tmp_path / "file"
    f.write_text("not a directory")
    run_dir = f / "run" if inside else f
    argv = ["train", f"run.dir={run_dir}", "logging.wandb=false", "train.data_source=synthetic"]
    assert main(argv) == 2
    assert f"ConfigError: run.dir='{run_dir}': {f} is a file" in capsys.readouterr().err


def test_checkpoints_saved_with_retired_settings_still_read(tmp_path):
    """`extra`, `train.eval_interval_steps`, `run.name` were never read and left the schema;
    a config.yaml written before (every checkpoint's) still loads."""
    from exaone_train.checkpoint.model_checkpoint import read_config

    cfg = OmegaConf.to_container(compose_recipe("tiny_cpu", []))
    cfg["extra"] = {"converted_from": "/somewhere"}
    cfg["train"]["eval_interval_steps"] = 0
    cfg["run"]["name"] = "run"
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert read_config(tmp_path).model.name == "tiny_kexaone"


@pytest.mark.parametrize(("argv", "words"), [
    (["convert", "from-hf", "{missing}", "{tmp}/out"], "no config.json (not a Hugging Face"),
    (["convert", "to-hf", "{missing}", "{tmp}/out"], "no config.yaml (not a model checkpoint)"),
    (["data", "merge", "shipped_corpus", "build.output_dir={missing}"], "no partial manifests"),
])
def test_a_missing_directory_is_one_line_naming_it(tmp_path, capsys, argv, words):
    """What a user types first by mistake: the path, what is missing, no traceback (`niah` on a
    run without a checkpoint: test_niah.py)."""
    missing = tmp_path / "nope"
    assert main([a.format(missing=missing, tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: {words}" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
