"""Every tensor a rank hands to a torch.distributed collective or to the model's forward, and
every parameter and buffer, is on `state.device()`: one training step (checkpoint cadence
check, MoE statistics, a checkpoint save), a validation pass and a NIAH sample, recorded at the
dispatcher (`DeviceRecorder`). On this CPU machine that device is the CPU; tests/gpu runs the
same scenario on a GPU, where a CPU tensor in an NCCL collective or a CPU batch would fail."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from exaone_train.config.load import load_recipe
from exaone_train.parallel import state
from exaone_train.parallel.testing import DeviceRecorder

# each of these runs at least once in the scenario (ours: loss, checkpoint decisions, MoE
# statistics; megatron's: schedule, grad finalisation; the object collectives of a save)
EXPECTED_COLLECTIVES = {"c10d.allreduce_.default", "c10d.barrier.default"}


@pytest.fixture(autouse=True)
def _teardown():
    yield
    state.teardown()


def run_scenario(tmp_path, *overrides: str) -> DeviceRecorder:
    """Train one step (saving a checkpoint at its end), run a validation pass and one NIAH
    sample on the tiny recipe, all under a DeviceRecorder."""
    from exaone_train.curriculum.config import ValidationConfig
    from exaone_train.eval.niah import run_niah
    from exaone_train.eval.niah_config import NiahConfig
    from exaone_train.eval.validation import build_validation_data, validation_loss
    from exaone_train.train import trainer as T

    cfg = load_recipe("tiny_cpu", [f"run.dir={tmp_path}/run", "logging.wandb=false",
                                   "train.data_source=synthetic", "train.seq_length_tokens=128",
                                   "train.global_batch_samples=4", "train.train_steps=2",
                                   "checkpoint.interval_steps=1", *overrides])
    state.setup(cfg.parallel, cfg.seed)
    t = T.Trainer(cfg, T.prepare_run_dir(cfg))
    v = ValidationConfig(data_stage="pretrain", num_samples=2)
    data = build_validation_data(v, cfg)
    with DeviceRecorder(t.model) as rec:
        t.start()
        result = t.train_one_step()  # + callbacks: MoEStats, the checkpoint decision and save
        t.end()
        loss = validation_loss(t, v, data)
        report = run_niah(t, NiahConfig(lengths=[128], depths=[0.5], samples_per_cell=1),
                          tmp_path, "devices")
    assert not result.skipped and torch.isfinite(torch.tensor([result.loss, loss])).all()
    assert t.checkpointing.manager.last_saved_step == 1 and len(report.samples) == 1
    return rec


def assert_all_on_rank_device(rec: DeviceRecorder) -> None:
    device = state.device()
    assert rec.misplaced(device) == []
    seen = {name for name, _ in rec.collectives}
    assert EXPECTED_COLLECTIVES <= seen, seen
    # micro-batches of the step (2), of validation (1) and of NIAH (1)
    assert rec.forward_calls >= 4 and len(rec.forwards) >= 4 * rec.forward_calls
    assert rec.state


def test_step_validation_niah_and_save_stay_on_the_rank_device(tmp_path):
    rec = run_scenario(tmp_path)
    assert state.device() == torch.device("cpu")
    assert_all_on_rank_device(rec)


def test_recorder_reports_tensors_on_another_device():
    """The recorder itself can fail: a forward input and a collective's tensor on the meta
    device are both reported."""
    state.init_distributed()
    layer = torch.nn.Identity()
    with DeviceRecorder([layer]) as rec:
        layer(torch.ones(1, 2, device="meta"))
        dist.all_reduce(torch.empty(2, device="meta"))  # a world of one: gloo never reads it
    kinds = {(kind, d.type) for kind, _, d in rec.misplaced(torch.device("cpu"))}
    assert kinds == {("forward", "meta"), ("collective", "meta")}
