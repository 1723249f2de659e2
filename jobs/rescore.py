"""Score a debate run again from its records' texts: ``python jobs/rescore.py RUN_ID [--where debate]``.

Every reply a record keeps (debate turns, model b alone, each vote sample) is read again with today's answer
reading; the final answers, agreement and verdicts are derived again, the shard files rewritten and the step's
tables remade. The previous table, outcomes and JSON stay beside the new ones as ``*.before-rescore.*``. It
prints how many answers and verdicts changed, and how many debates would have stopped at another turn under
the new reading (their later turns were generated under the old one: rerun the step for those exactly).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import run_command  # noqa: E402
from pipeline.config import ConfigError  # noqa: E402
from pipeline.monitor import resolve_run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_id")
    parser.add_argument("--where", default="debate", help="the step's folder in the run (default: debate)")
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args()
    from pipeline.reduce.rescore import RescoreError, rescore_step
    from pipeline.shards import ShardBusyError, ShardCorruptError
    from pipeline.stages import saved_task

    try:
        run = resolve_run(args.results_dir, args.run_id)
        counts = rescore_step(saved_task(run, args.where))
    except (FileNotFoundError, ConfigError, RescoreError, ShardBusyError, ShardCorruptError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"run {run.run_id} ({args.where}): {counts['questions']} questions, {counts['replies']} replies read again; "
          f"{counts['answers_changed']} answers changed, {counts['verdicts_changed']} debate verdicts changed; "
          f"{counts['stop_differs']} debates would have stopped at another turn (rerun for those exactly)")
    if counts["kept"]:
        print(f"the previous tables: {', '.join(counts['kept'])}")
    print(counts["result"]["table"], end="")
    return 0


if __name__ == "__main__":
    run_command(main)
