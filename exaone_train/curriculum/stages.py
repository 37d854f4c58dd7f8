"""The curriculum plan: every stage's recipe (train.*, parallel, the filled WSD schedule), its
steps and tokens, and where it sits on the one schedule. `plan_curriculum` is also the
curriculum's validation: every rule raises ConfigError naming the field (as a Hydra override
path, e.g. `curriculum.stages.3.seq_length_tokens`), the value and the rule, before anything
starts. No torch.distributed here: `exaone-train plan` runs it on a login node.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from exaone_train.config.schema import ParallelConfig, RecipeConfig
from exaone_train.config.validate import validate_backend, validate_batching, validate_parallel
from exaone_train.curriculum.config import ON_FAIL, CurriculumStageConfig, GateConfig
from exaone_train.errors import ConfigError
from exaone_train.optim.config import OptimConfig, decay_tokens_of, validate_schedule
from exaone_train.parallel.dims import ParallelDims

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _require(cond: bool, field: str, value: object, rule: str) -> None:
    if not cond:
        raise ConfigError(field, value, rule)


@dataclass
class StagePlan:
    index: int
    name: str
    recipe: RecipeConfig  # what this stage trains under (train.*, parallel, filled optim)
    steps: int  # planned optimizer steps (before retries)
    start_tokens: int  # schedule position (cumulative planned tokens) at the stage start
    retry_steps: int  # steps per retry (0: the gate never retries)
    gate: GateConfig

    @property
    def batch_tokens(self) -> int:
        t = self.recipe.train
        return t.global_batch_samples * t.seq_length_tokens

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_tokens

    @property
    def end_tokens(self) -> int:
        return self.start_tokens + self.tokens

    @property
    def schedule_span(self) -> tuple[int, int]:
        """(start, length) of the stage on the schedule; retries hold the LR at the end."""
        return self.start_tokens, self.tokens

    def target_tokens(self, attempt: int) -> int:
        """Stage tokens to train before gate attempt `attempt` (0 = the planned length)."""
        return (self.steps + attempt * self.retry_steps) * self.batch_tokens

    def max_samples(self) -> int:
        retries = self.gate.max_retries if self.gate.on_fail == "retry" else 0
        return (self.steps + retries * self.retry_steps) * self.recipe.train.global_batch_samples


@dataclass
class CurriculumPlan:
    name: str
    stages: list[StagePlan]
    optim: OptimConfig  # with optim.schedule.total_tokens (and the decay) filled in

    @property
    def total_tokens(self) -> int:
        return self.stages[-1].end_tokens

    def to_dict(self) -> dict[str, Any]:
        from exaone_train.optim.schedule import lr_at

        s = self.optim.schedule
        decay, total = decay_tokens_of(s), s.total_tokens or 0
        stages = []
        for st in self.stages:
            t = st.recipe.train
            stages.append({
                "name": st.name, "data_stage": t.data_stage, "seq_length_tokens": t.seq_length_tokens,
                "global_batch_samples": t.global_batch_samples,
                "micro_batch_samples": t.micro_batch_samples, "steps": st.steps,
                "tokens": st.tokens, "start_tokens": st.start_tokens, "end_tokens": st.end_tokens,
                "lr_start": lr_at(st.start_tokens, self.optim),
                "lr_end": lr_at(st.end_tokens, self.optim),
                "parallel": _layout_dict(st.recipe.parallel),
                "gate": _gate_summary(st.gate, st.retry_steps * st.batch_tokens)})
        return {"name": self.name, "total_tokens": self.total_tokens,
                "schedule": {"total_tokens": total, "warmup_tokens": s.warmup_tokens,
                             "decay_start_tokens": total - decay, "decay_tokens": decay,
                             "lr_peak": self.optim.lr_peak,
                             "lr_min_ratio": s.lr_min_ratio},
                "stages": stages}


def _layout_dict(p: ParallelConfig) -> dict[str, Any]:
    """A stage's layout in plan.json (`curriculum status` prints it)."""
    return {"tp": p.tp, "pp": p.pp, "virtual_pp": p.virtual_pp, "ep": p.ep, "cp": p.cp}


def _gate_summary(g: GateConfig, retry_tokens: int) -> dict[str, Any]:
    return {"niah": None if g.niah is None else {"lengths": list(g.niah.lengths),
                                                  "pass_accuracy": g.niah.pass_accuracy},
            "max_short_loss_increase": g.max_short_loss_increase, "on_fail": g.on_fail,
            "max_retries": g.max_retries, "retry_tokens": retry_tokens}


def stage_recipe(cfg: RecipeConfig, stage: CurriculumStageConfig) -> RecipeConfig:
    """The recipe one stage trains under: its train.* and parallel overrides applied."""
    changes = {k: v for k, v in dataclasses.asdict(stage.parallel).items()
               if v is not None and k != "auto"}
    parallel = dataclasses.replace(cfg.parallel, **changes)
    train = dataclasses.replace(
        cfg.train, data_stage=stage.data_stage, seq_length_tokens=stage.seq_length_tokens,
        global_batch_samples=stage.global_batch_samples,
        micro_batch_samples=stage.micro_batch_samples, train_steps=None)
    return dataclasses.replace(cfg, train=train, parallel=parallel)


def _stage_steps(s: CurriculumStageConfig, where: str) -> int:
    _require((s.train_tokens is None) != (s.train_steps is None), f"{where}.train_tokens",
             s.train_tokens, f"exactly one of train_tokens / train_steps must be set (stage "
             f"'{s.name}': train_steps={s.train_steps})")
    if s.train_steps is not None:
        _require(s.train_steps > 0, f"{where}.train_steps", s.train_steps, "must be > 0")
        return s.train_steps
    tokens = s.train_tokens or 0
    _require(tokens > 0, f"{where}.train_tokens", s.train_tokens, "must be > 0")
    return math.ceil(tokens / (s.global_batch_samples * s.seq_length_tokens))


def _check_stage(cfg: RecipeConfig, s: CurriculumStageConfig, where: str) -> None:
    _require(bool(_NAME.match(s.name or "")), f"{where}.name", s.name,
             "must be letters, digits, '_', '.' or '-' (it names files)")
    stages = cfg.data.stages
    _require(s.data_stage in stages, f"{where}.data_stage", s.data_stage,
             f"is not one of data.stages {sorted(stages)} (stage '{s.name}')")
    want = stages[s.data_stage].seq_length
    _require(s.seq_length_tokens == want, f"{where}.seq_length_tokens", s.seq_length_tokens,
             f"must equal data.stages.{s.data_stage}.seq_length={want} (stage '{s.name}')")
    _require(s.seq_length_tokens <= cfg.model.max_position_embeddings,
             f"{where}.seq_length_tokens", s.seq_length_tokens,
             f"exceeds model.max_position_embeddings={cfg.model.max_position_embeddings}")
    for name in ("global_batch_samples", "micro_batch_samples"):
        _require(getattr(s, name) > 0, f"{where}.{name}", getattr(s, name), "must be > 0")
    _require(s.global_batch_samples % s.micro_batch_samples == 0, f"{where}.global_batch_samples",
             s.global_batch_samples, f"must be a multiple of {where}.micro_batch_samples="
             f"{s.micro_batch_samples}")


def _check_layout(recipe: RecipeConfig, where: str, world_size: int | None) -> None:
    """The stage's layout: model/parallel rules, CP length rules, and (world known) batching."""
    p, t = recipe.parallel, recipe.train
    try:
        validate_parallel(p, recipe.model)
        ParallelDims.of(p).check_seq(t.seq_length_tokens)
        validate_backend(recipe)
    except ConfigError as e:
        field = e.field.replace("train.seq_length_tokens", f"{where}.seq_length_tokens")
        field = field.replace("parallel.", f"{where}.parallel.") if "parallel." in field else field
        raise ConfigError(field, e.value, e.rule) from None
    if world_size is None:
        return
    dims = ParallelDims.of(p, world_size)
    rule = dims.world_rule()
    _require(rule is None, f"{where}.parallel", dims.describe(), rule or "")
    try:
        validate_batching(t.global_batch_samples, t.micro_batch_samples, dims.dp, p)
    except ConfigError as e:
        raise ConfigError(f"{where}.global_batch_samples", e.value, e.rule) from None


def _check_gate(g: GateConfig, seq: int, where: str) -> None:
    _require(g.on_fail in ON_FAIL, f"{where}.gate.on_fail", g.on_fail,
             f"must be one of {', '.join(ON_FAIL)}")
    _require(g.max_retries >= 0, f"{where}.gate.max_retries", g.max_retries, "must be >= 0")
    if g.on_fail == "retry":
        _require(g.max_retries >= 1, f"{where}.gate.max_retries", g.max_retries,
                 "on_fail=retry needs max_retries >= 1")
        _require(g.retry_tokens is not None and g.retry_tokens > 0, f"{where}.gate.retry_tokens",
                 g.retry_tokens, "on_fail=retry needs retry_tokens > 0")
    if g.niah is not None:
        bad = [n for n in g.niah.lengths if not 0 < n <= seq]
        _require(not bad and bool(g.niah.lengths), f"{where}.gate.niah.lengths",
                 list(g.niah.lengths), f"each must lie in (0, the stage's seq_length={seq}]")


def _fill_schedule(cfg: RecipeConfig, stages: list[StagePlan]) -> OptimConfig:
    """One WSD over the curriculum: total_tokens (and the decay) from the planned stages."""
    c, s = cfg.curriculum, cfg.optim.schedule
    _require(s.total_tokens is None, "optim.schedule.total_tokens", s.total_tokens,
             "must be null under a curriculum (the planned stage tokens fill it)")
    if c.decay_stage is None:
        sched = dataclasses.replace(s, total_tokens=stages[-1].end_tokens)
    else:
        names = [st.name for st in stages]
        _require(c.decay_stage in names, "curriculum.decay_stage", c.decay_stage,
                 f"is not one of the stages {names}")
        _require(s.decay_tokens is None, "optim.schedule.decay_tokens", s.decay_tokens,
                 "must be null when curriculum.decay_stage is set (the decay spans that stage)")
        d = stages[names.index(c.decay_stage)]
        sched = dataclasses.replace(s, total_tokens=d.end_tokens, decay_tokens=d.tokens)
    validate_schedule(sched)
    return dataclasses.replace(cfg.optim, schedule=sched)


def _check_lr(plan: CurriculumPlan) -> None:
    """No stage may train at LR 0: stages after the decay, or retries held at a stage's end."""
    from exaone_train.optim.schedule import lr_factor_at

    sched = plan.optim.schedule
    for st in plan.stages:
        where = f"curriculum.stages.{st.index}"
        if st.start_tokens >= (sched.total_tokens or 0):
            _require(sched.lr_min_ratio > 0, "optim.schedule.lr_min_ratio", sched.lr_min_ratio,
                     f"stage '{st.name}' comes after the decay and would train at LR 0; "
                     "set lr_min_ratio > 0")
        if st.retry_steps:
            _require(lr_factor_at(st.end_tokens, sched) > 0, f"{where}.gate.on_fail", "retry",
                     f"retries of stage '{st.name}' would train at the LR of its end, which is "
                     "0 (end of the decay with lr_min_ratio=0)")


def _check_validation(cfg: RecipeConfig, plan: CurriculumPlan, world_size: int | None) -> None:
    v = cfg.curriculum.validation
    if v.data_stage is None:
        for st in plan.stages:
            _require(st.gate.max_short_loss_increase is None,
                     f"curriculum.stages.{st.index}.gate.max_short_loss_increase",
                     st.gate.max_short_loss_increase, "needs curriculum.validation.data_stage")
        return
    w = "curriculum.validation"
    _require(v.data_stage in cfg.data.stages, f"{w}.data_stage", v.data_stage,
             f"is not one of data.stages {sorted(cfg.data.stages)}")
    _require(v.num_samples > 0, f"{w}.num_samples", v.num_samples, "must be > 0")
    _require(v.micro_batch_samples > 0, f"{w}.micro_batch_samples", v.micro_batch_samples, "> 0")
    _require(v.first_sample >= 0, f"{w}.first_sample", v.first_sample, "must be >= 0")
    seq = cfg.data.stages[v.data_stage].seq_length
    for st in plan.stages:
        p = st.recipe.parallel
        dims = ParallelDims.of(p, world_size)
        rule = dims.seq_rule(seq)
        _require(rule is None, f"{w}.data_stage", v.data_stage,
                 f"seq_length={seq} {rule} (stage '{st.name}')")
        if world_size is not None:
            try:
                validate_batching(v.num_samples, v.micro_batch_samples, dims.dp, p)
            except ConfigError as e:
                raise ConfigError(f"{w}.num_samples", v.num_samples,
                                  f"{e.rule} (stage '{st.name}')") from None
        if st.recipe.train.data_stage == v.data_stage:
            _require(v.first_sample >= st.max_samples(), f"{w}.first_sample", v.first_sample,
                     f"stage '{st.name}' trains on data stage {v.data_stage} samples "
                     f"[0, {st.max_samples()}); validation must start past them")


def plan_curriculum(cfg: RecipeConfig, world_size: int | None = None) -> CurriculumPlan:
    """Validate `cfg.curriculum` against the recipe (and the world size, when known) and plan
    it. ConfigError on the first broken rule."""
    c = cfg.curriculum
    _require(len(c.stages) > 0, "curriculum.stages", [],
             "needs at least one stage (pick a curriculum, e.g. curriculum=tiny)")
    names = [s.name for s in c.stages]
    dupes = sorted({n for n in names if names.count(n) > 1})
    _require(not dupes, "curriculum.stages", dupes, "stage names must be unique")
    stages, start = [], 0
    for i, s in enumerate(c.stages):
        where = f"curriculum.stages.{i}"
        _check_stage(cfg, s, where)
        recipe = stage_recipe(cfg, s)
        _require(world_size is None or not s.parallel.auto, f"{where}.parallel.auto", True,
                 f"stage '{s.name}': resolve `parallel: {{auto: true}}` for the world size first "
                 "(launcher.layout_search.resolve_stage_layouts)")
        _check_layout(recipe, where, world_size)
        _check_gate(s.gate, s.seq_length_tokens, where)
        batch = s.global_batch_samples * s.seq_length_tokens
        retry = math.ceil((s.gate.retry_tokens or 0) / batch) if s.gate.on_fail == "retry" else 0
        st = StagePlan(i, s.name, recipe, _stage_steps(s, where), start, retry, s.gate)
        stages.append(st)
        start = st.end_tokens
        if i and recipe.parallel != stages[i - 1].recipe.parallel:
            _require(cfg.checkpoint.enabled, "checkpoint.enabled", False,
                     f"stage '{s.name}' changes the parallel layout: it starts from the previous "
                     "stage-final checkpoint, so checkpoints must be on")
    optim = _fill_schedule(cfg, stages)
    for st in stages:
        train = dataclasses.replace(st.recipe.train, train_tokens=st.tokens)
        st.recipe = dataclasses.replace(st.recipe, train=train, optim=optim)
    plan = CurriculumPlan(c.name, stages, optim)
    _check_lr(plan)
    _check_validation(cfg, plan, world_size)
    return plan


def format_curriculum(plan: CurriculumPlan) -> str:
    """A table a person reads before launching."""
    d = plan.to_dict()
    s = d["schedule"]
    lines = [f"curriculum {d['name']}: {len(plan.stages)} stages, {d['total_tokens']:,} tokens; "
             f"WSD: warmup {s['warmup_tokens']:,}, decay [{s['decay_start_tokens']:,}, "
             f"{s['total_tokens']:,}) tokens, lr_peak {s['lr_peak']:.2e}",
             f"  {'stage':<14}{'data':<14}{'seq':>8}{'batch':>7}{'steps':>10}{'tokens':>20}"
             f"{'lr start -> end':>22}  layout  gate"]
    for st in d["stages"]:
        p, g = st["parallel"], st["gate"]
        crit = [x for x in (g["niah"] and f"niah{g['niah']['lengths']}",
                            g["max_short_loss_increase"] is not None
                            and f"short_loss+<={g['max_short_loss_increase']}") if x]
        gate = f"{' & '.join(crit)} ({g['on_fail']})" if crit else "-"
        lines.append(f"  {st['name']:<14}{st['data_stage']:<14}{st['seq_length_tokens']:>8}"
                     f"{st['global_batch_samples']:>7}{st['steps']:>10,}{st['tokens']:>20,}"
                     f"{st['lr_start']:>11.2e} ->{st['lr_end']:>9.2e}  "
                     f"tp{p['tp']} pp{p['pp']} ep{p['ep']} cp{p['cp']}  {gate}")
    return "\n".join(lines)
