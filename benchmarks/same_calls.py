"""Where two runs of one config part, call by call: the static decoder's debug lines (``progress.log_level=DEBUG``)
of two shard logs, side by side.

Each call's line names the model, its rows and columns, the tokens it reused and prefilled, and digests of its
inputs (prompt ids and seeds), of the tokens it wrote and of the model's whole cache afterwards. Read in order, every
call before the first that differs left the same cache and tokens in both runs, so that call tells what parted:

- **inputs**: the call was handed other prompts or seeds;
- **decisions**: the same inputs, but another layout: its rows, columns, reused or prefilled tokens, prefill chunks,
  copied rows, or another model's cache given back before it (``gives its cache back``, logged by the memory owner);
- **the call itself**: the same inputs, layout and caches before it, another result (tokens, or only the cache's
  bits): something in the call does not repeat.

    python benchmarks/same_calls.py results/gpu-pair-votes/logs/debate-shard-00000-of-00001.log \\
        results/gpu-pair-votes-again/logs/debate-shard-00000-of-00001.log --json calls.json
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report import emit  # noqa: E402  (benchmarks/, the script's own folder)

# pipeline/engine/decode.py's debug line, and pipeline/engine/memory.py's release line.
CALL = re.compile(r"pipeline\.engine\.decode: (?P<model>\S+): (?P<rows>\d+) rows x (?P<columns>\d+) columns, T=(?P<temperature>\S+), "
                  r"(?P<reused>\d+) reused tokens, (?P<prefilled>\d+) prefilled in (?P<chunks>\d+) chunks, (?P<copied>\d+) rows copied; "
                  r"digests: inputs (?P<inputs>\w+), tokens (?P<tokens>\w+), cache (?P<cache>\w+)")
RELEASE = re.compile(r"pipeline\.engine\.memory: (?P<model>\S+) gives its cache back")
# What a call decided beside its inputs (any difference is named).
DECISIONS = ("rows", "columns", "temperature", "reused", "prefilled", "chunks", "copied")


def calls(log: Path) -> list[dict[str, Any]]:
    """The log's decoder calls in order; each with ``released``: the models that gave their cache back just before."""
    found: list[dict[str, Any]] = []
    released: list[str] = []
    for line in log.read_text().splitlines():
        if (match := RELEASE.search(line)) is not None:
            released.append(match["model"])
        elif (match := CALL.search(line)) is not None:
            found.append({**match.groupdict(), "released": released})
            released = []
    return found


def compare(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> dict[str, Any]:
    """The calls both logs hold, how many match whole, and the first that does not, with what parted it."""
    report: dict[str, Any] = {"calls": [len(first), len(second)], "same": 0, "first_difference": None}
    for n, (one, two) in enumerate(zip(first, second)):
        keys = [k for k in ("model", "inputs", *DECISIONS, "released", "tokens", "cache") if one[k] != two[k]]
        if not keys:
            report["same"] += 1
            continue
        if "model" in keys or "inputs" in keys:
            cause = "inputs"
        elif set(keys) & {*DECISIONS, "released"}:
            cause = "decisions"
        else:
            cause = "the call itself"
        report["first_difference"] = {"call": n + 1, "model": one["model"], "rows": int(one["rows"]), "temperature": one["temperature"],
                                      "differ": keys, "cause": cause}
        break
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs=2, type=Path, help="two shard logs written with progress.log_level=DEBUG")
    parser.add_argument("--json", type=Path, help="also write the comparison here")
    args = parser.parse_args()
    runs = [calls(log) for log in args.logs]
    for log, found in zip(args.logs, runs):
        if not found:
            parser.error(f"{log}: no decoder call lines (was the run made with progress.log_level=DEBUG?)")
    report = compare(*runs)
    first = report["first_difference"]
    print(f"{report['same']} of {min(report['calls'])} calls the same (calls: {report['calls'][0]} and {report['calls'][1]})")
    if first is not None:
        print(f"first to part: call {first['call']}, {first['model']}, {first['rows']} rows, T={first['temperature']}: "
              f"{', '.join(first['differ'])} differ; cause: {first['cause']}")
    emit(report, args.json)


if __name__ == "__main__":
    main()
