"""The trainer: what runs inside every rank. `main(cfg)` reads like the recipe:
parallel init -> model -> optimizer and schedule -> data -> restore -> loop."""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path
from typing import Any

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel as DDP
from megatron.core.distributed import DistributedDataParallelConfig, finalize_model_grads
from omegaconf import OmegaConf

from exaone_train.config.schema import RecipeConfig
from exaone_train.config.validate import validate_batching as _batching_rules
from exaone_train.config.validate import validate_data_stage
from exaone_train.errors import ConfigError
from exaone_train.model.builder import build_model
from exaone_train.model.counts import training_flops_per_token
from exaone_train.parallel import state
from exaone_train.train import callbacks as cb
from exaone_train.train.hooks import callback_states, load_callback_states
from exaone_train.train.run_dir import prepare_run_dir
from exaone_train.train.step import StepResult, collate, thd_tp_split, train_step

log = logging.getLogger("exaone_train")
RESULTS_KEPT = 10_000


def build_model_chunks(cfg: RecipeConfig) -> list[DDP]:
    """This rank's model chunks (one per virtual pipeline stage), wrapped in megatron DDP."""
    p = cfg.parallel
    chunks = [build_model(cfg.model, p, cfg.precision, vp_stage=v if p.virtual_pp else None)
              for v in range(p.virtual_pp or 1)]
    # parallel.distributed_optimizer shards the optimizer by whole parameters
    # (optim.layer_wise), which needs DDP's plain all-reduce of full grads on every rank.
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=False)
    wrapped = [DDP(config=c.config, ddp_config=ddp_cfg, module=c,
                   disable_bucketing=(i > 0)) for i, c in enumerate(chunks)]
    config = wrapped[0].config
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = [w.no_sync for w in wrapped] if len(wrapped) > 1 else wrapped[0].no_sync
    return wrapped


def build_optimizer(cfg: RecipeConfig, chunks: list[DDP]):
    from exaone_train.optim import build_megatron_optimizer

    return build_megatron_optimizer(chunks, cfg.optim, cfg.parallel.distributed_optimizer)


def schedule_config(cfg: RecipeConfig):
    """The recipe's schedule with total_tokens filled in from the run length when unset."""
    import dataclasses

    sched = cfg.optim.schedule
    if sched.total_tokens is None:
        t = cfg.train
        total = t.train_tokens or (t.train_steps or 0) * t.global_batch_samples * t.seq_length_tokens
        sched = dataclasses.replace(sched, total_tokens=total)
    return dataclasses.replace(cfg.optim, schedule=sched)


def build_data(cfg: RecipeConfig):
    t = cfg.train
    if t.data_source == "synthetic":
        from exaone_train.train.synthetic import SyntheticStageDataset

        return SyntheticStageDataset(t.seq_length_tokens, cfg.model.vocab_size, cfg.seed)
    if t.data_source == "pipeline":
        from data_pipeline import build_stage_dataset

        return build_stage_dataset(stage_data_config(cfg), seed=cfg.data.seed)
    raise ConfigError("train.data_source", t.data_source, "must be 'pipeline' or 'synthetic'")


def stage_data_config(cfg: RecipeConfig):
    """The data stage this run reads (validate()'s rule again: a curriculum stage switches it)."""
    validate_data_stage(cfg)
    return cfg.data.stages[cfg.train.data_stage]


AUTO = "auto"  # Trainer(resume_from=AUTO): the newest valid checkpoint of the run directory


class Trainer:
    """One rank's training state and loop. A plain run trains one stage (`train:`); the
    curriculum driver switches stages in place (`begin_stage`), keeping model and optimizer.

    Counters: `step`, `consumed_samples`, `consumed_tokens` run over the whole run;
    `stage_start` holds their values when the current stage began, so `stage_steps()` etc. and
    the stage's data position are local to the stage. The LR position is `schedule_position()`.
    """

    def __init__(self, cfg: RecipeConfig, run_dir: Path, resume_from: Path | str | None = AUTO,
                 load_data: bool = True) -> None:
        """`resume_from`: AUTO (the newest valid checkpoint, per `checkpoint.*`), a checkpoint
        directory, or None (start fresh). `load_data=False` leaves this stage's data at sample 0
        (the checkpoint is of an earlier curriculum stage)."""
        self.cfg, self.run_dir = cfg, run_dir
        self.model = build_model_chunks(cfg)
        if cfg.train.init_from:
            from exaone_train.checkpoint.model_state import load_model_state

            load_model_state(self.model, cfg.train.init_from)
        self.optimizer = build_optimizer(cfg, self.model)
        from exaone_train.optim import WSDSchedule, lr_at

        self.optim_cfg = schedule_config(cfg)
        self.schedule = WSDSchedule(self.optimizer, self.optim_cfg)
        self._lr_at = lr_at
        self.data = build_data(cfg)
        self.step, self.consumed_samples, self.consumed_tokens = 0, 0, 0
        self.stage_name = "main"
        self.stage_start = {"step": 0, "samples": 0, "tokens": 0}
        self.stage_progress: dict[str, dict] = {}  # per-stage counters (train_state.json)
        self.schedule_span: tuple[int, int] | None = None  # (start, length) on the schedule
        self.curriculum_state: dict | None = None  # the driver's position (train_state.json)
        self.metrics: dict[str, Any] = {}
        # The newest step results (fit() returns them; tests compare layouts). Bounded: a run of
        # millions of steps must not grow memory; metrics.jsonl holds the whole history.
        self.results: deque[StepResult] = deque(maxlen=RESULTS_KEPT)
        self.prefix = state.rank_prefix()
        self._set_batching()
        self.guard = cb.StabilityGuard(cfg.guard)
        self.callbacks = self._callbacks()
        # resumes from a checkpoint (AUTO: the newest valid one)
        self.checkpointing = self._checkpointing(resume_from, load_data)

    def _set_batching(self) -> None:
        dp = parallel_state.get_data_parallel_world_size()
        t = self.cfg.train
        self.micro_batches = validate_batching(self.cfg, dp)
        self.global_batch_tokens = t.global_batch_samples * t.seq_length_tokens
        # tokens this rank feeds through the model per step (CP ranks hold 1/cp of each sample)
        self.local_tokens = self.global_batch_tokens // (
            dp * parallel_state.get_context_parallel_world_size())

    def _callbacks(self) -> list[cb.Callback]:
        from exaone_train.train.hardware import mfu_peak_flops

        c = self.cfg
        flops = training_flops_per_token(c.model, c.train.seq_length_tokens)
        peak = mfu_peak_flops(c.logging.gpu_type)
        cbs: list[cb.Callback] = [cb.Throughput(flops, peak), self.guard]
        if c.model.num_experts:
            cbs.append(cb.MoEStats(self.model))
        cbs += [cb.ConsoleLogger(c.logging), cb.JsonlLogger(self.run_dir)]
        if c.logging.wandb and c.logging.wandb_mode != "disabled":
            cbs.append(cb.WandbLogger(c.logging, self.run_dir, OmegaConf.to_container(
                OmegaConf.structured(c))))
        return cbs

    def _checkpointing(self, resume_from: Path | str | None, load_data: bool):
        from exaone_train.checkpoint.callback import CheckpointCallback
        from exaone_train.checkpoint.manager import CheckpointManager

        ckpt = CheckpointCallback(CheckpointManager(self.cfg, self.run_dir))
        if resume_from == AUTO:
            ckpt.restore(self)
        elif resume_from is not None:
            ckpt.restore(self, Path(resume_from), load_data=load_data)
        self.callbacks.append(ckpt)
        return ckpt

    # ---- stages --------------------------------------------------------------------------
    def stage_steps(self) -> int:
        return self.step - self.stage_start["step"]

    def stage_tokens(self) -> int:
        return self.consumed_tokens - self.stage_start["tokens"]

    def enter_stage(self, name: str, schedule_span: tuple[int, int] | None) -> None:
        """Start counting a new stage here (its data must be at sample 0)."""
        if self.stage_steps() > 0:  # the finished stage's counters stay in train_state.json
            self.stage_progress[self.stage_name] = self._stage_counters()
        self.stage_name, self.schedule_span = name, schedule_span
        self.stage_start = {"step": self.step, "samples": self.consumed_samples,
                            "tokens": self.consumed_tokens}
        self.guard.history.clear()  # the loss level moves with data and length: a new window

    def _stage_counters(self) -> dict:
        return {"steps": self.stage_steps(),
                "consumed_samples": self.consumed_samples - self.stage_start["samples"],
                "consumed_tokens": self.stage_tokens()}

    def begin_stage(self, cfg: RecipeConfig, name: str,
                    schedule_span: tuple[int, int] | None) -> None:
        """Switch this process to another stage of the same layout: model, optimizer and
        schedule carry over; `cfg.train` (data stage, length, batch) takes effect and the
        stage's data starts at sample 0."""
        if cfg.parallel != self.cfg.parallel:
            raise ConfigError("parallel", cfg.parallel,
                              "a stage of another layout needs a new Trainer (curriculum driver)")
        self.cfg = cfg
        self.checkpointing.manager.recipe = cfg  # config.yaml of the next checkpoints
        self.data = build_data(cfg)
        self._set_batching()
        for c in self.callbacks:
            if isinstance(c, cb.Throughput):
                c.flops_per_token = training_flops_per_token(cfg.model, cfg.train.seq_length_tokens)
        self.enter_stage(name, schedule_span)

    def set_stage_tokens(self, train_tokens: int) -> None:
        """Train the current stage up to `train_tokens` (a retry extends it)."""
        import dataclasses

        self.cfg = dataclasses.replace(
            self.cfg, train=dataclasses.replace(self.cfg.train, train_tokens=train_tokens,
                                                train_steps=None))
        self.checkpointing.manager.recipe = self.cfg

    def schedule_position(self) -> int:
        """Tokens into the WSD schedule: the consumed tokens; inside a curriculum stage, its
        planned start plus its tokens, held at its planned end (retries train at that LR)."""
        if self.schedule_span is None:
            return self.consumed_tokens
        start, length = self.schedule_span
        return start + min(self.stage_tokens(), length)

    # ---- state (train_state.json) ----------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything but model and optimizer that an exact resume needs (JSON-able): the
        counters, per-stage progress, LR position, data position, each callback's state and
        the curriculum driver's position."""
        out = {"step": self.step, "consumed_samples": self.consumed_samples,
               "consumed_tokens": self.consumed_tokens, "stage": self.stage_name,
               "stages": {**self.stage_progress, self.stage_name: self._stage_counters()},
               "stage_start": dict(self.stage_start),
               "schedule": {"consumed_tokens": self.schedule_position()},
               "data": self.data.state_dict(), "callbacks": callback_states(self.callbacks)}
        if self.curriculum_state is not None:
            out["curriculum"] = self.curriculum_state
        return out

    def load_state_dict(self, state: dict, load_data: bool = True) -> None:
        """Restore `state_dict()`'s output. `load_data=False` leaves this stage's data at
        sample 0 (the state is of an earlier curriculum stage)."""
        self.step = int(state["step"])
        self.consumed_samples = int(state["consumed_samples"])
        self.consumed_tokens = int(state["consumed_tokens"])
        self.stage_progress = state.get("stages", {})
        self.stage_name = state.get("stage", self.stage_name)
        self.stage_start = dict(state.get("stage_start", self.stage_start))
        self.curriculum_state = state.get("curriculum")
        if load_data:
            self.data.load_state_dict(state["data"])
        # checkpoints written before callbacks saved their own state held the guard's alone
        saved = state["callbacks"] if "callbacks" in state else {self.guard.key(): state["guard"]}
        load_callback_states(self.callbacks, saved)

    def next_batches(self) -> list:
        """This DP rank's micro-batches of the next global batch (world-size-free order)."""
        t = self.cfg.train
        first = self.data.consumed_samples  # the stage's own position (per-stage sampler state)
        indices = range(first, first + t.global_batch_samples)
        mine = self.data.rank_slice(indices, parallel_state.get_data_parallel_rank(),
                                    parallel_state.get_data_parallel_world_size())
        mb = t.micro_batch_samples
        cp_size = parallel_state.get_context_parallel_world_size()
        cp_rank = parallel_state.get_context_parallel_rank()
        thd = thd_tp_split(self.cfg)
        return [collate([self.data[i] for i in mine[k:k + mb]], t.document_attention_mask,
                        cp_size, cp_rank, thd) for k in range(0, len(mine), mb)]

    def done(self) -> bool:
        t = self.cfg.train
        if t.train_steps is not None and self.stage_steps() >= t.train_steps:
            return True
        return t.train_tokens is not None and self.stage_tokens() >= t.train_tokens

    def train_one_step(self) -> StepResult:
        position = self.schedule_position()
        self.schedule.step(position)
        self.metrics = {"lr": self._lr_at(position, self.optim_cfg)}
        for c in self.callbacks:
            c.on_step_start(self)
        result = train_step(self.model, self.optimizer, self.next_batches(),
                            self.cfg.train.seq_length_tokens, self.cfg.train.micro_batch_samples,
                            self.guard.check_loss)
        self.step += 1
        self.consumed_samples += self.cfg.train.global_batch_samples
        self.data.advance(self.cfg.train.global_batch_samples)
        self.consumed_tokens += self.global_batch_tokens
        self.results.append(result)
        for c in self.callbacks:
            c.on_step_end(self, result)
        return result

    def start(self) -> None:
        for c in self.callbacks:
            c.on_train_start(self)

    def end(self) -> None:
        for c in self.callbacks:
            c.on_train_end(self)

    def train_until_done(self) -> bool:
        """Steps until `done()`; False when a callback stopped the run (signal, guard)."""
        try:
            while not self.done():
                self.train_one_step()
        except cb.StopTraining as stop:
            log.warning("%s stopping: %s", self.prefix, stop)
            return False
        return True

    def fit(self) -> list[StepResult]:
        """The loop. Returns the last RESULTS_KEPT steps' results (tests compare layouts)."""
        self.start()
        try:
            self.train_until_done()
        finally:
            self.end()
        self.checkpointing.finish(self)  # reached only without an error
        return list(self.results)


def validate_batching(cfg: RecipeConfig, dp: int) -> int:
    """Micro-batches per step on each DP rank (ConfigError when the schedule cannot run)."""
    t = cfg.train
    return _batching_rules(t.global_batch_samples, t.micro_batch_samples, dp, cfg.parallel)


def main(cfg: RecipeConfig) -> list[StepResult]:
    state.setup(cfg.parallel, cfg.seed)
    validate_batching(cfg, parallel_state.get_data_parallel_world_size())
    run_dir = prepare_run_dir(cfg)
    trainer = Trainer(cfg, run_dir)
    torch.manual_seed(cfg.seed + parallel_state.get_data_parallel_rank())
    return trainer.fit()
