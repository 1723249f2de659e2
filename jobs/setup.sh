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
echo "setup: creating $venv (pinned install, about 2 minutes)" >&2
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q torch==2.13.0
# deepspeed ships only as a source package: DS_BUILD_OPS=0 installs it without compiling CUDA ops (they are
# built just in time where they are used).
DS_BUILD_OPS=0 "$venv/bin/python" -m pip install -q -e "$root[dev]"
touch "$stamp"
echo "setup: done" >&2
