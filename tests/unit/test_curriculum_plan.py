"""The curriculum plan: every broken rule is a ConfigError naming the field (as a Hydra override
path) before anything starts; the shipped curricula plan; one WSD spans the curriculum."""

import pytest

from exaone_train.config.load import load_recipe
from exaone_train.curriculum.stages import format_curriculum, plan_curriculum
from exaone_train.errors import ConfigError
from exaone_train.optim.schedule import lr_at, lr_factor_at
from launcher.resource_plan import load_for_plan

S = "curriculum.stages"


def _plan(overrides, world_size=None):
    return plan_curriculum(load_recipe("tiny_cpu", overrides), world_size)


@pytest.mark.parametrize("overrides, field, words", [
    ([f"{S}.1.data_stage=nope"], f"{S}.1.data_stage", "not one of data.stages"),
    ([f"{S}.1.seq_length_tokens=512"], f"{S}.1.seq_length_tokens",
     "data.stages.domain.seq_length=256"),
    ([f"{S}.2.name=domain"], S, "unique"),
    ([f"{S}.2.name=a/b"], f"{S}.2.name", "names files"),
    ([f"{S}.0.train_tokens=1000"], f"{S}.0.train_tokens", "exactly one"),
    ([f"{S}.0.train_steps=null"], f"{S}.0.train_tokens", "exactly one"),
    ([f"{S}.0.micro_batch_samples=3"], f"{S}.0.global_batch_samples", "multiple of"),
    ([f"{S}.3.parallel.cp=3"], f"{S}.3.seq_length_tokens", "2*parallel.cp=6"),
    ([f"{S}.3.parallel.context=2"], f"{S}[3].parallel.context", "is not a key of section"),
    ([f"{S}.1.gate.on_fail=maybe"], f"{S}.1.gate.on_fail", "retry, stop, continue"),
    ([f"{S}.1.gate.retry_tokens=null"], f"{S}.1.gate.retry_tokens", "retry needs"),
    ([f"{S}.1.gate.max_retries=0"], f"{S}.1.gate.max_retries", "max_retries >= 1"),
    ([f"{S}.4.gate.on_fail=retry", f"{S}.4.gate.max_retries=1", f"{S}.4.gate.retry_tokens=8"],
     f"{S}.4.gate.on_fail", "LR"),  # retries would train at the end of the decay: LR 0
    (["curriculum.validation.data_stage=null"], f"{S}.1.gate.max_short_loss_increase",
     "validation.data_stage"),
    (["curriculum.validation.data_stage=foundation"], "curriculum.validation.first_sample",
     "samples [0, 192)"),  # foundation trains on samples 0..191: not held out
    (["optim.schedule.total_tokens=1000"], "optim.schedule.total_tokens", "must be null"),
    (["curriculum.decay_stage=nope"], "curriculum.decay_stage", "not one of the stages"),
    (["curriculum.decay_stage=domain", f"{S}.1.gate.on_fail=stop"], "optim.schedule.lr_min_ratio",
     "LR 0"),
    ([f"{S}.4.parallel.cp=2", "checkpoint.enabled=false"], "checkpoint.enabled",
     "changes the parallel layout"),
    (["curriculum.stages=[]"], S, "at least one stage"),
])
def test_bad_curriculum_names_field(overrides, field, words):
    with pytest.raises(ConfigError) as err:  # composing (Hydra) or planning
        _plan(overrides)
    assert err.value.field == field, err.value
    assert words in str(err.value)


@pytest.mark.parametrize("overrides, world, field, words", [
    ([f"{S}.3.parallel.cp=2"], 1, f"{S}.3.parallel", "divide the world size 1"),
    ([], 3, f"{S}.0.global_batch_samples", "data-parallel size 3"),
    (["curriculum.validation.num_samples=6"], 2, "curriculum.validation.num_samples",
     "data-parallel size 2"),
])
def test_world_size_rules(overrides, world, field, words):
    with pytest.raises(ConfigError) as err:
        _plan(overrides, world)
    assert err.value.field == field and words in str(err.value)


def test_niah_lengths_within_the_stage():
    from exaone_train.eval.niah_config import NiahConfig

    cfg = load_recipe("tiny_cpu", [])
    cfg.curriculum.stages[1].gate.niah = NiahConfig(lengths=[128, 512])
    with pytest.raises(ConfigError) as err:
        plan_curriculum(cfg)
    assert err.value.field == f"{S}.1.gate.niah.lengths" and "seq_length=256" in str(err.value)
    with pytest.raises(ConfigError, match="null"):  # OmegaConf cannot fill a null section
        load_recipe("tiny_cpu", [f"{S}.1.gate.niah.lengths=[128]"])


def test_tiny_plan_one_schedule_over_the_curriculum():
    plan = _plan([], world_size=2)
    assert [s.name for s in plan.stages] == ["foundation", "domain", "reasoning", "ctx_1k",
                                             "ctx_4k"]
    assert [s.steps for s in plan.stages] == [24, 8, 8, 6, 3]
    assert [s.start_tokens for s in plan.stages] == [0, 49152, 65536, 81920, 106496]
    sched = plan.optim.schedule
    assert sched.total_tokens == plan.total_tokens == 131072
    for st in plan.stages:  # every stage trains under the one filled schedule
        assert st.recipe.optim == plan.optim
        assert st.recipe.train.train_tokens == st.tokens and st.recipe.train.train_steps is None
    # train_tokens rounds up to whole steps; a retry holds the stage's end
    p2 = _plan([f"{S}.0.train_steps=null", f"{S}.0.train_tokens=5000"])
    assert p2.stages[0].steps == 3 and p2.stages[1].start_tokens == 3 * 2048
    assert plan.stages[1].target_tokens(1) == 16384 + 8192


def test_decay_stage_spans_that_stage_and_later_stages_train_at_lr_min():
    plan = _plan(["curriculum.decay_stage=reasoning", "optim.schedule.lr_min_ratio=0.1"])
    sched, reasoning = plan.optim.schedule, plan.stages[2]
    assert sched.total_tokens == reasoning.end_tokens and sched.decay_tokens == reasoning.tokens
    assert lr_factor_at(reasoning.start_tokens - 1, sched) == 1.0
    assert lr_factor_at(reasoning.end_tokens, sched) == pytest.approx(0.1)
    for st in plan.stages[3:]:
        assert lr_at(st.start_tokens, plan.optim) == lr_at(st.end_tokens, plan.optim) == \
            pytest.approx(0.1 * plan.optim.lr_peak)


def test_kexaone_curriculum_shape():
    cfg = load_for_plan("kexaone_236b", [])
    plan = plan_curriculum(cfg)
    seqs = [s.recipe.train.seq_length_tokens for s in plan.stages]
    assert seqs == [8192, 8192, 8192, 32768, 262144]
    # the extension stages are `parallel: {auto: true}`: layout-free checks only until the
    # world size is known (the layout search resolves them: tests/unit/test_layout_search.py)
    assert [s.parallel.auto for s in cfg.curriculum.stages] == [False] * 3 + [True] * 2
    assert plan.optim.schedule.total_tokens == plan.stages[2].end_tokens  # decay in reasoning
    assert all(s.gate.niah is not None and s.gate.on_fail == "retry" for s in plan.stages[3:])
    blends = {n: {c.name: c.weight for c in cfg.data.stages[n].blend}
              for n in ("ctx_32k", "ctx_256k")}
    assert blends["ctx_256k"]["rehearsal"] < blends["ctx_32k"]["rehearsal"]
    assert blends["ctx_256k"]["long_docs"] > blends["ctx_32k"]["long_docs"]
    assert "ctx_256k" in format_curriculum(plan)
    with pytest.raises(ConfigError, match="resolve") as e:
        plan_curriculum(cfg, world_size=64)
    assert e.value.field == "curriculum.stages.3.parallel.auto"


def test_plan_cli_shows_each_stage(capsys):
    import json

    from launcher.cli import main

    assert main(["plan", "--recipe", "kexaone_236b", "--nodes", "64", "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)["curriculum"]["stages"]
    assert [s["dp"] for s in stages][:3] == [16, 16, 16] and all(s["fits"] for s in stages)
    assert [("layout_search" in s) for s in stages] == [False] * 3 + [True] * 2
    assert main(["plan", "--recipe", "kexaone_236b", "--nodes", "8"]) == 0
    out = capsys.readouterr().out
    assert "ctx_256k" in out and "cannot run here" not in out and "DOES NOT FIT" not in out
    assert out.count("(parallel: auto)") == 2
