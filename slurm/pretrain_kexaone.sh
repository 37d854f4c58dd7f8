#!/usr/bin/env bash
# K-EXAONE 236B pretraining on 64 H100 (8 nodes x 8, TP4 PP8 EP8: recipes/kexaone_236b.yaml).
# Resources only; everything else is a Hydra override passed through to the trainer:
#
#   sbatch slurm/pretrain_kexaone.sh run.dir=/lustre/$USER/kexaone parallel.tp=4
#   sbatch --nodes=16 --time=12:00:00 slurm/pretrain_kexaone.sh run.dir=/lustre/$USER/kexaone
#
# Check the layout first, on the login node: exaone-train plan --recipe kexaone_236b --nodes 8
# Environment knobs, signals and requeue: see slurm/train.sh (this script runs it).
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

export EXAONE_RECIPE=${EXAONE_RECIPE:-kexaone_236b}
script=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
root=${EXAONE_TRAIN_ROOT:-$(cd "$(dirname "${script:-$SLURM_SUBMIT_DIR/slurm/x}")/.." && pwd)}
export EXAONE_TRAIN_ROOT=$root
exec bash "$root/slurm/train.sh" "$@"
