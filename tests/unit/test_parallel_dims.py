"""ParallelDims: the layout's derived sizes and its rules, one home for what validate(), the
curriculum plan, NIAH, `plan` and the process-group setup check (their own error tests, e.g.
test_config_validate / test_plan / test_curriculum_plan, assert the messages in context)."""

from __future__ import annotations

import dataclasses

import pytest

from exaone_train.config.load import load_recipe
from exaone_train.errors import ConfigError
from exaone_train.eval.niah import validate_niah
from exaone_train.eval.niah_config import NiahConfig
from exaone_train.parallel.dims import ParallelDims
from launcher.resource_plan import load_for_plan, make_plan


def test_sizes_follow_megatron_order():
    # K-EXAONE 236B's published layout on 8 nodes: TP4 PP8 EP8 (expert_tp 1), 64 GPUs
    d = ParallelDims(tp=4, pp=8, cp=1, ep=8, etp=1, sequence_parallel=True, world_size=64)
    assert (d.model_parallel, d.dp, d.expert_dp) == (32, 2, 1)
    assert d.world_rule() is None and d.expert_rule() is None
    assert d.describe() == "tp4 pp8 cp1 ep8 dp2"
    assert ParallelDims(tp=2, cp=2).describe() == "tp2 pp1 cp2 ep1"  # world unknown: no dp


def test_world_and_expert_rules_name_the_numbers():
    assert ParallelDims(tp=4, pp=8, world_size=48).world_rule() == (
        "parallel.tp*pp*cp = 4*8*1 = 32 must divide the world size 48")
    with pytest.raises(ConfigError) as e:
        ParallelDims(tp=4, pp=8, ep=16, world_size=64).check_world(moe=True)
    assert e.value.field == "parallel.ep" and "DP*CP*TP = 2*1*4 = 8" in str(e.value)
    ParallelDims(tp=4, pp=8, ep=16, world_size=64).check_world(moe=False)  # dense: no experts


@pytest.mark.parametrize("dims, seq, broken", [
    (ParallelDims(cp=2), 258, "2*parallel.cp=4"),  # 258 % 4
    (ParallelDims(cp=2), 260, None),
    (ParallelDims(tp=2, cp=2, sequence_parallel=True), 12, None),  # 6 tokens per CP rank / 2
    (ParallelDims(tp=4, cp=2, sequence_parallel=True), 12, "each CP rank's 6 tokens"),
    (ParallelDims(tp=4, sequence_parallel=True), 10, "its tokens must split over parallel.tp=4"),
    (ParallelDims(tp=4), 10, None),  # without sequence parallelism TP does not cut the sequence
])
def test_sequence_length_rule(dims, seq, broken):
    rule = dims.seq_rule(seq)
    assert (rule is None) if broken is None else (broken in rule), rule


def test_every_caller_applies_the_same_length_rule(tmp_path):
    """validate() (train length), NIAH (its lengths) and `plan` (its --seq-len) refuse the same
    length with the same rule. NIAH used to ask for a multiple of 2*cp*tp (8 under CP2 TP2 with
    sequence parallelism) and refused 12, a length training runs (6 tokens per CP rank, 3 per
    TP rank)."""
    over = ["parallel.tp=2", "parallel.cp=2", "parallel.sequence_parallel=true",
            "model.num_experts=null"]
    with pytest.raises(ConfigError, match=r"train.seq_length_tokens=258: must be divisible by "
                       r"2\*parallel.cp=4"):
        load_recipe("tiny_cpu", [f"run.dir={tmp_path}", "train.seq_length_tokens=258", *over])
    recipe = load_recipe("tiny_cpu", [f"run.dir={tmp_path}", *over])
    validate_niah(NiahConfig(lengths=[12]), recipe)  # 12 % 4 == 0, 6 % 2 == 0
    with pytest.raises(ConfigError, match=r"niah.lengths.*10: must be divisible by 2\*parallel"):
        validate_niah(NiahConfig(lengths=[10]), recipe)
    cfg = load_for_plan("tiny_cpu", over)
    with pytest.raises(ConfigError, match=r"seq_len_tokens=258: must be divisible by 2\*parallel"):
        make_plan(cfg, 4, gpus_per_node=4, seq_len_tokens=258)
    sp_only = dataclasses.replace(recipe.parallel, cp=1)
    assert ParallelDims.of(sp_only).seq_rule(recipe.train.seq_length_tokens) is None
