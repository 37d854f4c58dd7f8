"""WSD schedule: parity with transformers.get_wsd_schedule, and positioned by tokens."""

from __future__ import annotations

import pytest
import torch
from transformers import get_wsd_schedule

from exaone_train.errors import ConfigError
from exaone_train.optim.config import OptimConfig, ScheduleConfig
from exaone_train.optim.schedule import WSDSchedule, lr_at

TOKENS_PER_STEP = 4096
LR_PEAK = 3e-3


def _hf_lrs(steps: int, warmup: int, decay: int, shape: str, warmup_shape: str,
            min_ratio: float) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR_PEAK)
    sched = get_wsd_schedule(opt, num_warmup_steps=warmup, num_decay_steps=decay,
                             num_training_steps=steps, warmup_type=warmup_shape,
                             decay_type=shape, min_lr_ratio=min_ratio)
    lrs = []
    for _ in range(steps + 5):  # a few past the end: held at the minimum
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("warmup_shape", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_matches_transformers_wsd(shape: str, warmup_shape: str) -> None:
    steps, warmup, decay, min_ratio = 100, 10, 30, 0.1
    cfg = OptimConfig(lr_peak=LR_PEAK, schedule=ScheduleConfig(
        total_tokens=steps * TOKENS_PER_STEP, warmup_tokens=warmup * TOKENS_PER_STEP,
        warmup_shape=warmup_shape, decay_shape=shape, decay_fraction=decay / steps,
        lr_min_ratio=min_ratio))
    ours = [lr_at(s * TOKENS_PER_STEP, cfg) for s in range(steps + 5)]
    theirs = _hf_lrs(steps, warmup, decay, shape, warmup_shape, min_ratio)
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-12
    assert theirs[warmup + 5] == LR_PEAK and theirs[-1] == pytest.approx(LR_PEAK * min_ratio)


def test_explicit_decay_tokens_equal_fraction() -> None:
    base = dict(total_tokens=1000, warmup_tokens=100, decay_shape="cosine")
    by_fraction = OptimConfig(schedule=ScheduleConfig(**base, decay_fraction=0.25))
    by_tokens = OptimConfig(schedule=ScheduleConfig(**base, decay_tokens=250, decay_fraction=None))
    assert [lr_at(t, by_fraction) for t in range(0, 1100, 7)] == \
        [lr_at(t, by_tokens) for t in range(0, 1100, 7)]


def test_lr_is_a_function_of_tokens_when_batch_halves() -> None:
    """Two runs: constant batch vs batch halved mid-run (twice the steps after). At every
    shared token position both set the same LR; the halved run has the finer sampling."""
    total = 64 * 1000
    cfg = OptimConfig(lr_peak=1e-3, class_lr_multipliers={"embedding": 0.5}, schedule=ScheduleConfig(
        total_tokens=total, warmup_tokens=8000, decay_shape="1-sqrt", decay_fraction=0.3))
    def run(batch_at) -> dict[int, float]:
        opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_multiplier": 0.5}],
                              lr=0.0)
        sched, tokens, seen = WSDSchedule(opt, cfg), 0, {}
        while tokens <= total + 2000:
            seen[tokens] = sched.step(tokens)[0]
            tokens += batch_at(tokens)
        return seen
    constant = run(lambda t: 1000)
    halved = run(lambda t: 1000 if t < total // 2 else 500)
    shared = set(constant) & set(halved)
    assert len(shared) == len(constant) and len(halved) > len(constant)
    assert all(constant[t] == halved[t] for t in shared)
    assert all(halved[t] == 0.5 * lr_at(t, cfg) for t in halved)
    # the halved run's decay is not stretched: it ends at the same token count
    assert halved[total] == constant[total] == 0.0


def test_bad_schedule_is_a_config_error() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    with pytest.raises(ConfigError, match="total_tokens"):
        WSDSchedule(opt, OptimConfig(schedule=ScheduleConfig(total_tokens=100, warmup_tokens=95)))
    with pytest.raises(ConfigError, match="decay_shape"):
        WSDSchedule(opt, OptimConfig(schedule=ScheduleConfig(total_tokens=100, decay_shape="exp")))
