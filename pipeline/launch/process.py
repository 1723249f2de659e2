"""A local job's process, named by its pid and its start time: whether it still runs, and signalling it and
no other. A pid alone could name another process by the time the status or cancel command looks (the system
reuses pids); with the start time it names one process.
"""

from __future__ import annotations

import os
import signal

# A local job as (pid, start time in clock ticks since boot): one process, even after its pid is reused.
Process = tuple[int, "int | None"]


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> int | None:
    """When the process started (clock ticks since boot, field 22 of ``/proc/<pid>/stat``), or None when there
    is no such process. With the pid it names one process: a pid the system reused has another start time."""
    fields = _stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def process_alive(pid: int, started: int | None) -> bool:
    """Whether the process recorded as (``pid``, ``started``) still runs: the same pid with the same start
    time, not a zombie. A process whose start time was not recorded is never taken for alive, so nothing
    waits on, or signals, a process it cannot identify."""
    fields = _stat(pid)
    return started is not None and fields is not None and len(fields) > 19 and int(fields[19]) == started and fields[0] != "Z"


def interrupt(pid: int, started: int | None) -> bool:
    """SIGINT (what submitit's LocalJob.cancel sends; its controller bypasses SIGTERM) to the process recorded
    as (pid, start time) and to no other: the pid is pinned with a pidfd first, then its start time checked,
    so a process that took over the pid in between is never signalled. Whether it was signalled."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if not process_alive(pid, started):
            return False
        signal.pidfd_send_signal(fd, signal.SIGINT)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
