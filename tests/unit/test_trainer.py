"""The trainer on one process: the loss falls, bad steps are skipped and counted, metrics land
in metrics.jsonl."""

import dataclasses
import json

import pytest
import torch

from exaone_train.config.load import load_recipe
from exaone_train.parallel import state
from exaone_train.train import trainer as trainer_mod


def _cfg(tmp_path, *extra):
    return load_recipe("tiny_cpu", [f"run.dir={tmp_path}/run", "logging.wandb=false",
                                    "train.data_source=synthetic", *extra])


@pytest.fixture(autouse=True)
def _teardown():
    yield
    state.teardown()


def test_loss_falls_on_synthetic_stream(tmp_path):
    # 25 steps of 8x128 tokens. A model that learned nothing stays near ln(4096)=8.3. The
    # stream uses 512 ids (unigram entropy ln 512 = 6.2) and each token follows from the
    # previous two, so learning shows as a fall of well over 1 nat between the first and the
    # last 5 steps (measured: 2.62 nats, 8.33 -> 5.42; it was 40 steps before, to save time);
    # an untrained or broken update (e.g. wrong grad scaling) does not.
    cfg = _cfg(tmp_path, "train.train_steps=25", "train.seq_length_tokens=128")
    results = trainer_mod.main(cfg)
    losses = [r.loss for r in results]
    assert len(losses) == 25 and not any(r.skipped for r in results)
    assert sum(losses[:5]) / 5 - sum(losses[-5:]) / 5 > 1.0, losses
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 26))
    assert lines[-1]["moe/dropped_assignments"] == 0  # dropless
    assert "moe/layer1/load_cv" in lines[-1] and "mtp_loss" in lines[-1]
    assert 0 < lines[-1]["mtp_loss"] < 10


def test_injected_nan_is_skipped_and_counted(tmp_path):
    cfg = _cfg(tmp_path, "train.train_steps=3", "train.seq_length_tokens=64")
    state.setup(cfg.parallel, cfg.seed)
    run_dir = trainer_mod.prepare_run_dir(cfg)
    t = trainer_mod.Trainer(cfg, run_dir)
    t.train_one_step()
    before = {n: p.detach().clone() for n, p in t.model[0].named_parameters()}
    # poison one forward: the embedding output becomes NaN for this step only
    emb = t.model[0].module.embedding
    handle = emb.register_forward_hook(lambda m, i, o: o * float("nan"))
    result = t.train_one_step()
    handle.remove()
    assert result.skipped and "non-finite" in result.skip_reason
    assert t.guard.counts["nonfinite_loss"] == 1
    for n, p in t.model[0].named_parameters():
        assert torch.equal(p, before[n]), f"{n} changed by a skipped step"
    result = t.train_one_step()
    assert not result.skipped
    assert any(not torch.equal(p, before[n]) for n, p in t.model[0].named_parameters())


class _Counter(trainer_mod.cb.Callback):
    """A callback with state: steps it has seen."""

    def __init__(self) -> None:
        self.seen = 0

    def on_step_end(self, trainer, result) -> None:
        self.seen += 1

    def state_dict(self) -> dict:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.seen = state["seen"]


def test_state_dict_round_trips_counters_data_and_each_callbacks_state(tmp_path):
    """What train_state.json holds: `Trainer.state_dict()` (JSON) and `load_state_dict()` give
    back the counters, the data position and each stateful callback's state (the guard's
    window, a user callback's); a checkpoint of the older layout (guard at the top) loads too."""
    cfg = _cfg(tmp_path, "train.seq_length_tokens=64", "checkpoint.enabled=false")
    state.setup(cfg.parallel, cfg.seed)
    t = trainer_mod.Trainer(cfg, trainer_mod.prepare_run_dir(cfg))
    counter = _Counter()
    t.callbacks.append(counter)
    t.train_one_step()
    saved = json.loads(json.dumps(t.state_dict()))
    assert saved["step"] == 1 and saved["data"] == t.data.state_dict()
    assert saved["callbacks"]["_Counter"] == {"seen": 1}
    assert len(saved["callbacks"]["StabilityGuard"]["history"]) == 1
    assert set(saved["callbacks"]) == {"_Counter", "StabilityGuard"}  # stateless ones: absent
    t.train_one_step()
    t.guard.history.clear()
    t.load_state_dict(saved)
    assert json.loads(json.dumps(t.state_dict())) == saved and counter.seen == 1
    legacy = {k: v for k, v in saved.items() if k != "callbacks"}
    legacy["guard"] = {**saved["callbacks"]["StabilityGuard"], "counts": {"loss_spike": 4}}
    t.guard.history.clear()
    t.load_state_dict(legacy)
    assert t.guard.counts["loss_spike"] == 4 and len(t.guard.history) == 1


def test_nonfinite_gradient_is_skipped(tmp_path):
    cfg = _cfg(tmp_path, "train.train_steps=2", "train.seq_length_tokens=64")
    state.setup(cfg.parallel, cfg.seed)
    t = trainer_mod.Trainer(cfg, trainer_mod.prepare_run_dir(cfg))
    w = t.model[0].module.decoder.layers[0].mlp.linear_fc2.weight
    handle = w.register_hook(lambda g: g * float("inf"))
    before = w.detach().clone()
    result = t.train_one_step()
    handle.remove()
    assert result.skipped and "gradient" in result.skip_reason
    assert t.guard.counts["nonfinite_grad"] == 1 and torch.equal(w, before)


def test_too_many_skips_stop_cleanly(tmp_path):
    cfg = _cfg(tmp_path, "train.train_steps=10", "train.seq_length_tokens=64",
               "guard.max_skips_in_window=2")
    state.setup(cfg.parallel, cfg.seed)
    t = trainer_mod.Trainer(cfg, trainer_mod.prepare_run_dir(cfg))
    t.model[0].module.embedding.register_forward_hook(lambda m, i, o: o * float("nan"))
    results = t.fit()
    assert len(results) == 3 and all(r.skipped for r in results)


def test_batch_not_divisible_is_config_error(tmp_path):
    from exaone_train.errors import ConfigError

    with pytest.raises(ConfigError, match="train.global_batch_samples"):  # validate()
        _cfg(tmp_path, "train.global_batch_samples=7")
    cfg = _cfg(tmp_path)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, global_batch_samples=7))
    with pytest.raises(ConfigError, match="train.global_batch_samples"):  # and with the DP size
        trainer_mod.main(cfg)


def test_init_from_a_training_checkpoint_loads_its_weights(tmp_path):
    """`train.init_from=<checkpoint>/model` (the format convert from-hf also writes) gives the
    new run exactly the weights the checkpointed run ended with."""
    cfg = _cfg(tmp_path, "train.train_steps=2", "train.seq_length_tokens=64")
    state.setup(cfg.parallel, cfg.seed)
    a = trainer_mod.Trainer(cfg, trainer_mod.prepare_run_dir(cfg))
    a.fit()
    trained = {n: p.detach().clone() for n, p in a.model[0].named_parameters()}
    state.teardown()
    ckpt = tmp_path / "run" / "checkpoints" / "iter_0000002" / "model"
    cfg_b = load_recipe("tiny_cpu", [f"run.dir={tmp_path}/b", "logging.wandb=false",
                                     "train.data_source=synthetic", f"train.init_from={ckpt}",
                                     "model.init_std=0.5"])  # a different init, overwritten
    state.setup(cfg_b.parallel, cfg_b.seed)
    b = trainer_mod.Trainer(cfg_b, trainer_mod.prepare_run_dir(cfg_b))
    for n, p in b.model[0].named_parameters():
        assert torch.equal(p, trained[n]), n


def test_signal_handlers_live_only_while_the_loop_runs(tmp_path):
    # Our SIGTERM handler only sets a flag. Installed outside fit() (or left behind after it),
    # it would be inherited by processes forked later, e.g. a data-build worker pool, which
    # SIGTERM could then no longer stop (a pytest run hung at exit on exactly that).
    import signal

    from exaone_train.checkpoint import preemption

    original = signal.getsignal(signal.SIGTERM)
    cfg = _cfg(tmp_path, "train.train_steps=2", "train.seq_length_tokens=64")
    state.setup(cfg.parallel, cfg.seed)
    t = trainer_mod.Trainer(cfg, trainer_mod.prepare_run_dir(cfg))
    assert signal.getsignal(signal.SIGTERM) is original
    seen = []
    t.callbacks.insert(0, type("Probe", (trainer_mod.cb.Callback,), {
        "on_step_end": lambda self, tr, r: seen.append(signal.getsignal(signal.SIGTERM))})())
    t.fit()
    assert seen and all(h is preemption._handler for h in seen)
    assert signal.getsignal(signal.SIGTERM) is original
