"""The `curriculum:` section of a recipe (Hydra group `recipes/curriculum/*.yaml`): ordered
stages, each training one data stage for a token budget under its own batch and (optionally)
parallel layout, then passing a gate before the next stage starts. Values only; the plan
(`curriculum/stages.py`) turns them into steps, tokens and one WSD schedule, and the driver
(`curriculum/driver.py`) runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from exaone_train.eval.niah_config import NiahConfig

ON_FAIL = ("retry", "stop", "continue")


@dataclass
class GateConfig:
    """What must hold at a stage's end. Every criterion that is set must pass; a gate with none
    set passes (the stage still saves its final checkpoint and records its validation loss)."""

    # Needle-in-a-haystack over the stage's lengths x depths (exaone_train/eval/niah.py);
    # null: no NIAH check.
    niah: NiahConfig | None = None
    # Short-context validation loss (`curriculum.validation`) after this stage minus the same
    # loss after the previous stage (before the first stage: of the initial model), in nats.
    # null: not checked. Negative values demand an improvement.
    max_short_loss_increase: float | None = None
    # On failure: retry (train `retry_tokens` more of this stage, gate again, up to
    # `max_retries` times, then stop), stop (exit with status 4; relaunching continues from the
    # stage-final checkpoint once the recipe changed), continue (record it, go on).
    on_fail: str = "stop"
    max_retries: int = 0
    retry_tokens: int | None = None  # per retry, rounded up to whole steps of the stage


@dataclass
class StageParallelConfig:
    """A stage's changes to the recipe's `parallel:` (null: keep the recipe's value), or
    `{auto: true}`: the launcher's layout search (launcher/layout_search.py) picks TP/PP/VPP/
    EP/expert-TP/CP, recompute and the distributed optimizer for the stage's length on the
    job's world size and GPU memory, before the first step; fields also set beside `auto` are
    kept fixed in the search."""

    auto: bool = False
    tp: int | None = None
    pp: int | None = None
    virtual_pp: int | None = None
    ep: int | None = None
    cp: int | None = None
    cp_comm_type: str | None = None
    sequence_parallel: bool | None = None
    expert_tp: int | None = None
    moe_token_dispatcher: str | None = None
    distributed_optimizer: bool | None = None
    recompute: str | None = None


@dataclass
class CurriculumStageConfig:
    name: str = MISSING  # unique; names files (niah/<name>.json) and metrics.jsonl records
    data_stage: str = MISSING  # a key of data.stages
    seq_length_tokens: int = MISSING  # must equal data.stages[data_stage].seq_length
    # Length: train_tokens (trained up to the first step boundary at or past it) or train_steps.
    train_tokens: int | None = None
    train_steps: int | None = None
    global_batch_samples: int = MISSING
    micro_batch_samples: int = MISSING
    # Overrides of the recipe's `parallel:` for this stage, e.g. {cp: 8} at 256K. A stage whose
    # layout differs from the previous one is started from the previous stage-final checkpoint,
    # resharded (model and optimizer state).
    parallel: StageParallelConfig = field(default_factory=StageParallelConfig)
    gate: GateConfig = field(default_factory=GateConfig)


@dataclass
class ValidationConfig:
    """The short-context validation set the gates compare: samples
    [first_sample, first_sample + num_samples) of data stage `data_stage`, read with the data
    seed. When a training stage reads the same data stage, `first_sample` must lie past every
    sample it can read (held out by index)."""

    data_stage: str | None = None  # null: no validation loss (gates cannot use it)
    first_sample: int = 0
    num_samples: int = 16
    micro_batch_samples: int = 2


@dataclass
class CurriculumConfig:
    name: str = "none"
    stages: list[CurriculumStageConfig] = field(default_factory=list)
    # One WSD schedule (optim.schedule) over the whole curriculum, positioned by cumulative
    # tokens. decay_stage: the decay spans exactly this stage and stages after it train at
    # lr_min (optim.schedule.lr_min_ratio * lr_peak); null: the decay is the last
    # optim.schedule.decay_tokens (or decay_fraction of all) tokens of the curriculum.
    decay_stage: str | None = None
    validation: ValidationConfig = field(default_factory=ValidationConfig)
