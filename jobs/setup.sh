#!/usr/bin/env bash
# Creates .venv (or $GSM8K_VENV) with the pinned stack; a no-op when it is already installed.
# torch is pinned first: on a CPU box the local 2.13.0 wheel, on a cluster the index's CUDA build
# (V100: the CUDA 12.6 build, see README). An unpinned torch would pull several GB of CUDA packages.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GSM8K_VENV:-$root/.venv}"
stamp="$venv/.installed-$(sha256sum "$root/setup.cfg" | cut -c1-16)"
if [[ -f "$stamp" ]]; then
  exit 0
fi
# Quiet on success: pip's and the builds' output (setuptools notices, DeepSpeed's accelerator warning while it
# is built) goes to $venv/setup.log, which is shown when a step fails.
log="$venv/setup.log"
quiet() {
  if ! "$@" >>"$log" 2>&1; then
    echo "setup: failed: $*" >&2
    tail -n 40 "$log" >&2
    echo "setup: the whole output is in $log" >&2
    exit 1
  fi
}
echo "setup: creating $venv (pinned install, about 3 minutes, about 3 GB)" >&2
python3 -m venv "$venv"
: >"$log"
quiet "$venv/bin/python" -m pip install --upgrade pip
echo "setup: torch==2.13.0" >&2
quiet "$venv/bin/python" -m pip install torch==2.13.0
# deepspeed ships only as a source package: DS_BUILD_OPS=0 installs it without compiling CUDA ops (they are
# built just in time where they are used).
echo "setup: the pinned stack (transformers, TRL, PEFT, DeepSpeed, lm-eval, submitit, ...)" >&2
DS_BUILD_OPS=0 quiet "$venv/bin/python" -m pip install -e "$root[dev]"
touch "$stamp"
echo "setup: done ($(du -sh "$venv" | cut -f1) in $venv)" >&2
