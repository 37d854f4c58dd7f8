"""The torchrun command for one node, and running it so that the trainer's exit status survives.

    torchrun --nnodes N --nproc-per-node G --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
             --rdzv-id JOBID -m launcher COMMAND --recipe R overrides...

COMMAND is what every rank runs: `train` (one stage, the recipe's `train:` section) or
`curriculum` (the recipe's whole curriculum, stage by stage; `slurm/pretrain_kexaone.sh`).

`exaone-train launch` prints it (`--dry-run`) or runs it. Running goes through
`torch.distributed.run` in this process (the same code the `torchrun` script calls) for two
reasons a plain exec cannot satisfy:

* exit status: torchrun turns any failed worker into status 1. The trainer exits 3 after a
  signal-triggered checkpoint ("please requeue"); we return 3 when every worker that exited
  by itself exited 3 (`exit_code_of_failures`), so `slurm/train.sh` can requeue. torchrun
  stops the remaining workers as soon as one exits, so the trainer must finish its save on
  every rank (a barrier) before any rank exits 3.
* SIGUSR1: torchrun does not handle it, and its default action would kill the agent. The
  agent ignores it (`ignore_sigusr1()`, as early as the command starts); the ranks inherit
  the ignored disposition until the trainer installs its handler, so a warning that arrives
  while a rank is still importing is lost rather than fatal. Slurm delivers a step signal
  (`scancel --signal`, srun's relay of `--signal` from train.sh) to every process of the
  step with proctrack/cgroup or proctrack/linuxproc, so the ranks receive it directly; the
  agent does not relay it (a relaying handler would reset the ranks' inherited disposition
  to "terminate" at exec).

Values not given on the command line come from the environment Slurm and slurm/train.sh set:
SLURM_JOB_NUM_NODES, SLURM_GPUS_ON_NODE, MASTER_ADDR/MASTER_PORT, SLURM_JOB_ID.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from exaone_train.errors import ConfigError

REQUEUE_EXIT_CODE = 3  # the trainer's "checkpoint saved after a signal: please requeue"
DEFAULT_PORT = 29500
RANK_COMMANDS = ("train", "curriculum")  # `exaone-train <command>` run in every rank


@dataclass
class LaunchSpec:
    """What one node's torchrun needs. `command` is the rank command (`train` | `curriculum`);
    `train_cmd` replaces `python -m launcher <command>` (a test hook; EXAONE_TRAIN_CMD);
    `--recipe R` and the overrides are appended either way."""

    nnodes: int
    nproc_per_node: int | str
    rdzv_endpoint: str
    rdzv_id: str
    recipe: str | None = None
    overrides: list[str] = field(default_factory=list)
    train_cmd: list[str] | None = None
    max_restarts: int = 0
    command: str = "train"


def spec_from_env(env: Mapping[str, str] | None = None, **given: object) -> LaunchSpec:
    """A LaunchSpec from explicit values (None = not given), else Slurm's environment."""
    env = os.environ if env is None else env
    nnodes = given.get("nnodes") or env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1
    nproc = (given.get("nproc_per_node") or env.get("EXAONE_GPUS_PER_NODE")
             or _first_count(env.get("SLURM_GPUS_ON_NODE")) or "auto")
    endpoint = given.get("rdzv_endpoint") or (
        f"{env['MASTER_ADDR']}:{env.get('MASTER_PORT', DEFAULT_PORT)}"
        if env.get("MASTER_ADDR") else f"localhost:{DEFAULT_PORT}")
    train_cmd = given.get("train_cmd") or env.get("EXAONE_TRAIN_CMD") or None
    command = given.get("command") or env.get("EXAONE_RANK_COMMAND") or "train"
    spec = LaunchSpec(
        nnodes=int(str(nnodes)),
        nproc_per_node=int(str(nproc)) if str(nproc).isdigit() else str(nproc),
        rdzv_endpoint=str(endpoint),
        rdzv_id=str(given.get("rdzv_id") or env.get("SLURM_JOB_ID") or "exaone-train"),
        recipe=given.get("recipe"),  # type: ignore[arg-type]
        overrides=list(given.get("overrides") or []),  # type: ignore[call-overload]
        train_cmd=shlex.split(str(train_cmd)) if train_cmd else None,
        max_restarts=int(str(given.get("max_restarts") or 0)),
        command=str(command),
    )
    check_spec(spec)
    return spec


def _first_count(value: str | None) -> str | None:
    """SLURM_GPUS_ON_NODE is an int; tolerate 'type:count' forms some sites export."""
    return value.rsplit(":", 1)[-1] if value else None


def check_spec(spec: LaunchSpec) -> None:
    if spec.nnodes < 1:
        raise ConfigError("nnodes", spec.nnodes, "must be >= 1")
    if isinstance(spec.nproc_per_node, int) and spec.nproc_per_node < 1:
        raise ConfigError("nproc_per_node", spec.nproc_per_node, "must be >= 1")
    if isinstance(spec.nproc_per_node, str) and spec.nproc_per_node not in ("auto", "gpu", "cpu"):
        raise ConfigError("nproc_per_node", spec.nproc_per_node, "must be an int, auto, gpu or cpu")
    host, _, port = spec.rdzv_endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("rdzv_endpoint", spec.rdzv_endpoint, "must be HOST:PORT")
    if spec.command not in RANK_COMMANDS:
        raise ConfigError("command", spec.command, f"the rank command must be one of {RANK_COMMANDS}")
    bad = [o for o in spec.overrides if "=" not in o]
    if bad:
        raise ConfigError("overrides", bad, "Hydra overrides are key=value")


def torchrun_argv(spec: LaunchSpec) -> list[str]:
    """The torchrun command line for one node (argv[0] is 'torchrun')."""
    argv = ["torchrun", "--nnodes", str(spec.nnodes), "--nproc-per-node", str(spec.nproc_per_node),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", spec.rdzv_endpoint,
            "--rdzv-id", spec.rdzv_id, "--max-restarts", str(spec.max_restarts)]
    if spec.train_cmd:
        argv += ["--no-python", *spec.train_cmd]
    else:
        argv += ["-m", "launcher", spec.command]
    if spec.recipe:
        argv += ["--recipe", spec.recipe]
    return argv + list(spec.overrides)


def format_command(argv: list[str]) -> str:
    return shlex.join(argv)


def exit_code_of_failures(exit_codes: list[int]) -> int:
    """One status for the node from its failed workers' statuses. torchrun stops the other
    workers (SIGTERM, then SIGKILL) as soon as one fails, so those statuses say nothing: the
    node's status is the common status of the workers that exited by themselves (3 survives),
    1 when they disagree or when every worker was killed by a signal."""
    stopped_by_torchrun = {-int(signal.SIGTERM), -int(signal.SIGKILL)}
    own = {c for c in exit_codes if c not in stopped_by_torchrun}
    if len(own) == 1 and (code := own.pop()) > 0:
        return code
    return 1


def ignore_sigusr1() -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def run_torchrun(argv: list[str]) -> int:
    """Run torchrun `argv` in this process; return the node's exit status (see module doc)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    ignore_sigusr1()
    args = parse_args(argv[1:])
    try:
        run(args)
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        status = exit_code_of_failures(codes)
        print(f"exaone-train launch: workers failed with {sorted(set(codes))}; "
              f"node exit status {status}", file=sys.stderr, flush=True)
        return status
    except SignalException as e:  # SIGTERM/SIGINT/SIGHUP: torchrun already stopped the workers
        print(f"exaone-train launch: agent got {e.sigval.name}", file=sys.stderr, flush=True)
        return 128 + int(e.sigval)
    return 0
