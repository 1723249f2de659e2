"""Cancel a run's jobs: ``python jobs/cancel.py <run_id> [--results-dir results]``.

Finished shards stay; resubmitting the run id later resumes the rest.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import run_command  # noqa: E402
from pipeline.launch import read_submissions  # noqa: E402
from pipeline.monitor import cancel_run, resolve_run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_id")
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args()
    try:
        run = resolve_run(args.results_dir, args.run_id)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for problem in read_submissions(run)[1]:
        print(f"warning: {problem}", file=sys.stderr)
    cancelled = cancel_run(run)
    print(f"run {run.run_id}: cancelled {', '.join(cancelled) if cancelled else 'nothing (no job was still running)'}")
    return 0


if __name__ == "__main__":
    run_command(main)
