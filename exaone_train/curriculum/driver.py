"""The curriculum driver (`exaone-train curriculum`): runs one stage at a time; at a stage's end
it saves a stage-final checkpoint, measures the short-context validation loss, runs the stage's
gate, records the result in curriculum.json, then starts the next stage, retries (more tokens
of the same stage) or stops, as the gate's policy says.

Between stages of one layout the model, optimizer and schedule stay in memory
(`Trainer.begin_stage`); a stage of another layout (e.g. cp=1 -> cp=2) rebuilds the parallel
state and the trainer and loads the stage-final checkpoint resharded (model and optimizer).
Each stage reads its own data stage from sample 0. The position in the curriculum (stage,
attempt, the validation loss the gate compares with) is part of every checkpoint's
train_state.json, so relaunching the same command continues where it stopped; a gate result
recorded for a stage-final checkpoint is reused while its criteria are unchanged.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from exaone_train.checkpoint import preemption
from exaone_train.checkpoint.manager import TRAIN_STATE, CheckpointManager, iter_name
from exaone_train.config.schema import RecipeConfig
from exaone_train.curriculum import gate as gates
from exaone_train.curriculum.record import CurriculumRecord
from exaone_train.curriculum.stages import (
    CurriculumPlan,
    StagePlan,
    format_curriculum,
    plan_curriculum,
)
from exaone_train.errors import CheckpointError, ConfigError
from exaone_train.parallel import ranks, state
from exaone_train.parallel.dims import ParallelDims
from exaone_train.train.hardware import detect_gpu_type
from exaone_train.train.run_dir import prepare_run_dir
from exaone_train.train.trainer import Trainer

log = logging.getLogger("exaone_train")

GATE_STOP_EXIT_CODE = 4  # a gate failed and its policy says stop (not requeued by slurm/)
GUARD_STOP_EXIT_CODE = 5  # the stability guard stopped a stage



def run_curriculum(cfg: RecipeConfig) -> int:
    """Walk `cfg.curriculum` on this rank (collective). Returns the process exit status: 0 done,
    3 stopped by SIGTERM/SIGUSR1 after a checkpoint (requeue), 4 a gate stopped it, 5 the
    stability guard stopped it."""
    state.init_distributed()
    cfg, choices = _resolve_layouts(cfg)  # `parallel: {auto: true}` stages, before any work
    plan = plan_curriculum(cfg, dist.get_world_size())  # everything validated before any work
    run_dir = prepare_run_dir(cfg)
    if ranks.is_rank0():
        text = format_curriculum(plan)  # the table once per run; a resumed run says one line
        resumed = (Path(run_dir) / "curriculum.json").exists()
        log.info("%s", f"{text.splitlines()[0]} (resumed: the table is in plan.json)"
                 if resumed else text)
        _write_plan_json(run_dir, plan, choices)
    code = Driver(cfg, plan, run_dir).run()
    dist.barrier()  # returned on any rank: rank 0 has written curriculum.json
    return code


def _resolve_layouts(cfg: RecipeConfig) -> tuple[RecipeConfig, dict]:
    """Rank 0 searches the auto stages' layouts for this world (launcher/layout_search.py) and
    every rank takes its answer (one decision, whatever each node's GPU reports). A world where
    a stage fits no layout is a ConfigError on every rank, before the first step."""
    from launcher.layout_search import describe_choice, resolve_stage_layouts

    answer: list[Any] = [None]
    if ranks.is_rank0():
        choices: dict[str, dict] = {}
        try:
            answer = [(resolve_stage_layouts(cfg, dist.get_world_size(), choices=choices),
                       choices, None)]
        except ConfigError as e:
            answer = [(None, None, e)]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(answer, src=0)
    resolved, choices, error = answer[0]
    if error is not None:
        raise error
    if ranks.is_rank0():
        for name, choice in choices.items():
            log.info("stage %s: parallel auto -> %s", name, describe_choice(choice))
    return resolved, choices


def _write_plan_json(run_dir: Path, plan: CurriculumPlan, choices: dict) -> None:
    """plan.json: each stage's dry-run plan (launcher.resource_plan.make_plan: layout, memory
    per GPU, step time) on this world, and what the layout search chose for the auto stages."""
    from launcher.resource_plan import make_plan

    world = dist.get_world_size()
    gpu = plan.stages[0].recipe.logging.gpu_type or detect_gpu_type() or "h100"
    gpn = int(os.environ.get("LOCAL_WORLD_SIZE") or 0) or min(world, 8)
    stages: dict[str, Any] = {}
    for st in plan.stages:
        try:
            stages[st.name] = make_plan(st.recipe, world, gpu_type=gpu,
                                        gpus_per_node=gpn if world % gpn == 0 else world)
        except ConfigError as e:  # e.g. a logging.gpu_type the plan has no figures for
            stages[st.name] = {"error": str(e)}
    out = {"world_size": world, "gpu_type": gpu, "curriculum": plan.to_dict(),
           "layout_search": choices, "stages": stages}
    tmp = run_dir / "plan.json.tmp"
    tmp.write_text(json.dumps(out, indent=2, default=str))
    os.replace(tmp, run_dir / "plan.json")


class Driver:
    def __init__(self, cfg: RecipeConfig, plan: CurriculumPlan, run_dir: Path) -> None:
        self.cfg, self.plan, self.run_dir = cfg, plan, run_dir
        self.trainer: Trainer | None = None
        self._validation_data: Any = None

    # ---- the walk ------------------------------------------------------------------------
    def run(self) -> int:
        path, position = self._resume_point()
        first = self.plan.stages[position["stage_index"]]
        self.record = CurriculumRecord(self.run_dir, self.plan.to_dict(), fresh=path is None)
        t = self.trainer = self._build(first, path, load_data=True)
        if path is None:
            t.enter_stage(first.name, first.schedule_span)
            t.curriculum_state = self._position(first, 0, self._short_loss())
            self.record.data["initial_short_loss"] = t.curriculum_state["short_loss_before"]
            self.record.progress(0, 0, 0)
        else:
            self.record.rewind(first.index, t.step)
        t.start()
        try:
            return self._walk()
        finally:
            if self.trainer is not None:  # None: a layout change failed to rebuild it
                self.trainer.end()

    def _walk(self) -> int:
        while True:
            t = self.trainer
            assert t is not None and t.curriculum_state is not None
            st = self.plan.stages[t.curriculum_state["stage_index"]]
            attempt = t.curriculum_state["attempt"]
            t.schedule_span = st.schedule_span
            t.set_stage_tokens(st.target_tokens(attempt))
            finished = t.train_until_done()
            self.record.progress(st.index, t.stage_steps(), t.stage_tokens())
            if not finished:
                return self._interrupted(st)
            self._save_stage_final()
            entry = self._gate(st, attempt)
            decision = entry["decision"]
            if decision == gates.RETRY:
                log.warning("%s stage %s: gate failed (%s); retry %d of %d: %d more tokens",
                            t.prefix, st.name, "; ".join(entry["gate"]["reasons"]), attempt + 1,
                            st.gate.max_retries, st.retry_steps * st.batch_tokens)
                t.curriculum_state["attempt"] = attempt + 1
                continue
            if decision == gates.STOP:
                return self._gate_stop(st, entry)
            if decision == gates.CONTINUE and ranks.is_rank0():
                log.warning("stage %s: gate failed (%s); on_fail=continue: going on", st.name,
                            "; ".join(entry["gate"]["reasons"]))
            if st.index + 1 == len(self.plan.stages):
                self.record.finish("completed")
                if ranks.is_rank0():
                    log.info("curriculum %s completed at step %d (%d tokens)", self.plan.name,
                             t.step, t.consumed_tokens)
                return 0
            self._next_stage(st, entry["short_loss"])

    # ---- stage boundaries ----------------------------------------------------------------
    def _build(self, st: StagePlan, path: Path | None, load_data: bool) -> Trainer:
        """Parallel state for the stage's layout and a trainer on it (restored from `path`)."""
        state.init_model_parallel(st.recipe.parallel, self.cfg.seed)
        t = Trainer(st.recipe, self.run_dir, resume_from=path, load_data=load_data)
        torch.manual_seed(self.cfg.seed + parallel_state.get_data_parallel_rank())
        return t

    @staticmethod
    def _position(st: StagePlan, attempt: int, short_loss_before: float | None) -> dict:
        return {"stage_index": st.index, "stage": st.name, "attempt": attempt,
                "short_loss_before": short_loss_before}

    def _next_stage(self, st: StagePlan, short_loss: float | None) -> None:
        nxt = self.plan.stages[st.index + 1]
        t = self.trainer
        assert t is not None
        if nxt.recipe.parallel == t.cfg.parallel:
            t.begin_stage(nxt.recipe, nxt.name, nxt.schedule_span)
        else:  # another layout: reshard-load the stage-final checkpoint (model and optimizer)
            path = t.checkpointing.manager.dir / iter_name(t.step)
            if ranks.is_rank0():
                log.info("stage %s: layout %s -> %s, loading %s", nxt.name,
                         _layout(t.cfg), _layout(nxt.recipe), path)
            t.end()
            self.trainer = t = None  # type: ignore[assignment]
            gc.collect()
            t = self.trainer = self._build(nxt, path, load_data=False)
            t.start()
            t.enter_stage(nxt.name, nxt.schedule_span)
        t.curriculum_state = self._position(nxt, 0, short_loss)
        self.record.progress(nxt.index, 0, 0)
        if ranks.is_rank0():
            log.info("stage %s (%d of %d): data stage %s, seq %d, %d steps", nxt.name,
                     nxt.index + 1, len(self.plan.stages), nxt.recipe.train.data_stage,
                     nxt.recipe.train.seq_length_tokens, nxt.steps)

    def _save_stage_final(self) -> None:
        t = self.trainer
        assert t is not None
        if not t.cfg.checkpoint.enabled:
            return
        manager = t.checkpointing.manager
        if manager.last_saved_step != t.step:
            manager.save(t, final=True)
        else:
            manager.mark_keep(t.step)

    def _resume_point(self) -> tuple[Path | None, dict]:
        """The checkpoint to continue from and the curriculum position saved in it."""
        first = self.plan.stages[0]
        path = CheckpointManager(first.recipe, self.run_dir).resume_path()
        if path is None:
            return None, {"stage_index": 0}
        saved = json.loads((path / TRAIN_STATE).read_text())
        position = saved.get("curriculum")
        if position is None:
            raise CheckpointError(f"{path}: not a curriculum checkpoint (a plain `exaone-train "
                                  "train` run?); give the curriculum its own run.dir")
        i, names = position["stage_index"], [s.name for s in self.plan.stages]
        if i >= len(names) or names[i] != position["stage"]:
            raise CheckpointError(f"{path}: saved in stage {position['stage']!r} (#{i}); this "
                                  f"curriculum's stages are {names}")
        if ranks.is_rank0():
            log.info("curriculum %s: resuming stage %s (attempt %d) from %s", self.plan.name,
                     position["stage"], position["attempt"], path)
        return path, position

    # ---- gates ---------------------------------------------------------------------------
    def _short_loss(self) -> float | None:
        v = self.cfg.curriculum.validation
        if v.data_stage is None:
            return None
        from exaone_train.eval.validation import build_validation_data, validation_loss

        if self._validation_data is None:
            self._validation_data = build_validation_data(v, self.cfg)
        assert self.trainer is not None
        return validation_loss(self.trainer, v, self._validation_data)

    def _gate(self, st: StagePlan, attempt: int) -> dict:
        """This attempt's record: reused from curriculum.json if this stage-final checkpoint was
        gated under the same criteria, else measured now. Its decision follows the policy."""
        t = self.trainer
        assert t is not None and t.curriculum_state is not None
        crit = gates.criteria(st.gate, self.cfg.curriculum.validation)
        entry = self.record.find(st.index, attempt, t.step, crit)
        if entry is not None:
            if ranks.is_rank0():
                log.info("stage %s attempt %d: gate result recorded at step %d reused", st.name,
                         attempt, t.step)
        else:
            before = t.curriculum_state["short_loss_before"]
            short = self._short_loss()
            result = gates.evaluate(t, st.gate, st.name, attempt, short, before, self.run_dir)
            entry = {"attempt": attempt, "step": t.step, "stage_steps": t.stage_steps(),
                     "stage_tokens": t.stage_tokens(), "consumed_tokens": t.consumed_tokens,
                     "short_loss": short, "short_loss_before": before,
                     "gate": {**result, "criteria": crit}}
        entry["decision"] = gates.decide(entry["gate"]["passed"], st.gate, attempt)
        self.record.add_attempt(st.index, entry)
        if ranks.is_rank0():
            loss = "" if entry["short_loss"] is None else (
                f", short-context loss {entry['short_loss']:.4f}")
            log.info("stage %s attempt %d at step %d: gate %s%s -> %s", st.name, attempt, t.step,
                     "passed" if entry["gate"]["passed"] else "FAILED", loss, entry["decision"])
        return entry

    def _gate_stop(self, st: StagePlan, entry: dict) -> int:
        t = self.trainer
        assert t is not None
        ckpt = t.checkpointing.manager.dir / iter_name(t.step)
        msg = (f"curriculum stopped: stage '{st.name}' failed its gate after "
               f"{entry['attempt']} retries ({'; '.join(entry['gate']['reasons'])}). Its "
               f"stage-final checkpoint {ckpt} is kept: relaunching the same command continues "
               f"from it once the recipe changes (curriculum.stages.{st.index}.gate: a threshold, "
               "max_retries, on_fail=continue).")
        self.record.finish("stopped", msg)
        if ranks.is_rank0():
            log.error("%s", msg)
        return GATE_STOP_EXIT_CODE

    def _interrupted(self, st: StagePlan) -> int:
        """A signal (already saved) or the stability guard stopped the stage."""
        t = self.trainer
        assert t is not None
        t.checkpointing.finish(t)
        code = preemption.exit_code() or GUARD_STOP_EXIT_CODE
        self.record.finish("interrupted", f"stage '{st.name}' stopped at step {t.step} "
                                          f"(exit status {code})")
        return code


def _layout(cfg: RecipeConfig) -> str:
    return ParallelDims.of(cfg.parallel).describe()
