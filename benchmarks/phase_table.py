"""A debate shard's phases from its own log: per phase (model b alone, each vote, each debate turn), the rows, new
tokens and seconds summed over the shard's groups, the seconds capturing CUDA graphs, and the range of the prefill's
and the decode's shares of their limits over the full groups (the last group, smaller, apart), the seconds on the
host outside prefill and decode (logs since the tenth session); and the shard's
seconds from its last model loaded to its last record. Logs from before the roofline (the code at issue 32's start)
give the rows, tokens and seconds only. docs/performance.md's per-phase tables are this script's
output on the logs ``gpu_results.sh`` brings back (``<run>_logs.tar.xz``: ``logs/debate-shard-*.log``).

A phase's seconds are its line's tokens over its tokens/s (the line prints whole seconds).

    python benchmarks/phase_table.py results/gpu-pair/logs/debate-shard-00000-of-00001.log --json phases.json
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report import emit  # noqa: E402  (benchmarks/, the script's own folder)

# A phase's closing line (pipeline/progress.py, with the static decoder's detail from pipeline/engine/roofline.py).
# Logs from before the roofline (the code at issue 32's start) end the line after the tok/s: no shares, no host.
PHASE = re.compile(r"pipeline\.progress: group (\d+)/(\d+): (.+?): (\d+) rows in \S+, (\d+) tokens \(([\d.]+) tok/s\)"
                   r"(?:; prefill [\d,]+ tok/s \((\d+)% of its limit\), decode [\d,]+ tok/s \((\d+)% of its limit"
                   r"(?:; ([\d.]+) s capturing graphs)?\)(?:, host ([\d.]+) s)?)?")
STAMP = "%Y-%m-%d %H:%M:%S"


def phases(log: Path) -> dict[str, Any]:
    """The shard's phases, in the order they first ran, and its seconds from models loaded to last record."""
    table: dict[str, dict[str, Any]] = {}
    loaded = last = None
    for line in log.read_text().splitlines():
        if "pipeline.models.loading: loaded" in line:
            loaded = datetime.strptime(line[:19], STAMP)
        elif "pipeline.debate.shard" in line and "problems done" in line:
            last = datetime.strptime(line[:19], STAMP)
        match = PHASE.search(line)
        if match is None:
            continue
        group, groups, name, rows, tokens, rate, prefill, decode, capture, host = match.groups()
        p = table.setdefault(name, {"rows": 0, "new_tokens": 0, "seconds": 0.0, "capture_seconds": None, "host_seconds": None,
                                    "prefill_share_pct": [], "decode_share_pct": []})
        p["rows"] += int(rows)
        p["new_tokens"] += int(tokens)
        p["seconds"] += int(tokens) / float(rate)
        if prefill is not None:  # the roofline's detail, which names the capturing when there was some
            p["capture_seconds"] = (p["capture_seconds"] or 0.0) + float(capture or 0)
        if host is not None:  # logs since the tenth session: the call's time outside its prefill and decode
            p["host_seconds"] = (p["host_seconds"] or 0.0) + float(host)
        if prefill is not None and (int(group) < int(groups) or groups == "1"):
            p["prefill_share_pct"].append(int(prefill))
            p["decode_share_pct"].append(int(decode))
    for p in table.values():
        for key in ("prefill_share_pct", "decode_share_pct"):
            p[key] = [min(p[key]), max(p[key])] if p[key] else None
    shard = (last - loaded).total_seconds() if loaded and last else None
    return {"log": str(log), "shard_seconds": shard, "phases": table}


def _share(span: list[int] | None) -> str:
    return "" if span is None else f"{span[0]}%" if span[0] == span[1] else f"{span[0]}-{span[1]}%"


def markdown(run: dict[str, Any]) -> str:
    """The run's phases as the rows of docs/performance.md's tables, and a row for all generation."""
    lines = ["| phase | rows | new tokens | seconds | tokens/s | prefill, share of its limit | decode, share of its limit | capturing graphs, s "
             "| host, s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, p in run["phases"].items():
        lines.append(f"| {name} | {p['rows']:,} | {p['new_tokens']:,} | {p['seconds']:.1f} | {p['new_tokens'] / p['seconds']:,.0f} | "
                     f"{_share(p['prefill_share_pct'])} | {_share(p['decode_share_pct'])} | {_seconds(p['capture_seconds'])} | {_seconds(p['host_seconds'])} |")
    tokens = sum(p["new_tokens"] for p in run["phases"].values())
    seconds = sum(p["seconds"] for p in run["phases"].values())
    lines.append(f"| all generation | | {tokens:,} | {seconds:.1f} | {tokens / seconds:,.0f} | | | "
                 f"{_seconds(_summed(run, 'capture_seconds'))} | {_seconds(_summed(run, 'host_seconds'))} |")
    return "\n".join(lines)


def _summed(run: dict[str, Any], key: str) -> float | None:
    """``key`` summed over the phases whose lines gave it; None where no line did (a log from before it)."""
    values = [p[key] for p in run["phases"].values() if p[key] is not None]
    return sum(values) if values else None


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", type=Path, help="debate shard logs (logs/debate-shard-*.log)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = [phases(log) for log in args.logs]
    for run in runs:
        if not run["phases"]:
            parser.error(f"{run['log']}: no phase line (a debate shard's log?)")
        print(f"## {run['log']}: shard {run['shard_seconds']} s, models loaded to last record\n\n{markdown(run)}\n")
    for run in runs:  # summed unrounded above; rounded for the report
        for p in run["phases"].values():
            for key in ("seconds", "capture_seconds", "host_seconds"):
                if p[key] is not None:
                    p[key] = round(p[key], 1)
    emit({"runs": runs}, args.json)


if __name__ == "__main__":
    main()
