"""What a submitter that waits (``wait=true``) shows: one progress display per step of the run.

A step is one stage's array and its reducer (``stage=all`` has four, then the summary). While a step
runs, its display says the work done of the total (problems, samples, steps, summed over its tasks),
how many tasks run or wait, the phase they are in (model b alone, a vote, debate round r; an lm-eval
chunk; training) with its rows, tokens per second and time left, and the time since the step began. On a
terminal the display is one line redrawn in place every ``progress.refresh_s``; anywhere else (a file, a
pipe, a CI log) it is a plain line every ``progress.log_every_s``. When the step's reducer has ended, a
last line says what it did. Everything is read from the tasks' progress files (``pipeline.progress``)
and, at the start, from the shard files.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence, TextIO

from pipeline.run_config import ProgressSettings
from pipeline.progress import bar, count, describe_phase, format_duration, read_progress, step_work
from pipeline.runs import Run
from pipeline.shards import Unit
from pipeline.stages import Stage
from pipeline.jobs import REDUCE_LABEL


@dataclass
class Step:
    """One step to watch: where it runs, its stage and units, and the job whose end ends the step."""

    where: str
    stage: Stage
    reduce_job: Any
    # Every unit of the step, with its work on file when the step was submitted (units that were not
    # resubmitted stay so).
    before: dict[Unit, tuple[int, int]]


def step_line(step: Step, run: Run, elapsed: float) -> str:
    """The step's display now, from its tasks' progress files."""
    work: list[tuple[int, int]] = []
    states: Counter[str] = Counter()
    phases: list[dict[str, Any]] = []
    for unit, (unit_done, unit_total) in step.before.items():
        shot = read_progress(run.progress_path(step.where, unit.label))
        if shot is not None:
            states[shot["state"]] += 1
            if shot.get("work"):
                unit_done, unit_total = shot["work"]["done"], shot["work"]["total"]
            if shot["state"] == "running" and shot.get("phase"):
                phases.append(shot["phase"])
        work.append((unit_done, unit_total))
    done, total, known = step_work(work)
    reducer = read_progress(run.progress_path(step.where, REDUCE_LABEL))
    what = step.stage.what
    parts = [f"{step.where:<14} [{bar(done, total, '-')}] {count(done, total if known else None, what)}"]
    tasks = len(step.before)
    if reducer is not None and reducer["state"] == "running":
        parts.append("merging the shards")
    elif tasks:
        counts = [f"{states[s]} {s}" for s in ("running", "pending", "failed", "done") if states[s]]
        parts.append(f"{tasks} task(s)" + (f": {', '.join(counts)}" if counts else ""))
    if phases:
        parts.append(_phases(phases))
    parts.append(format_duration(elapsed))
    return " · ".join(parts)


def _phases(phases: list[dict[str, Any]]) -> str:
    """The running tasks' phases: the most common one, its rows summed; tokens per second summed over all;
    the longest time left."""
    names = Counter(p["name"] for p in phases)
    name = names.most_common(1)[0][0]
    same = [p for p in phases if p["name"] == name]
    merged = {"name": name, "done": sum(p["done"] for p in same), "total": sum(p["total"] for p in same), "unit": same[0]["unit"],
              "tokens_per_s": round(sum(p.get("tokens_per_s") or 0 for p in phases), 1) or None,
              "eta_s": max((p["eta_s"] for p in same if p.get("eta_s") is not None), default=None)}
    others = len(names) - 1
    return describe_phase(merged) + (f" (+{others} other phase{'s' if others > 1 else ''})" if others else "")


class Display:
    """One step's display: redrawn in place on a terminal, plain lines elsewhere."""

    def __init__(self, out: TextIO, refresh_s: float, log_every_s: float) -> None:
        self.out = out
        self.tty = out.isatty()
        self.refresh_s, self.log_every_s = refresh_s, log_every_s
        self._printed = float("-inf")
        self._last = ""

    def show(self, line: str) -> None:
        if self.tty:
            width = shutil.get_terminal_size((120, 24)).columns - 1
            self.out.write("\r" + line[:width] + "\x1b[K")
            self.out.flush()
        elif line != self._last and time.monotonic() - self._printed >= self.log_every_s:
            self._print(line)
        self._last = line

    def close(self, line: str) -> None:
        """The step's last line, kept."""
        if self.tty:
            self.out.write("\r" + line + "\x1b[K\n")
            self.out.flush()
        else:
            self._print(line)

    def _print(self, line: str) -> None:
        self._printed = time.monotonic()
        self.out.write(line + "\n")
        self.out.flush()


def watch(steps: Sequence[Step], run: Run, shown: ProgressSettings, out: TextIO = sys.stdout) -> None:
    """Shows each step until its reducer has ended, one after the other, at the intervals of the run's
    ``progress.*`` keys (``shown``)."""
    for step in steps:
        started = time.monotonic()
        display = Display(out, shown.refresh_s, shown.log_every_s)
        while not step.reduce_job.done():
            display.show(step_line(step, run, time.monotonic() - started))
            time.sleep(display.refresh_s)
        line = step_line(step, run, time.monotonic() - started)
        reducer = read_progress(run.progress_path(step.where, REDUCE_LABEL))
        ended = reducer["state"] if reducer else "ended"
        display.close(f"{line.split(' · ')[0]} · {'done' if ended == 'done' else 'reducer ' + ended} in {format_duration(time.monotonic() - started)}")
