"""Submit a stage of the suite: ``python jobs/submit.py stage=debate shards=8 [key=value ...]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import run_command  # noqa: E402
from pipeline.submit import main  # noqa: E402

if __name__ == "__main__":
    run_command(lambda: main(sys.argv[1:]))
