#!/usr/bin/env bash
# The test suite as CI runs it. pytest's exit code 5 (nothing collected) is a failure here:
# a suite that ran no test has proven nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export TORCHDYNAMO_DISABLE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1
# lint first: seconds, and a finding fails the suite like a failing test
$PY -m ruff check launcher exaone_train data_pipeline tests bench || { echo "ruff: lint findings: failing"; exit 1; }
if [[ -x slurm/ci/local_slurm.sh ]] && [[ "${EXAONE_SKIP_SLURM:-0}" != 1 ]]; then
  slurm/ci/local_slurm.sh up || echo "local Slurm could not start: tests/slurm will be skipped"
fi
# --durations: every CI log shows where the suite's time goes (the budget is 30 minutes)
$PY -m pytest -m "not gpu" --timeout=900 --durations=40 "$@"
rc=$?
if [[ $rc -eq 5 ]]; then echo "pytest collected no tests: failing"; exit 1; fi
exit $rc
