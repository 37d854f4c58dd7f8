"""Training checkpoints: atomic save, verification, resume from the newest valid one, retention.

    <run.dir>/checkpoints/
      iter_0000010/
        model/             dist_checkpointing (torch_dist): model + optimizer state, reshardable
        train_state.json   step, consumed samples/tokens (total and per stage), AdamW step,
                           data-set state, stability-guard state, layout it was saved under
        rng/rank_00000.pt  RNG states of each rank (python, numpy, torch CPU/CUDA, megatron)
        config.yaml        the resolved recipe (`model_checkpoint.load_model_checkpoint` reads it)
        run_info.json      git SHA, package versions, argv
        manifest.json      every file's size and sha256; written last; `keep` for stage-final
      latest               "iter_0000010": written (latest.tmp + os.replace) after the rename

A save goes to `.tmp_iter_XXXXXXX/`, every rank writes its part, a barrier, the manifest is
hashed (shared out over ranks) and written by rank 0, the directory is renamed, then `latest`
is replaced; only then are old checkpoints beyond `keep_last` removed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from omegaconf import OmegaConf
from torch.distributed.checkpoint.api import CheckpointException

from exaone_train.checkpoint import optimizer_state, preemption, progress, verify
from exaone_train.checkpoint.model_state import check_compatible, load_model_into
from exaone_train.config.schema import RecipeConfig
from exaone_train.config.validate import validate_checkpoint_config
from exaone_train.errors import CheckpointError
from exaone_train.parallel import ranks
from exaone_train.parallel.state import current_dims, rank_prefix
from exaone_train.parallel.state import device as rank_device

log = logging.getLogger("exaone_train")

MODEL_DIR, TRAIN_STATE, RNG_DIR, LATEST = "model", "train_state.json", "rng", "latest"
FAULT_ENV = "EXAONE_TRAIN_FAULT"  # test hook, see docs/CHECKPOINTS.md


def iter_name(step: int) -> str:
    return f"iter_{step:07d}"





def start_writer_helper() -> None:
    """Start megatron's checkpoint-writer helper with our signals blocked (kept from then on).
    The torch_dist writer reports results through a multiprocessing Manager it spawns at the
    first save and keeps (`filesystem_async._get_write_results_queue`). Spawned with the default
    action for USR1, it died of the first step-wide USR1 (Slurm's time-limit warning relayed by
    slurm/train.sh): the save that signal asked for then failed on one rank with BrokenPipeError
    while the other ranks waited in the save's barrier, a hang until the time limit
    (tests/slurm/test_curriculum_sbatch.py)."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    preemption.blocked_while(filesystem_async._get_write_results_queue)


def _all_ok(ok: bool) -> bool:
    """True iff every rank says ok (collective)."""
    if not dist.is_initialized():
        return ok
    t = torch.tensor([0.0 if ok else 1.0], device=rank_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item() == 0.0


def rng_state() -> dict:
    from megatron.core import tensor_parallel

    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    try:
        state["megatron_tracker"] = tensor_parallel.get_cuda_rng_tracker().get_states()
    except Exception:  # noqa: BLE001 - the tracker may be uninitialised; nothing to restore
        pass
    return state


def set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])
    if "megatron_tracker" in state:
        tensor_parallel.get_cuda_rng_tracker().set_states(state["megatron_tracker"])


def layout() -> dict:
    """The layout a checkpoint was saved under (train_state.json, manifest.json)."""
    d = current_dims()
    return {"world_size": d.world_size, "tp": d.tp, "pp": d.pp, "ep": d.ep, "dp": d.dp}


def _fault(point: str, step: int) -> None:
    """Test hook: `EXAONE_TRAIN_FAULT=<point>` or `<point>@<step>` kills this process (as
    SIGKILL would, no cleanup) at that point of a save. Points: kill_during_save (after the
    model/optimizer files, before the train state and manifest), kill_before_rename."""
    if os.environ.get(FAULT_ENV) in (point, f"{point}@{step}"):
        log.error("%s set to %s: killing this process (test hook)", FAULT_ENV, point)
        os._exit(137)


class Checkpointable(Protocol):
    """What a checkpoint holds (the trainer implements it): the model chunks and optimizer,
    written sharded, and a JSON-able state dict (train_state.json, with its `step`)."""

    model: list
    optimizer: Any

    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict, load_data: bool = True) -> None: ...


class CheckpointManager:
    """Saves, finds, verifies and loads the training checkpoints of one run directory."""

    def __init__(self, cfg: RecipeConfig, run_dir: str | Path) -> None:
        validate_checkpoint_config(cfg.checkpoint)
        self.recipe, self.cfg = cfg, cfg.checkpoint
        self.dir = Path(run_dir) / "checkpoints"
        self.last_saved_step: int | None = None
        self.last_save_time = time.monotonic()

    # ---- finding -------------------------------------------------------------------------
    def candidates(self) -> list[Path]:
        """iter_* directories, newest first."""
        if not self.dir.is_dir():
            return []
        found = [p for p in self.dir.iterdir() if p.is_dir() and p.name.startswith("iter_")
                 and p.name[5:].isdigit()]
        return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)

    def latest_valid(self) -> Path | None:
        """The newest checkpoint that verifies (collective); a bad one is named and skipped."""
        for path in self.candidates():
            problems = verify.verify(path, checksums=self.cfg.verify_on_load == "sha256",
                                     progress=True)
            if not problems:
                return path
            if ranks.rank() == 0:
                log.warning("checkpoint %s does not verify, skipping it: %s", path,
                            "; ".join(problems[:5]))
        return None

    # ---- saving --------------------------------------------------------------------------
    def save(self, source: Checkpointable, final: bool = False) -> Path:
        """Save `source` (the trainer) at its current step (collective). Returns the checkpoint
        directory."""
        t0 = time.perf_counter()
        train_state = source.state_dict()
        step = int(train_state["step"])
        name = iter_name(step)
        tmp, dest = self.dir / f".tmp_{name}", self.dir / name
        self._prepare_tmp(tmp)
        # collective: before any failure (with the distributed optimizer rank 0 may own no
        # AdamW parameter)
        train_state.update(adamw_step=optimizer_state.adamw_step(source.optimizer), layout=layout())
        start_writer_helper()
        err, expected = "", self._model_bytes(self.candidates()[:1])
        try:
            with progress.sampled(f"checkpoint write {name}", lambda: progress.dir_bytes(
                    tmp / MODEL_DIR), expected, ranks.rank() == 0):
                dist_checkpointing.save(optimizer_state.full_state(source.model, source.optimizer),
                                        str(tmp / MODEL_DIR), sharded_strategy=("torch_dist", 1),
                                        async_sharded_save=False)
            _fault("kill_during_save", step)
            self._write_rank_files(train_state, tmp)
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - disk full / read-only
            # arrive wrapped in torch DCP's CheckpointException (a BaseException)
            err = f"{type(e).__name__}: {e}"
        if not _all_ok(not err):
            if ranks.rank() == 0:
                shutil.rmtree(tmp, ignore_errors=True)  # never a checkpoint; frees the space
            why = err or "failed on another rank"
            raise CheckpointError(f"could not write checkpoint {tmp}: {why} (disk full or "
                                  f"read-only?). Older checkpoints in {self.dir} are untouched.")
        t_write = time.perf_counter() - t0
        info = {"step": step, "keep": bool(final), "saved_unix": time.time(),
                "layout": layout()}
        manifest = verify.write_manifest(tmp, info, progress=True)
        _fault("kill_before_rename", step)
        self._publish(tmp, dest)
        self.last_saved_step, self.last_save_time = step, time.monotonic()
        if ranks.rank() == 0:
            dt = time.perf_counter() - t0
            gib = manifest["total_bytes"] / 2**30
            log.info("%s checkpoint %s saved: %.3f GiB in %d files, %.1fs (write %.1fs, "
                     "%.2f GiB/s)%s", rank_prefix(), dest, gib, len(manifest["files"]), dt,
                     t_write, gib / max(t_write, 1e-9), " [keep]" if final else "")
        self.apply_retention()
        return dest

    @staticmethod
    def _model_bytes(paths: list[Path]) -> int | None:
        """Size of the model/ files of the first checkpoint in `paths` (its manifest): about
        what the next save writes; None without one (the bar shows bytes only)."""
        manifest = verify.read_manifest(paths[0]) if paths else None
        if manifest is None:
            return None
        return sum(e["bytes"] for rel, e in manifest["files"].items()
                   if rel.startswith(MODEL_DIR + os.sep))

    def _prepare_tmp(self, tmp: Path) -> None:
        ok, err = True, ""
        if ranks.rank() == 0:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                if tmp.exists():  # left by a crashed save of this step: never a checkpoint
                    shutil.rmtree(tmp)
                (tmp / RNG_DIR).mkdir(parents=True)
                (tmp / MODEL_DIR).mkdir()
            except OSError as e:
                ok, err = False, str(e)
        if not _all_ok(ok):
            raise CheckpointError(f"cannot create checkpoint directory {tmp}: {err or 'see rank 0'}"
                                  f" (disk full or read-only?). Older checkpoints in {self.dir} "
                                  "are untouched.")

    def _write_rank_files(self, train_state: dict, tmp: Path) -> None:
        torch.save(rng_state(), tmp / RNG_DIR / f"rank_{ranks.rank():05d}.pt")
        if ranks.rank() != 0:
            return
        verify.write_json_durable(tmp / TRAIN_STATE, train_state)
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(self.recipe)))
        from exaone_train.train.run_dir import run_info

        (tmp / "run_info.json").write_text(json.dumps(run_info(), indent=2))

    def _publish(self, tmp: Path, dest: Path) -> None:
        """Rename the verified temporary directory into place, then replace `latest`."""
        ok, err = True, ""
        if ranks.rank() == 0:
            try:
                if dest.exists():  # e.g. a corrupt one of the same step: set aside, not deleted
                    aside = dest.with_name(f".replaced_{dest.name}_{int(time.time())}")
                    log.warning("checkpoint %s exists; moving it to %s", dest, aside)
                    os.replace(dest, aside)
                os.replace(tmp, dest)
                verify.fsync_dir(self.dir)
                latest_tmp = self.dir / (LATEST + ".tmp")
                with open(latest_tmp, "w") as f:
                    f.write(dest.name + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(latest_tmp, self.dir / LATEST)
                verify.fsync_dir(self.dir)
            except OSError as e:
                ok, err = False, str(e)
        if not _all_ok(ok):
            raise CheckpointError(f"could not publish checkpoint {dest}: {err or 'see rank 0'}")

    def apply_retention(self) -> None:
        """Remove checkpoints beyond the newest `keep_last` (never `keep` ones), and stale
        temporary directories. Runs only after a newer checkpoint verified and was published."""
        if ranks.rank() == 0:
            valid_newest = self.candidates()
            for old in valid_newest[self.cfg.keep_last:]:
                manifest = verify.read_manifest(old)
                if manifest is not None and manifest.get("keep"):
                    continue
                self._remove(old)
            for stale in self.dir.glob(".tmp_iter_*"):
                self._remove(stale)
        ranks.barrier()

    @staticmethod
    def _remove(path: Path) -> None:
        # rename first: a half-deleted directory must never look like a checkpoint
        doomed = path.with_name(f".deleting_{path.name}")
        try:
            os.replace(path, doomed)
            shutil.rmtree(doomed)
            log.info("removed old checkpoint %s", path)
        except OSError as e:
            log.warning("could not remove %s: %s", path, e)

    def mark_keep(self, step: int) -> None:
        """Flag an existing checkpoint as stage-final (kept by retention); rank 0 rewrites its
        manifest atomically (the `keep` flag is not hashed)."""
        path = self.dir / iter_name(step)
        manifest = verify.read_manifest(path)
        if ranks.rank() == 0 and manifest is not None and not manifest.get("keep"):
            manifest["keep"] = True
            verify.write_json_durable(path / verify.MANIFEST, manifest)
        ranks.barrier()

    # ---- loading -------------------------------------------------------------------------
    def resume_path(self) -> Path | None:
        """`checkpoint.load_from` if set, else the newest valid checkpoint of this run."""
        if self.cfg.load_from:
            path = Path(self.cfg.load_from)
            problems = verify.verify(path, checksums=self.cfg.verify_on_load == "sha256",
                                     progress=True)
            if problems:
                raise CheckpointError(f"checkpoint.load_from={path} does not verify: "
                                      + "; ".join(problems[:5]))
            return path
        return self.latest_valid() if self.cfg.resume else None

    def load(self, target: Checkpointable, path: Path, load_data: bool = True) -> dict:
        """Load model, optimizer and train state into `target` (the trainer; collective);
        returns this rank's RNG state (or {}), to apply when the loop starts. `load_data=False`:
        the checkpoint is of an earlier curriculum stage; the trainer's data stays at sample 0."""
        t0 = time.perf_counter()
        check_compatible(target.model, path / MODEL_DIR)
        state = json.loads((path / TRAIN_STATE).read_text())
        request = optimizer_state.full_state(target.model, target.optimizer)
        try:  # bytes read, no total: this process reads metadata and its share, some twice
            with progress.sampled(f"checkpoint load {path.name}", progress.bytes_read, None,
                                  ranks.rank() == 0):
                loaded = dist_checkpointing.load(request, str(path / MODEL_DIR))
        except Exception as e:  # noqa: BLE001 - megatron raises several types; name the file
            raise CheckpointError(f"{path}: could not be loaded: {type(e).__name__}: {e}") from e
        load_model_into(target.model, loaded)
        optimizer_state.load_optimizer_from(target.optimizer, loaded["optimizer"],
                                            state["adamw_step"])
        target.load_state_dict(state, load_data)
        self.last_saved_step, self.last_save_time = int(state["step"]), time.monotonic()
        rng = self._rng_of(path, state.get("layout"))
        if ranks.rank() == 0:
            log.info("%s resumed from %s at step %d (%d tokens) in %.1fs", rank_prefix(), path,
                     state["step"], state["consumed_tokens"], time.perf_counter() - t0)
        return rng

    @staticmethod
    def _rng_of(path: Path, saved_layout: dict | None) -> dict:
        """This rank's saved RNG states; {} (with a warning) when the layout changed."""
        rng_file = path / RNG_DIR / f"rank_{ranks.rank():05d}.pt"
        if saved_layout == layout() and rng_file.is_file():
            return torch.load(rng_file, weights_only=False)
        if ranks.rank() == 0:
            log.warning("checkpoint layout %s differs from this run's %s: RNG states are not "
                        "restored (model, optimizer, data order and LR are)", saved_layout,
                        layout())
        return {}
