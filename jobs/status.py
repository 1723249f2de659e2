"""Show a run's jobs and progress: ``python jobs/status.py [run_id] [--results-dir results]``.

Without a run id, lists the runs with their progress.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import run_command  # noqa: E402
from pipeline.config import ConfigError, project_path  # noqa: E402
from pipeline.monitor import format_status, list_runs, progress_summary, resolve_run, run_status  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_id", nargs="?")
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args()
    if args.run_id is None:
        runs = list_runs(project_path(args.results_dir))
        for run in runs:
            try:
                s = run_status(run)
            except ConfigError as err:
                print(f"{run.run_id:<28} damaged: {err}")
                continue
            damaged = f" ({len(s['warnings'])} damaged file(s): python jobs/status.py {run.run_id})" if s["warnings"] else ""
            print(f"{s['run_id']:<28} {s['stage']:<7} {s['cluster']:<6} {s['state']:<10} {progress_summary(s)}{damaged}")
        if not runs:
            print(f"no runs under {project_path(args.results_dir)}")
        return 0
    try:
        run = resolve_run(args.results_dir, args.run_id)
        print(format_status(run_status(run)))
    except (FileNotFoundError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    run_command(main)
