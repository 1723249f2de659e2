#!/usr/bin/env bash
# The test suite: set-up, then pytest. Extra arguments go to pytest (e.g. `bash jobs/test.sh -k shards`).
# Two workers (GSM8K_TEST_WORKERS; `-n 0` among the arguments runs in one process), each running one test
# file at a time: the SLURM tests mostly wait on their jobs, and a file's module fixtures stay shared. The 20
# slowest tests are listed at the end, to keep CI (about 30 minutes on 2 cores) in check.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/jobs/setup.sh"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
cd "$root"
exec "${GSM8K_VENV:-$root/.venv}/bin/python" -m pytest -n "${GSM8K_TEST_WORKERS:-2}" --dist loadfile --durations=20 "$@"
