"""What a running task is doing, for the people watching it: one small JSON file per task, and plain
lines in the task's log.

A task writes ``<run>/progress/<where>/<label>.json`` (atomically, at most once per ``refresh_s``, and at
every change of state or phase): its state (``pending`` while a local task waits for a slot or for an
earlier job, ``running``, ``done``, ``failed``), the unit's work done of its total (problems, samples,
steps) and the current phase (model b alone, a vote, debate round r and model; an eval chunk; training)
with its items done, tokens per second and an estimate of the time left. Every ``log_every_s`` the same
goes to the task's log as one plain line. The status command and a submitter that waits (``wait=true``)
read these files; they are never the unit of truth (the shard files are), so a lost update costs only a
stale line.

A process without a task (a test, a benchmark) reports to nobody: :func:`current` is then a reporter
that writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from pipeline.files import write_atomic

log = logging.getLogger(__name__)

# A task's states, as its progress file records them.
STATES = ("pending", "running", "done", "failed")


class Phase:
    """One phase of a task: ``total`` items (rows of a batched generation, eval questions, optimizer steps).
    ``update`` takes the items done, the tokens generated so far, and optionally the fraction of the phase's
    work done when items finish unevenly (rows of a decode stop at different steps) and a ``detail`` the
    phase's closing line ends with (how fast the generation ran against its limits)."""

    def __init__(self, owner: "TaskProgress", name: str, total: int, unit: str) -> None:
        self.owner, self.name, self.total, self.unit = owner, name, total, unit
        self.done, self.tokens, self.fraction = 0, 0, 0.0
        self.detail: str | None = None
        self.started = time.monotonic()

    def update(self, done: int, tokens: int = 0, fraction: float | None = None, detail: str | None = None) -> None:
        self.done, self.tokens = min(done, self.total), tokens
        self.detail = detail or self.detail
        share = self.done / self.total if self.total else 1.0
        self.fraction = max(self.fraction, share if fraction is None else max(share, min(fraction, 1.0)))
        self.owner.changed()

    def snapshot(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        eta = elapsed * (1 - self.fraction) / self.fraction if self.fraction > 0 else None
        return {
            "name": self.name, "done": self.done, "total": self.total, "unit": self.unit, "tokens": self.tokens,
            "tokens_per_s": round(self.tokens / elapsed, 1) if self.tokens and elapsed > 0 else None,
            "elapsed_s": round(elapsed, 1), "eta_s": round(eta, 1) if eta is not None else None, "detail": self.detail,
        }


class TaskProgress:
    """The progress of one task, written to ``path`` (None: nowhere) and logged every ``log_every_s``."""

    def __init__(self, path: Path | None, label: str = "", refresh_s: float = 1.0, log_every_s: float = 30.0) -> None:
        self.path, self.label = path, label
        self.refresh_s, self.log_every_s = refresh_s, log_every_s
        self.state, self.note = "running", ""
        self.work: dict[str, Any] | None = None
        self.current: Phase | None = None
        self.started = time.time()
        self._written = self._logged = float("-inf")

    def set_state(self, state: str, note: str = "") -> None:
        """``pending`` (with what it waits for), ``running``, ``done`` or ``failed``; written at once."""
        self.state, self.note = state, note
        self._write()

    def set_work(self, done: int, total: int, unit: str) -> None:
        """The unit's work: e.g. 3 of 15 problems recorded."""
        self.work = {"done": done, "total": total, "unit": unit}
        self.changed()

    @contextmanager
    def phase(self, name: str, total: int, unit: str) -> Iterator[Phase]:
        """A phase of ``total`` items; on leaving it, one log line says what it took."""
        phase = self.begin_phase(name, total, unit)
        try:
            yield phase
        finally:
            self.end_phase()

    def begin_phase(self, name: str, total: int, unit: str) -> Phase:
        self.current = Phase(self, name, total, unit)
        self._write()
        return self.current

    def end_phase(self) -> None:
        phase = self.current
        if phase is None:
            return
        phase.update(phase.total, phase.tokens, 1.0)
        shot = phase.snapshot()
        rate = f", {shot['tokens']} tokens ({shot['tokens_per_s']} tok/s)" if shot["tokens_per_s"] else ""
        detail = f"; {phase.detail}" if phase.detail else ""
        log.info("%s: %d %s in %s%s%s", phase.name, phase.total, phase.unit, format_duration(shot["elapsed_s"]), rate, detail)
        self.current = None
        self._write()

    def changed(self) -> None:
        """Something moved: rewrite the file if ``refresh_s`` has passed, log a line if ``log_every_s`` has."""
        now = time.monotonic()
        if now - self._written >= self.refresh_s:
            self._write()
        if self.current is not None and now - self._logged >= self.log_every_s:
            self._logged = now
            log.info("%s", describe(self.snapshot()))

    def snapshot(self) -> dict[str, Any]:
        return {"label": self.label, "pid": os.getpid(), "state": self.state, "note": self.note, "work": self.work,
                "phase": self.current.snapshot() if self.current else None, "started": self.started, "updated": time.time()}

    def _write(self) -> None:
        self._written = time.monotonic()
        if self.path is None:
            return
        try:
            write_atomic(self.path, json.dumps(self.snapshot()) + "\n")
        except OSError as err:  # a full disk must not stop the work; the shard files are what counts
            log.warning("cannot write %s (%s); progress is not shown", self.path, err.strerror or err)
            self.path = None


_CURRENT = TaskProgress(None)


def start(path: Path, label: str, refresh_s: float, log_every_s: float) -> TaskProgress:
    """This process's task reporter from now on (one task per process)."""
    global _CURRENT
    _CURRENT = TaskProgress(path, label, refresh_s, log_every_s)
    return _CURRENT


def current() -> TaskProgress:
    """The reporter of the task this process runs; one that writes nothing when there is none."""
    return _CURRENT


def mark_submitted(path: Path, label: str) -> None:
    """A task about to be submitted: ``pending`` until its process writes its own state (and no stale state
    of an earlier submission is shown meanwhile)."""
    reporter = TaskProgress(path, label)
    reporter.set_state("pending", "submitted")


def read_progress(path: Path) -> dict[str, Any] | None:
    """A task's last written progress, or None when there is none (not started, or from an older version)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if _well_formed(data) else None


def _well_formed(data: Any) -> bool:
    """A progress file as :meth:`TaskProgress.snapshot` writes it, in the fields its readers use (a file
    edited or damaged by hand is no progress, never a traceback in the status command)."""
    if not isinstance(data, dict) or data.get("state") not in STATES or not isinstance(data.get("note", ""), str):
        return False
    number = (int, float)
    phase, work = data.get("phase"), data.get("work")
    return (isinstance(data.get("updated"), (*number, type(None))) and isinstance(data.get("started"), (*number, type(None)))
            and (phase is None or (isinstance(phase, dict) and isinstance(phase.get("name"), str)
                                   and all(isinstance(phase.get(k), int) for k in ("done", "total"))
                                   and isinstance(phase.get("unit"), str)
                                   and all(isinstance(phase.get(k), (*number, type(None))) for k in ("tokens_per_s", "eta_s"))))
            and (work is None or (isinstance(work, dict) and all(isinstance(work.get(k), int) for k in ("done", "total")))))


# Width of a progress bar, in characters.
BAR = 20


def bar(done: int, total: int | None, empty: str) -> str:
    """A bar of ``BAR`` characters, ``#`` for the share done, ``empty`` for the rest."""
    filled = int(BAR * done / total) if total else 0
    return "#" * filled + empty * (BAR - filled)


def step_work(units: Iterable[tuple[int, int]]) -> tuple[int, int, bool]:
    """A step's work summed over its units' (done, total): done, total, and whether every unit's total is known
    (a train unit's is 0 until its job has taken its first step; ``count`` then shows ``?``)."""
    work = list(units)
    return sum(done for done, _ in work), sum(total for _, total in work), all(total for _, total in work)


def count(done: int, total: int | None, unit: str) -> str:
    """``3/15 problems``; ``3/? steps`` while the total is not known yet (None or 0)."""
    return f"{done}/{total or '?'} {unit}"


def format_duration(seconds: float | None) -> str:
    """``45s``, ``2m10s``, ``1h05m``: as a person reads a time left."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def describe_phase(phase: dict[str, Any] | None) -> str:
    """``debate round 1, model a: 7/15 rows, 19.5 tok/s, ETA 2m10s`` (empty when no phase runs)."""
    if not phase:
        return ""
    parts = [f"{phase['name']}: {phase['done']}/{phase['total']} {phase['unit']}"]
    if phase.get("tokens_per_s"):
        parts.append(f"{phase['tokens_per_s']} tok/s")
    if phase["done"] < phase["total"]:
        parts.append(f"ETA {format_duration(phase.get('eta_s'))}")
    return ", ".join(parts)


def describe(snapshot: dict[str, Any]) -> str:
    """One plain line for a log: the phase, then the unit's work."""
    parts = [describe_phase(snapshot.get("phase"))]
    work = snapshot.get("work")
    if work:
        parts.append(f"{work['done']}/{work['total']} {work['unit']} done")
    if snapshot.get("note"):
        parts.append(snapshot["note"])
    return "; ".join(p for p in parts if p)
