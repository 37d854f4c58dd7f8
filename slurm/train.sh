#!/usr/bin/env bash
# Generic exaone-train batch script: resources and environment only; everything after the
# script name is passed through as Hydra overrides to `exaone-train $EXAONE_RANK_COMMAND`.
#
#   sbatch slurm/train.sh run.dir=/lustre/me/run1 parallel.tp=4          # recipe: $EXAONE_RECIPE
#   EXAONE_RANK_COMMAND=curriculum sbatch slurm/train.sh run.dir=...     # the whole curriculum
#   sbatch --nodes=16 slurm/pretrain_kexaone.sh run.dir=/lustre/me/k236  # headline curriculum
#
# What happens: srun starts one `exaone-train launch` per node; each runs torchrun
# (--nproc-per-node = GPUs on the node, c10d rendezvous on the first node of the job) and
# `exaone-train $EXAONE_RANK_COMMAND --recipe $EXAONE_RECIPE <overrides>` in every rank. Slurm
# sends USR1 to this shell 300 s before the time limit; it is forwarded to the job step (and
# forwarded again every EXAONE_SIGNAL_RESEND_S until the step ends, so a warning that arrives
# while the ranks are still starting is not lost), the trainer saves a checkpoint and exits 3,
# and this script requeues the job (`scontrol requeue`, retried when slurmctld refuses). The
# requeued job runs the same command and the trainer resumes from run.dir. Exit statuses:
#   3  saved after a signal                   -> requeue
#   4  a curriculum gate stopped the run      -> no requeue; the log names the stage, the gate
#                                                figures and the NIAH report
#   5  the stability guard stopped the run    -> no requeue; the log says why
#   other                                     -> no requeue
# `--open-mode=append` keeps one log across requeues.
#
# Environment knobs (export before sbatch; sbatch exports the submitting environment):
#   EXAONE_RECIPE        top-level recipe (train.sh: tiny_cpu; pretrain_kexaone.sh: kexaone_236b)
#   EXAONE_RANK_COMMAND  what every rank runs: train (default here; the recipe's train: section)
#                        or curriculum (pretrain_kexaone.sh's default: every stage and gate)
#   EXAONE_VENV          virtualenv to activate (default: <repo>/.venv)
#   EXAONE_TRAIN_ROOT    repo checkout to run (default: the one this script was submitted from)
#   EXAONE_GPUS_PER_NODE processes per node (default: $SLURM_GPUS_ON_NODE)
#   EXAONE_MAX_REQUEUES  stop requeueing after this many restarts (default 100)
#   EXAONE_SRUN_ARGS     extra srun arguments (word-split), e.g. "--cpu-bind=none"
#   EXAONE_ENV_FILE      file sourced before launch (site modules, NCCL_IB_HCA, ...)
#   EXAONE_REQUEUE_TRIES attempts of `scontrol requeue` before giving up (default 5)
#   EXAONE_SIGNAL_RESEND_S  re-forward a received USR1/TERM this often while the step runs
#                        (default 10; 0: forward once), at most EXAONE_SIGNAL_RESENDS times
#                        (default 30: the 300 s warning window). Every process of the step
#                        gets each one: helpers the trainer starts block them
#                        (exaone_train/checkpoint/preemption.py blocked_while)
#   EXAONE_TRAIN_CMD     command replacing `python -m launcher <command>` (tests, debugging)
#   MASTER_PORT          rendezvous port (default: 20000 + job id mod 20000)
# Set here unless already set:
#   CUDA_DEVICE_MAX_CONNECTIONS=1  megatron-core's TP/SP communication overlap needs in-order
#                                  kernel launch
#   NCCL_DEBUG=WARN, TORCH_NCCL_AVOID_RECORD_STREAMS=1, PYTHONUNBUFFERED=1
# Site-specific, left to EXAONE_ENV_FILE: NCCL_SOCKET_IFNAME, NCCL_IB_HCA, NCCL_IB_GID_INDEX,
# NCCL_NET_GDR_LEVEL, FI_PROVIDER (EFA), UCX_NET_DEVICES.
#
#SBATCH --job-name=exaone-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail

readonly REQUEUE_EXIT_CODE=3  # the trainer: "checkpoint saved after SIGUSR1/SIGTERM, requeue me"
readonly GATE_STOP_EXIT_CODE=4  # `exaone-train curriculum`: a gate failed and its policy says stop
readonly GUARD_STOP_EXIT_CODE=5  # the stability guard stopped training

LOG_TAG=train.sh

source_lib() {  # sbatch runs a spooled copy of this script: find the checkout's slurm/lib.sh
  local root=${EXAONE_TRAIN_ROOT:-} cmd
  if [[ -z $root ]]; then  # the submitted script (scontrol's Command), else the submit dir
    cmd=$(scontrol show job "${SLURM_JOB_ID:-}" 2>/dev/null |
          sed -n 's/^ *Command=\([^ ]*\).*/\1/p') || true
    if [[ -f $cmd ]]; then root=$(dirname "$cmd")/..; else root=${SLURM_SUBMIT_DIR:-$PWD}; fi
  fi
  [[ -f $root/slurm/lib.sh ]] ||
    { echo "error: no exaone-train checkout at $root (set EXAONE_TRAIN_ROOT)" >&2; exit 1; }
  source "$root/slurm/lib.sh"
}

setup_env() {
  activate_env
  export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  export TORCH_NCCL_AVOID_RECORD_STREAMS=${TORCH_NCCL_AVOID_RECORD_STREAMS:-1}
  MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  export MASTER_ADDR MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
}

# shellcheck disable=SC2317  # invoked by trap
on_signal() {
  # Remember the signal and pass it on to the job step: srun relays it to every node's launcher
  # (which ignores it) and to the trainer ranks. Slurm sends the time-limit warning once, and it
  # may come before srun started (the trap is set first thing, so it never kills this shell) or
  # while the ranks still import (they inherit "ignored" until the trainer's handler is in):
  # `wait_step` forwards it again every EXAONE_SIGNAL_RESEND_S until the step ends. A second
  # USR1 is harmless to the trainer (it only sets the flag it already set).
  PENDING_SIGNAL=$1
  log "got SIG$1: forwarding to the job step"
  forward_pending
}

forward_pending() {
  if [[ -n ${PENDING_SIGNAL:-} && -n ${SRUN_PID:-} ]]; then
    kill -s "$PENDING_SIGNAL" "$SRUN_PID" 2>/dev/null || true
    LAST_FORWARD=$SECONDS
  fi
}

wait_step() {
  # `wait` returns early when a trapped signal arrives: wait again until srun is gone, then
  # read its status (bash keeps the status of a reaped background job).
  local resend=${EXAONE_SIGNAL_RESEND_S:-10} left=${EXAONE_SIGNAL_RESENDS:-30}
  while kill -0 "$SRUN_PID" 2>/dev/null; do
    if [[ -n ${PENDING_SIGNAL:-} ]] && ((resend > 0 && left > 0)); then
      sleep 1  # traps run between commands: a 1 s tick while a signal is pending
      if ((SECONDS - ${LAST_FORWARD:-0} >= resend)) && kill -0 "$SRUN_PID" 2>/dev/null; then
        log "forwarding SIG$PENDING_SIGNAL again (ranks that were still starting missed it)"
        forward_pending
        left=$((left - 1))
      fi
    else
      wait "$SRUN_PID" || true
    fi
  done
  STEP_RC=0
  wait "$SRUN_PID" || STEP_RC=$?
}

run_step() {
  local recipe=${EXAONE_RECIPE:-tiny_cpu} command=${EXAONE_RANK_COMMAND:-train} srun_args=()
  read -r -a srun_args <<<"${EXAONE_SRUN_ARGS:-}"
  # srun no longer inherits --cpus-per-task from sbatch (Slurm >= 22.05): pass it on.
  if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then srun_args+=("--cpus-per-task=$SLURM_CPUS_PER_TASK"); fi
  log "nodes=$SLURM_JOB_NUM_NODES master=$MASTER_ADDR:$MASTER_PORT recipe=$recipe" \
      "command=$command restart=${SLURM_RESTART_COUNT:-0} overrides: $*"
  srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 --kill-on-bad-exit=0 \
    "${srun_args[@]}" \
    python -m launcher launch --nnodes "$SLURM_JOB_NUM_NODES" \
      --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$SLURM_JOB_ID" \
      --recipe "$recipe" --command "$command" "$@" &
  SRUN_PID=$!
  # A signal that came before srun existed goes out from wait_step, EXAONE_SIGNAL_RESEND_S
  # from now: at once, it could reach `exaone-train launch` before it ignores USR1 (the
  # default action would kill it).
  if [[ -n ${PENDING_SIGNAL:-} ]]; then
    if ((${EXAONE_SIGNAL_RESEND_S:-10} > 0)); then LAST_FORWARD=$SECONDS; else forward_pending; fi
  fi
  wait_step
}

requeue() {
  # slurmctld may refuse a requeue for a moment (busy, or the job's state not yet updated):
  # retry with a growing pause; the checkpoint is saved either way.
  local tries=${EXAONE_REQUEUE_TRIES:-5} i out
  for ((i = 1; i <= tries; i++)); do
    if out=$(scontrol requeue "$SLURM_JOB_ID" 2>&1); then
      log "requeued (scontrol requeue, attempt $i)"
      return 0
    fi
    log "scontrol requeue failed (attempt $i of $tries): ${out:-no message}"
    ((i < tries)) && sleep $((2 * i))
  done
  die "could not requeue after $tries attempts; the checkpoint in run.dir is saved:" \
      "resubmit the same command to continue"
}

explain_stop() {
  # One line on why the run stopped for good (exit 4 or 5), from the run's curriculum.json.
  local msg=$1 recipe=${EXAONE_RECIPE:-tiny_cpu} why
  shift
  why=$(python -m launcher curriculum status --why-stopped --recipe "$recipe" "$@" 2>&1) \
    || why="(no curriculum status: $why)"
  log "$msg"
  log "$why"
}

main() {
  PENDING_SIGNAL=${EXAONE_EARLY_SIGNAL:-}  # caught by pretrain_kexaone.sh before its exec
  # First: a signal that comes now (Slurm's warning can come at once) must not kill this
  # shell. Until lib.sh (log) is in, only remember it; then say so and forward as usual.
  trap 'PENDING_SIGNAL=USR1' USR1
  trap 'PENDING_SIGNAL=TERM' TERM
  source_lib  # slurm/lib.sh: log, die, require_sbatch, activate_env, ROOT
  trap 'on_signal USR1' USR1
  trap 'on_signal TERM' TERM
  if [[ -n $PENDING_SIGNAL ]]; then on_signal "$PENDING_SIGNAL"; fi
  require_sbatch
  setup_env
  run_step "$@"
  local restarts=${SLURM_RESTART_COUNT:-0} max=${EXAONE_MAX_REQUEUES:-100}
  case $STEP_RC in
    "$REQUEUE_EXIT_CODE")
      if ((restarts >= max)); then
        die "trainer asked for a requeue but the job already restarted $restarts times" \
            "(EXAONE_MAX_REQUEUES=$max)"
      fi
      log "trainer saved a checkpoint and asked for a requeue (exit $STEP_RC): requeueing"
      requeue
      exit 0 ;;
    "$GATE_STOP_EXIT_CODE")
      explain_stop "a curriculum gate stopped the run (exit $STEP_RC): not requeued" "$@" ;;
    "$GUARD_STOP_EXIT_CODE")
      explain_stop "the stability guard stopped the run (exit $STEP_RC: too many skipped\
 non-finite or spiking steps): not requeued" "$@" ;;
  esac
  log "job step finished with status $STEP_RC"
  exit "$STEP_RC"
}

main "$@"
