#!/usr/bin/env bash
# A data build that outgrows one machine: one Slurm array task per worker, then one merge job.
# Everything after the script name goes to `exaone-train data build|merge` (the data recipe and
# Hydra overrides):
#
#   jid=$(sbatch --parsable --array=0-63 slurm/data_build.sh kexaone_pretrain)
#   sbatch --dependency=afterok:$jid slurm/data_build.sh kexaone_pretrain
#
# As an array task it runs `exaone-train data build ARGS --worker i/N` with i the task's place in
# the array (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, over the step) and N its task count
# (SLURM_ARRAY_TASK_COUNT): each worker tokenizes its share of the inputs into its own shards
# and a partial manifest in build.output_dir (a shared file system). Outside an array it runs
# `exaone-train data merge ARGS`, which checks that every worker's partial manifest is there,
# once, from the same recipe, inputs and tokenizer, and writes manifest.json. The array must be
# evenly spaced (--array=0-63, --array=0-63%8 to run 8 at a time); a list such as --array=0,5,9
# is refused. A failed worker is rerun alone (`sbatch --array=<i> ...` with the same N: submit
# `--array=0-63` and cancel the others, or run `exaone-train data build ... --worker i/64` by
# hand); its sources that are already up to date are skipped. See docs/DATA.md.
#
# Environment knobs (export before sbatch):
#   EXAONE_VENV        virtualenv to activate (default: <repo>/.venv)
#   EXAONE_TRAIN_ROOT  repo checkout to run (default: the one this script was submitted from)
#   EXAONE_ENV_FILE    file sourced before the build (site modules, proxies, HF_HOME, ...)
#   EXAONE_DATA_CMD    command replacing `python -m launcher` (tests, debugging)
#
#SBATCH --job-name=exaone-data-build
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
#SBATCH --output=%x-%A_%a.out
set -euo pipefail

LOG_TAG=data_build.sh

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

worker_spec() {
  # "i/N" of this array task; an unevenly spaced array has no such numbering.
  local id=$SLURM_ARRAY_TASK_ID count=${SLURM_ARRAY_TASK_COUNT:?SLURM_ARRAY_TASK_COUNT not set}
  local min=${SLURM_ARRAY_TASK_MIN:-0} max=${SLURM_ARRAY_TASK_MAX:-$SLURM_ARRAY_TASK_ID}
  local step=${SLURM_ARRAY_TASK_STEP:-1}
  if ((step < 1 || (id - min) % step != 0 || (max - min) / step + 1 != count)); then
    die "array tasks $min..$max step $step are not $count evenly spaced tasks:" \
        "submit with --array=0-$((count - 1))"
  fi
  echo "$(((id - min) / step))/$count"
}

main() {
  source_lib  # slurm/lib.sh: log, die, require_sbatch, activate_env, ROOT
  require_sbatch
  activate_env
  local cmd=()
  read -r -a cmd <<<"${EXAONE_DATA_CMD:-python -m launcher}"
  cd "$ROOT"
  if [[ -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
    local spec
    spec=$(worker_spec)
    log "worker $spec (array task $SLURM_ARRAY_TASK_ID of job ${SLURM_ARRAY_JOB_ID:-?}): $*"
    exec "${cmd[@]}" data build "$@" --worker "$spec"
  fi
  log "merging the workers' partial manifests: $*"
  exec "${cmd[@]}" data merge "$@"
}

main "$@"
