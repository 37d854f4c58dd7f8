# shellcheck shell=bash
# Helpers every slurm/*.sh batch script sources: log / die, require_sbatch, activate_env, and
# ROOT (the checkout this file is in). Defines; runs nothing.
#
# sbatch runs a spooled copy of a batch script, so a script cannot find this file next to $0:
# each one defines `source_lib` (EXAONE_TRAIN_ROOT, else the submitted script's checkout from
# `scontrol show job`'s Command, else the submit directory) and calls it first. That function
# is the one piece every script repeats, since it is what finds the rest;
# tests/unit/test_data_build_slurm.py checks the copies are identical.
#
# A script sets LOG_TAG (its name: the spooled copy's $0 is "slurm_script") for log lines.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { echo "[${LOG_TAG:-slurm} $(date +%FT%T) job ${SLURM_JOB_ID:-none}] $*"; }
die() { log "error: $*" >&2; exit 1; }

require_sbatch() {
  [[ -n ${SLURM_JOB_ID:-} ]] || die "run me with sbatch (SLURM_JOB_ID is not set)"
}

activate_env() {
  # The virtualenv (EXAONE_VENV, default <checkout>/.venv), the checkout on PYTHONPATH, then
  # the site's EXAONE_ENV_FILE (modules, proxies, NCCL settings...).
  local venv=${EXAONE_VENV:-$ROOT/.venv}
  [[ -x $venv/bin/python && -f $venv/bin/activate ]] ||
    die "no virtualenv at $venv (set EXAONE_VENV; see README install)"
  # shellcheck disable=SC1091
  source "$venv/bin/activate"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  if [[ -n ${EXAONE_ENV_FILE:-} ]]; then
    # shellcheck disable=SC1090
    source "$EXAONE_ENV_FILE"
  fi
}
