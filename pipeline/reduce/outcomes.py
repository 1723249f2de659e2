"""Per-question outcomes in a compact file: each method's extracted answer and whether it is right.

A run's shards hold whole transcripts (megabytes on the full test set); what a results page needs is far
less: per question, per method, the answer and its verdict. Reducers write that as ``<where>_outcomes.csv``
(``index, gold``, then an ``answer`` and a ``right`` column per method). Such a file can be committed, and
every accuracy, interval and paired test of a table recomputed from it (``python jobs/outcomes.py FILE``).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from pipeline.markdown import escape
from pipeline.reduce.stats import accuracy_cells, difference_cell, format_p, mcnemar_exact

Verdict = tuple[str | None, bool]


@dataclass(frozen=True)
class Outcomes:
    """Gold answers and each method's (answer, right) per question index, methods in column order."""

    gold: dict[int, str]
    methods: dict[str, dict[int, Verdict]]


def to_csv(outcomes: Outcomes) -> str:
    """The file's text: one row per question, an ``<method> | answer`` and ``<method> | right`` column each."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", "gold", *(f"{m} | {col}" for m in outcomes.methods for col in ("answer", "right"))])
    for index in sorted(outcomes.gold):
        row: list[object] = [index, outcomes.gold[index]]
        for verdicts in outcomes.methods.values():
            answer, right = verdicts.get(index, (None, None))  # type: ignore[arg-type]
            row += ["" if answer is None else answer, "" if right is None else int(right)]
        writer.writerow(row)
    return out.getvalue()


class OutcomesFileError(ValueError):
    """An outcomes file that does not have the layout ``to_csv`` writes; the message names file and line."""


def read_csv(path: Path) -> Outcomes:
    """Parses a file written by :func:`to_csv`; a question a method did not answer is absent from it. A file
    of another layout, cut short, not UTF-8 or with a field too long for a CSV reader is named with its line."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError as err:
        raise OutcomesFileError(f"{path}: not UTF-8 text (byte {err.start}); not an outcomes file a reducer wrote") from None
    except csv.Error as err:
        raise OutcomesFileError(f"{path}: not an outcomes file ({err}); a reducer writes one answer per field") from None
    header = rows[0] if rows else []
    names = [col.rsplit(" | ", 1)[0] for col in header[2::2]]
    layout = [f"{name} | {col}" for name in names for col in ("answer", "right")]
    if header[:2] != ["index", "gold"] or len(header) % 2 or header[2:] != layout or not names:
        raise OutcomesFileError(f"{path}:1: not an outcomes file (expected 'index,gold,<method> | answer,<method> | right,...'; "
                                "a header cut short?)")
    if len(rows) < 2:
        raise OutcomesFileError(f"{path}: no questions after the header (a file cut short?)")
    gold: dict[int, str] = {}
    methods: dict[str, dict[int, Verdict]] = {name: {} for name in names}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise OutcomesFileError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
        try:
            index = int(row[0])
            gold[index] = row[1]
            for name, answer, right in zip(names, row[2::2], row[3::2]):
                if right != "":
                    methods[name][index] = (answer or None, {"1": True, "0": False}[right])
        except (ValueError, KeyError):
            raise OutcomesFileError(f"{path}:{line}: an index that is not an integer or a 'right' that is not 0 or 1") from None
    return Outcomes(gold, methods)


def join(labelled: dict[str, Outcomes], keep: tuple[str, ...] = ()) -> Outcomes:
    """Several runs' outcomes on the same questions as one, each method named ``<label>: <method>``, so that
    runs that differ in one setting (shots, a fine-tuned model) get paired tests; ``keep``: only the methods
    whose name holds one of these texts. Runs that disagree on a question's gold answer are not the same
    questions, and an error says where."""
    gold: dict[int, str] = {}
    methods: dict[str, dict[int, Verdict]] = {}
    for label, outcomes in labelled.items():
        for index, answer in outcomes.gold.items():
            if gold.setdefault(index, answer) != answer:
                raise OutcomesFileError(f"{label}: question {index} has gold {answer!r}, another file {gold[index]!r}: not the same questions")
        methods |= {f"{label}: {name}": verdicts for name, verdicts in outcomes.methods.items()
                    if not keep or any(text in name for text in keep)}
    if not methods:
        raise OutcomesFileError(f"no method holds any of {', '.join(map(repr, keep))}")
    return Outcomes(gold, methods)


def markdown(outcomes: Outcomes, reference: str | None = None) -> str:
    """Accuracy with its n and 95% interval per method, then ``reference`` (default: the first method)
    against each other method on the questions both answered, with McNemar's exact p."""
    names = list(outcomes.methods)
    reference = reference or names[0]
    if reference not in outcomes.methods:
        raise KeyError(f"no method {reference!r} in the file; it has: {', '.join(names)}")
    lines = ["| method | accuracy | 95% CI | correct / n |", "|---|---|---|---|"]
    for name in names:
        flags = [right for _, right in outcomes.methods[name].values()]
        k, n = sum(flags), len(flags)
        accuracy, interval = accuracy_cells(k, n)
        lines.append(f"| {escape(name)} | {accuracy} | {interval} | {k} / {n} |")
    lines += ["", f"| {escape(reference)} against | questions | only {escape(reference)} right | only the other right | difference | McNemar exact p |",
              "|---|---|---|---|---|---|"]
    mine = outcomes.methods[reference]
    for name in names:
        if name == reference:
            continue
        pairs = [(mine[i][1], v[1]) for i, v in outcomes.methods[name].items() if i in mine]
        first = sum(x and not y for x, y in pairs)
        second = sum(y and not x for x, y in pairs)
        lines.append(f"| {escape(name)} | {len(pairs)} | {first} | {second} | {difference_cell(first, second, len(pairs))} | "
                     f"{format_p(mcnemar_exact(first, second))} |")
    return "\n".join(lines) + "\n"
