"""Recompute a table from committed per-question outcomes: ``python jobs/outcomes.py FILE.csv [--against METHOD]``.

FILE is a ``*_outcomes.csv`` a reducer wrote (``docs/results/`` holds the ones ``docs/results.md`` cites). It
prints each method's accuracy with its n and 95% interval, then METHOD (default: the file's first method)
against every other method on the same questions, with McNemar's exact test.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import run_command  # noqa: E402
from pipeline.reduce.outcomes import OutcomesFileError, markdown, read_csv  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--against", help="the method every other is paired with (default: the first column's)")
    args = parser.parse_args()
    for path in args.files:
        try:
            text = markdown(read_csv(path), args.against)
        except (OSError, OutcomesFileError, KeyError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"## {path}\n\n{text}")
    return 0


if __name__ == "__main__":
    run_command(main)
