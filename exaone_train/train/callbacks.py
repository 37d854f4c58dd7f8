"""Side concerns of the loop, one callback each: console, metrics.jsonl, wandb, throughput/MFU,
MoE statistics, the stability guard. The loop calls `on_step_end(trainer, result)`; a callback
adds its figures to `trainer.metrics` (one dict per step) or raises `StopTraining`."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from exaone_train.config.schema import GuardConfig, LoggingConfig
from exaone_train.parallel import ranks
from exaone_train.train.hooks import Callback, StopTraining, TrainerView

if TYPE_CHECKING:
    from exaone_train.train.step import StepResult

__all__ = ["Callback", "StopTraining", "StabilityGuard", "Throughput", "MoEStats",
           "ConsoleLogger", "JsonlLogger", "WandbLogger", "is_logging_rank"]

log = logging.getLogger("exaone_train")


def is_logging_rank() -> bool:
    """The last rank holds the loss (last PP stage) and every reduced figure."""
    return ranks.rank() == ranks.world_size() - 1


class StabilityGuard(Callback):
    """Skip a step whose loss is non-finite or spikes beyond `spike_zscore` standard deviations
    of the recent window (decided before the optimizer step, so nothing is applied), or whose
    gradient norm is non-finite; stop the run if too many steps are skipped in the window."""

    def __init__(self, cfg: GuardConfig) -> None:
        self.cfg = cfg
        self.history: deque[float] = deque(maxlen=cfg.spike_window_steps)
        self.recent_skips: deque[int] = deque()
        self.counts = {"nonfinite_loss": 0, "nonfinite_grad": 0, "loss_spike": 0}

    def check_loss(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return "non-finite loss" if self.cfg.skip_nonfinite else None
        if len(self.history) >= self.cfg.spike_min_history:
            mean = sum(self.history) / len(self.history)
            std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / len(self.history))
            if std > 0 and (loss - mean) / std > self.cfg.spike_zscore:
                return f"loss spike ({loss:.4f} vs mean {mean:.4f}, std {std:.4f})"
        return None

    def on_step_end(self, trainer: TrainerView, result: StepResult) -> None:
        step = trainer.step
        if not result.skipped:
            self.history.append(result.loss)
        else:
            key = ("nonfinite_loss" if "non-finite loss" in result.skip_reason else
                   "nonfinite_grad" if "gradient" in result.skip_reason else "loss_spike")
            self.counts[key] += 1
            self.recent_skips.append(step)
            log.warning("%s step %d skipped: %s", trainer.prefix, step, result.skip_reason)
        while self.recent_skips and self.recent_skips[0] <= step - self.cfg.spike_window_steps:
            self.recent_skips.popleft()
        trainer.metrics.update({f"guard/{k}": v for k, v in self.counts.items()})
        if len(self.recent_skips) > self.cfg.max_skips_in_window:
            raise StopTraining(f"{len(self.recent_skips)} steps skipped in the last "
                               f"{self.cfg.spike_window_steps}: stopping cleanly")

    def state_dict(self) -> dict:
        return {"history": list(self.history), "recent_skips": list(self.recent_skips),
                "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.history.extend(state["history"])
        self.recent_skips.extend(state["recent_skips"])
        self.counts.update(state["counts"])


class Throughput(Callback):
    """tokens/s over the global batch and MFU = achieved model FLOPs / peak of all GPUs."""

    def __init__(self, flops_per_token: float, peak_flops_per_gpu: float | None) -> None:
        self.flops_per_token, self.peak = flops_per_token, peak_flops_per_gpu
        self.t0 = time.perf_counter()

    def on_step_start(self, trainer: TrainerView) -> None:
        self.t0 = time.perf_counter()

    def on_step_end(self, trainer: TrainerView, result: StepResult) -> None:
        dt = time.perf_counter() - self.t0
        tokens = trainer.global_batch_tokens
        trainer.metrics["step_time_s"] = dt
        trainer.metrics["tokens_per_s"] = tokens / dt if dt > 0 else 0.0
        if self.peak:
            world = ranks.world_size()
            trainer.metrics["mfu"] = self.flops_per_token * tokens / dt / (self.peak * world)


class MoEStats(Callback):
    """Per MoE layer: expert load (min / max / coefficient of variation over experts),
    dropped assignments (must be 0: dropless), seq-aux loss; and the expert-bias norm.

    Loads come from forward hooks on each router (its routing map), summed over the step's
    micro-batches and over the data-parallel group."""

    def __init__(self, model_chunks: list) -> None:
        from megatron.core.transformer.moe.router import TopKRouter

        self.routers = [(name, m) for chunk in model_chunks for name, m in chunk.named_modules()
                        if isinstance(m, TopKRouter)]
        self.loads: dict[str, torch.Tensor] = {}
        self.expected: dict[str, int] = {}
        for name, router in self.routers:
            router.register_forward_hook(self._hook(name, router))

    def _hook(self, name: str, router):
        def hook(module, inputs, outputs):
            routing_map = outputs[1]
            counts = routing_map.sum(dim=0).detach()
            if name in self.loads:  # in place: fewer ops per micro-batch on the hot path
                self.loads[name].add_(counts)
            else:
                self.loads[name] = counts.double()
            self.expected[name] = self.expected.get(name, 0) + routing_map.shape[0] * router.topk
        return hook

    def on_step_start(self, trainer: TrainerView) -> None:
        self.loads.clear()
        self.expected.clear()

    def on_step_end(self, trainer: TrainerView, result: StepResult) -> None:
        from megatron.core import parallel_state

        routers = [(name, router) for name, router in self.routers if name in self.loads]
        if routers:
            # every layer's loads and sent counts in one all-reduce, read back in one .tolist()
            loads = torch.stack([self.loads[name] for name, _ in routers])  # [layers, experts]
            sent = torch.tensor([float(self.expected[name]) for name, _ in routers],
                                dtype=torch.float64, device=loads.device)
            packed = torch.cat([loads.flatten(), sent])
            dist.all_reduce(packed, group=parallel_state.get_data_parallel_group(
                with_context_parallel=True))
            loads, sent = packed[:loads.numel()].view_as(loads), packed[loads.numel():]
            cv = loads.std(dim=1, unbiased=False) / loads.mean(dim=1).clamp(min=1e-9)
            dropped = sent - loads.sum(dim=1)
            rows = torch.stack([loads.min(dim=1).values, loads.max(dim=1).values, cv, dropped],
                               dim=1).tolist()
            self._layer_metrics(trainer, routers, rows)
        self._aux_losses(trainer)

    @staticmethod
    def _layer_metrics(trainer: TrainerView, routers: list, rows: list[list[float]]) -> None:
        for (name, router), (load_min, load_max, cv, _) in zip(routers, rows, strict=True):
            layer = name.split("layers.")[-1].split(".")[0] if "layers." in name else name
            key = f"moe/layer{layer}"
            trainer.metrics[f"{key}/load_min"] = load_min
            trainer.metrics[f"{key}/load_max"] = load_max
            trainer.metrics[f"{key}/load_cv"] = cv
            if getattr(router, "expert_bias", None) is not None:
                trainer.metrics[f"{key}/bias_norm"] = router.expert_bias.norm().item()
        cvs = [row[2] for row in rows]
        dropped_total = sum(row[3] for row in rows)
        trainer.metrics["moe/load_cv_mean"] = sum(cvs) / len(cvs)
        trainer.metrics["moe/dropped_assignments"] = dropped_total
        if dropped_total != 0:
            log.error("%s dropless routing violated: %d assignments dropped",
                      trainer.prefix, dropped_total)

    @staticmethod
    def _aux_losses(trainer: TrainerView) -> None:
        from megatron.core.transformer.moe import moe_utils
        from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper

        tracker = moe_utils.get_moe_layer_wise_logging_tracker()
        for name, entry in tracker.items():
            values = entry.get("values")
            if values is not None and values.numel():
                moe_layers = values[values != 0]
                trainer.metrics[f"moe/{name}"] = float(moe_layers.mean()) if moe_layers.numel() else 0.0
        moe_utils.clear_aux_losses_tracker()
        mtp = MTPLossLoggingHelper.tracker
        if mtp.get("values") is not None:
            # megatron adds each micro-batch's mean MTP loss: average over micro-batches and DP
            from megatron.core import parallel_state

            value = mtp["values"].sum().double().reshape(1) / max(trainer.micro_batches, 1)
            group = parallel_state.get_data_parallel_group(with_context_parallel=True)
            dist.all_reduce(value, group=group)
            trainer.metrics["mtp_loss"] = float(value) / dist.get_world_size(group)
            MTPLossLoggingHelper.clean_loss_in_tracker()


class ConsoleLogger(Callback):
    def __init__(self, cfg: LoggingConfig) -> None:
        self.every = max(1, cfg.interval_steps)

    def on_step_end(self, trainer: TrainerView, result: StepResult) -> None:
        if trainer.step % self.every and not result.skipped:
            return
        m = trainer.metrics
        mfu = f" mfu {m['mfu']:.1%}" if "mfu" in m else ""
        gn = f"{result.grad_norm:.3f}" if result.grad_norm is not None else "-"
        mtp = f" mtp {m['mtp_loss']:.4f}" if "mtp_loss" in m else ""
        skip = f" SKIPPED ({result.skip_reason})" if result.skipped else ""
        stage = "" if trainer.stage_name == "main" else f" [{trainer.stage_name}]"
        if is_logging_rank():
            log.info("%s step %d%s | loss %.4f%s | lr %.3e | grad %s | %.0f tok/s%s%s",
                     trainer.prefix, trainer.step, stage, result.loss, mtp, m.get("lr", 0.0), gn,
                     m.get("tokens_per_s", 0.0), mfu, skip)


class JsonlLogger(Callback):
    """metrics.jsonl in the run directory: one JSON object per step (last rank writes),
    tagged with the stage ("main" outside a curriculum) and the stage's own step and tokens."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"

    def on_step_end(self, trainer: TrainerView, result: StepResult) -> None:
        if not is_logging_rank():
            return
        record = {"step": trainer.step, "loss": result.loss, "skipped": result.skipped,
                  "grad_norm": result.grad_norm, "consumed_tokens": trainer.consumed_tokens,
                  "stage": trainer.stage_name, "stage_step": trainer.stage_steps(),
                  "stage_tokens": trainer.stage_tokens(), **trainer.metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class WandbLogger(Callback):
    """wandb, offline by default (`logging.wandb_mode=online` to stream)."""

    def __init__(self, cfg: LoggingConfig, run_dir: Path, config: dict) -> None:
        self.cfg, self.run_dir, self.config, self.run = cfg, Path(run_dir), config, None

    def on_train_start(self, trainer: TrainerView) -> None:
        if not is_logging_rank() or self.cfg.wandb_mode == "disabled":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=self.cfg.wandb_project, entity=self.cfg.wandb_entity,
                              dir=str(self.run_dir), mode=self.cfg.wandb_mode,
                              config=self.config, name=self.run_dir.name, resume="allow",
                              id=f"{self.run_dir.name}")

    def on_step_end(self, trainer: TrainerView, result: StepResult) -> None:
        if self.run is not None:
            self.run.log({"loss": result.loss, "grad_norm": result.grad_norm or 0.0,
                          **trainer.metrics}, step=trainer.step)

    def on_train_end(self, trainer: TrainerView) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
