#!/usr/bin/env bash
# The test suite: set-up, then pytest. Extra arguments go to pytest (e.g. `bash jobs/test.sh -k shards`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/jobs/setup.sh"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
cd "$root"
exec "${GSM8K_VENV:-$root/.venv}/bin/python" -m pytest "$@"
