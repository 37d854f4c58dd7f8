"""Training checkpoints on one process: exact round trip of model, optimizer and train state;
verification skips a corrupt newest checkpoint; another model's checkpoint is refused with
the keys and shapes named; a read-only or full disk is a clear error that leaves older
checkpoints intact; retention keeps the newest N and every stage-final one; the wall-clock
cadence saves; bad settings are ConfigErrors."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess

import pytest
import torch

from exaone_train.checkpoint import optimizer_state, verify
from exaone_train.checkpoint.manager import CheckpointManager
from exaone_train.config.load import load_recipe
from exaone_train.errors import CheckpointError, ConfigError
from exaone_train.parallel import state
from exaone_train.train import trainer as T

TINY = ["logging.wandb=false", "train.data_source=synthetic", "train.seq_length_tokens=32",
        "train.global_batch_samples=2", "train.micro_batch_samples=2",
        "optim.schedule.total_tokens=100000"]


@pytest.fixture(autouse=True)
def _teardown():
    yield
    state.teardown()


def _trainer(run_dir, *extra) -> T.Trainer:
    cfg = load_recipe("tiny_cpu", [f"run.dir={run_dir}", *TINY, *extra])
    state.setup(cfg.parallel, cfg.seed)
    return T.Trainer(cfg, T.prepare_run_dir(cfg))


def _steps(t: T.Trainer, n: int) -> None:
    for _ in range(n):
        t.train_one_step()


def test_roundtrip_restores_model_optimizer_and_train_state_exactly(tmp_path, capfd):
    a = _trainer(tmp_path / "run", "checkpoint.interval_steps=0")
    _steps(a, 3)
    a.checkpointing.manager.save(a)
    assert "checkpoint write iter_0000003" in capfd.readouterr().err  # progress on rank 0
    params = {n: p.detach().clone() for n, p in a.model[0].named_parameters()}
    opt = {i: {k: v.clone() for k, v in a.optimizer.optimizer.state[p].items()}
           for i, (_, p) in enumerate(optimizer_state.param_pairs(a.optimizer))}
    guard = a.guard.state_dict()
    assert any("momentum_buffer" in s for s in opt.values())  # Muon state is there
    assert any(float(s.get("step", 0)) == 3 for s in opt.values())  # and AdamW's
    state.teardown()
    b = _trainer(tmp_path / "run", "checkpoint.interval_steps=0")  # resumes in __init__
    shown = capfd.readouterr().err
    assert "checkpoint verify iter_0000003: 100%" in shown and "checkpoint load iter_0000003" in shown
    assert (b.step, b.consumed_samples, b.consumed_tokens) == (3, 6, 6 * 32)
    for n, p in b.model[0].named_parameters():
        assert torch.equal(p, params[n]), n
    for i, (_, p) in enumerate(optimizer_state.param_pairs(b.optimizer)):
        for k, v in opt[i].items():
            assert torch.equal(b.optimizer.optimizer.state[p][k], v), (i, k)
    assert b.guard.state_dict() == guard
    train_state = json.loads((tmp_path / "run/checkpoints/iter_0000003/train_state.json")
                             .read_text())
    assert train_state["stages"]["main"]["consumed_tokens"] == 6 * 32


def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(tmp_path, caplog):
    t = _trainer(tmp_path / "run", "checkpoint.interval_steps=0", "checkpoint.keep_last=5")
    m = t.checkpointing.manager
    _steps(t, 1)
    m.save(t)
    _steps(t, 1)
    newest = m.save(t)
    assert m.latest_valid() == newest
    # flip one byte of a tensor file: same size, so only the checksum can tell
    shard = sorted((newest / "model").glob("*.distcp"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="exaone_train"):
        assert m.latest_valid() == tmp_path / "run/checkpoints/iter_0000001"
    assert "iter_0000002" in caplog.text and "sha256" in caplog.text
    # a directory without a manifest (an interrupted save) is never a checkpoint
    (tmp_path / "run/checkpoints/iter_0000009").mkdir()
    assert m.latest_valid() == tmp_path / "run/checkpoints/iter_0000001"
    assert verify.verify(tmp_path / "run/checkpoints/iter_0000009")[0].endswith(
        "missing or unreadable (incomplete save)")


@pytest.mark.parametrize("how", ["checkpoint.load_from={ckpt}", "train.init_from={ckpt}/model"])
def test_checkpoint_of_another_model_names_keys_and_shapes(tmp_path, how):
    """Resuming (`checkpoint.load_from`) and initialising (`train.init_from`) go through the
    same check: the keys and shapes, not DCP's 50-line exception or an 8 KB KeyError."""
    t = _trainer(tmp_path / "a", "checkpoint.interval_steps=0")
    _steps(t, 1)
    path = t.checkpointing.manager.save(t)
    state.teardown()
    with pytest.raises(CheckpointError) as e:
        _trainer(tmp_path / "b", how.format(ckpt=path), "model.ffn_hidden_size=96")
    msg = str(e.value)
    assert "another model" in msg and "decoder.layers.0.mlp.linear_fc1.weight" in msg
    assert "(384, 64)" in msg and "(192, 64)" in msg  # gated fc1: 2 x ffn rows
    assert len(msg) < 2000


def _mount_tmpfs(path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_read_only_checkpoint_dir_is_a_clear_error_and_keeps_older(tmp_path):
    t = _trainer(tmp_path / "run", "checkpoint.interval_steps=0")
    ckpts = tmp_path / "run" / "checkpoints"
    root = os.geteuid() == 0
    if root and not _mount_tmpfs(ckpts, "64m"):
        pytest.skip("running as root without mount: cannot make a directory read-only")
    try:
        _steps(t, 1)
        older = t.checkpointing.manager.save(t)
        if root:
            subprocess.run(["mount", "-o", "remount,ro", str(ckpts)], check=True)
        else:
            ckpts.chmod(0o555)
        _steps(t, 1)
        with pytest.raises(CheckpointError, match="read-only"):
            t.checkpointing.manager.save(t)
        assert verify.verify(older) == []
        assert (ckpts / "latest").read_text().strip() == older.name
    finally:
        if root:
            subprocess.run(["umount", str(ckpts)])
        else:
            ckpts.chmod(0o755)


def test_full_disk_is_a_clear_error_and_keeps_older(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs a small tmpfs mount (root)")
    ckpts = tmp_path / "run" / "checkpoints"
    if not _mount_tmpfs(ckpts, "14m"):  # one tiny checkpoint is 9.5 MB
        pytest.skip("cannot mount tmpfs")
    try:
        t = _trainer(tmp_path / "run", "checkpoint.interval_steps=0")
        _steps(t, 1)
        older = t.checkpointing.manager.save(t)
        _steps(t, 1)
        with pytest.raises(CheckpointError, match="disk full"):
            t.checkpointing.manager.save(t)
        assert verify.verify(older) == []
        assert sorted(p.name for p in ckpts.iterdir()) == ["iter_0000001", "latest"]
    finally:
        subprocess.run(["umount", str(ckpts)])


def test_retention_keeps_newest_n_and_stage_final(tmp_path):
    t = _trainer(tmp_path / "run", "checkpoint.interval_steps=1", "checkpoint.keep_last=2",
                 "train.train_steps=5")
    m = t.checkpointing.manager
    m.cfg.interval_steps = 0
    _steps(t, 1)
    m.save(t, final=True)  # a stage-final checkpoint: kept forever
    m.cfg.interval_steps = 1
    t.fit()  # saves every step (2..5); the end of fit marks step 5 final
    names = sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir())
    assert names == ["iter_0000001", "iter_0000004", "iter_0000005", "latest"]
    assert verify.read_manifest(tmp_path / "run/checkpoints/iter_0000005")["keep"] is True


def test_wall_clock_cadence_saves(tmp_path):
    t = _trainer(tmp_path / "run", "checkpoint.interval_steps=0",
                 "checkpoint.interval_minutes=0.00001", "checkpoint.save_final=false",
                 "checkpoint.keep_last=10", "train.train_steps=3")
    t.fit()
    names = sorted(p.name for p in (tmp_path / "run/checkpoints").glob("iter_*"))
    assert names == ["iter_0000001", "iter_0000002", "iter_0000003"]


@pytest.mark.parametrize("override, field", [
    ("checkpoint.async_save=true", "checkpoint.async_save"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last"),
    ("checkpoint.verify_on_load=md5", "checkpoint.verify_on_load"),
])
def test_bad_settings_are_config_errors(tmp_path, override, field):
    with pytest.raises(ConfigError) as e:  # by validate(), before anything is built
        load_recipe("tiny_cpu", [f"run.dir={tmp_path}", *TINY, override])
    assert e.value.field == field
    cfg = load_recipe("tiny_cpu", [f"run.dir={tmp_path}", *TINY])
    key, value = override.removeprefix("checkpoint.").split("=")
    bad = {"true": True, "0": 0}.get(value, value)
    with pytest.raises(ConfigError) as e:  # and by the manager, for a config built in code
        CheckpointManager(dataclasses.replace(cfg, checkpoint=dataclasses.replace(
            cfg.checkpoint, **{key: bad})), tmp_path)
    assert e.value.field == field
