"""Recompute a table from committed per-question outcomes: ``python jobs/outcomes.py FILE.csv [--against METHOD]``.

FILE is a ``*_outcomes.csv`` a reducer wrote (``docs/results/`` holds the ones ``docs/results.md`` cites). It
prints each method's accuracy with its n and 95% interval, then METHOD (default: the file's first method)
against every other method on the same questions, with McNemar's exact test.

``--join LABEL=FILE ...`` pairs several runs on the same questions instead (e.g. 5-shot against 4-shot):
their methods as one table, each named ``LABEL: method``; ``--keep TEXT`` keeps the methods holding TEXT.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import run_command  # noqa: E402
from pipeline.reduce.outcomes import Outcomes, OutcomesFileError, join, markdown, read_csv  # noqa: E402


def joined(specs: list[str], keep: list[str]) -> Outcomes:
    """The ``LABEL=FILE`` runs as one set of outcomes (a spec without ``=`` is labelled by its file's stem)."""
    labelled = {}
    for spec in specs:
        label, _, name = spec.rpartition("=")
        path = Path(name)
        labelled[label or path.stem] = read_csv(path)
    return join(labelled, tuple(keep))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--against", help="the method every other is paired with (default: the first column's)")
    parser.add_argument("--join", nargs="+", metavar="LABEL=FILE", help="runs on the same questions, paired as one table")
    parser.add_argument("--keep", action="append", default=[], metavar="TEXT", help="with --join: only methods holding TEXT")
    args = parser.parse_args()
    if args.join:
        tables = [(" + ".join(args.join), lambda: joined(args.join, args.keep))]
    elif args.files:
        tables = [(str(path), lambda path=path: read_csv(path)) for path in args.files]
    else:
        parser.error("give outcomes files, or --join LABEL=FILE ...")
    for title, outcomes in tables:
        try:
            text = markdown(outcomes(), args.against)
        except (OSError, OutcomesFileError, KeyError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"## {title}\n\n{text}")
    return 0


if __name__ == "__main__":
    run_command(main)
