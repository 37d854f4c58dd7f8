"""A run directory: config.yaml (resolved), run_info.json (git SHA, package versions, command),
metrics.jsonl, checkpoints/. Rank 0 writes; others wait at a barrier."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from omegaconf import OmegaConf

from exaone_train import console
from exaone_train.config.schema import RecipeConfig
from exaone_train.errors import ConfigError
from exaone_train.parallel import ranks

_PACKAGES = ("torch", "megatron-core", "transformers", "datasets", "tokenizers", "hydra-core",
             "transformer-engine", "exaone-train")


def git_sha() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def run_info() -> dict:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"git_sha": git_sha(), "python": platform.python_version(), "argv": sys.argv,
            "packages": versions,
            "world_size": ranks.world_size()}


def check_run_dir(run_dir: Path) -> None:
    """ConfigError when `run.dir` (or a parent) is a file. Every rank checks, so every rank
    raises and none waits at rank 0's barrier."""
    for path in (run_dir, *run_dir.parents):
        if path.exists():
            if not path.is_dir():
                raise ConfigError("run.dir", str(run_dir),
                                  f"{path} is a file, not a directory; choose another run.dir")
            return


def prepare_run_dir(cfg: RecipeConfig) -> Path:
    run_dir = Path(cfg.run.dir)
    check_run_dir(run_dir)
    if ranks.is_rank0():
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
            (run_dir / "run_info.json").write_text(json.dumps(run_info(), indent=2))
        except OSError as e:  # read-only, no permission, disk full
            raise ConfigError("run.dir", str(run_dir), f"cannot be written: {e}") from None
    ranks.barrier()
    console.attach_run_log(run_dir, f"rank{ranks.rank()}")
    return run_dir
