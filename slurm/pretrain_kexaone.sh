#!/usr/bin/env bash
# K-EXAONE 236B pretraining, the whole curriculum (recipes/curriculum/kexaone.yaml: foundation,
# domain, reasoning at 8K, then 8K -> 32K -> 256K with NIAH gates), on 8 nodes x 8 H100 by
# default. Every rank runs `exaone-train curriculum --recipe kexaone_236b <overrides>`; stages
# with `parallel: {auto: true}` get the fastest layout that fits this job's world size.
# Resources only; everything else is a Hydra override passed through to the ranks:
#
#   sbatch slurm/pretrain_kexaone.sh run.dir=/lustre/$USER/kexaone
#   sbatch --nodes=64 --time=12:00:00 slurm/pretrain_kexaone.sh run.dir=/lustre/$USER/kexaone
#   EXAONE_RANK_COMMAND=train sbatch slurm/pretrain_kexaone.sh run.dir=...   # foundation only
#
# Check the layouts first, on the login node: exaone-train plan --recipe kexaone_236b --nodes 8
# Watch it: exaone-train curriculum status RUN_DIR; plots: exaone-train report RUN_DIR.
# Environment knobs, signals, exit statuses and requeue: see slurm/train.sh (this script runs it).
#
#SBATCH --job-name=kexaone-pretrain
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail
# A time-limit warning that comes before train.sh has its own trap must not kill the job:
# remember it and hand it on (train.sh forwards it once the job step runs).
trap 'export EXAONE_EARLY_SIGNAL=USR1' USR1
trap 'export EXAONE_EARLY_SIGNAL=TERM' TERM

export EXAONE_RECIPE=${EXAONE_RECIPE:-kexaone_236b}
export EXAONE_RANK_COMMAND=${EXAONE_RANK_COMMAND:-curriculum}

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

source_lib  # slurm/lib.sh: ROOT, the checkout this job was submitted from
export EXAONE_TRAIN_ROOT=$ROOT
exec bash "$ROOT/slurm/train.sh" "$@"
