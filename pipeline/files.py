"""Files written so that a process killed mid-write never leaves half of one: atomic replacement (tables,
progress, configs) and once-only appends to a shared log. Every layer writes through here."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Callable


def _remove_stale_temporaries(path: Path) -> None:
    """A writer killed between writing its temporary file and the rename leaves ``.<name>.<pid>.tmp``;
    the next writer removes those whose process is gone."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -4]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary file beside the target, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


BLOCK_START = "==== run "
BLOCK_END = "==== end of run "


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def append_block_once(path: Path, run_id: str, block: Callable[[], str]) -> bool:
    """Appends a run's block (``==== run <id> |`` ... ``==== end of run <id>``) to the log unless it is there
    complete. Returns whether it appended.

    Under an exclusive lock: a last block without its end line (a writer killed mid-append) is cut off first,
    as a shard drops its torn last line; a run counts as logged only with its end line. So a kill at any
    point leaves the log as it was or with the whole block, and two reducers racing append it once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = os.pread(fd, os.fstat(fd).st_size, 0)
        lines = data.decode("utf-8", errors="replace").splitlines()
        if any(line == f"{BLOCK_END}{run_id}" for line in lines):
            return False
        found = data.rfind(f"\n{BLOCK_START}".encode())
        last = found + 1 if found >= 0 else (0 if data.startswith(BLOCK_START.encode()) else None)
        if last is not None and f"\n{BLOCK_END}".encode() not in data[last:]:
            os.ftruncate(fd, last)  # a torn block: the run it belongs to appends it again, whole
            data = data[:last]
        os.lseek(fd, 0, os.SEEK_END)
        _write_all(fd, (b"" if not data or data.endswith(b"\n") else b"\n") + block().encode("utf-8"))
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


def append_line(path: Path, line: str) -> None:
    """Appends one line (a JSON record) under an exclusive lock, durably: on its own line even after a torn
    last line (a writer killed mid-append), which its readers then skip as the one line it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        _write_all(fd, (b"\n" if torn else b"") + line.rstrip("\n").encode("utf-8") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)

