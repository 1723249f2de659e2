"""Writing results so that a reducer killed mid-write never leaves a half-written table or log."""

from __future__ import annotations

import fcntl
import io
import os
from pathlib import Path
from typing import Any, Callable


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


def append_once(path: Path, marker: str, block: Callable[[], str]) -> bool:
    """Appends ``block()`` to ``path`` unless a line starting with ``marker`` is already there.

    The check and the append happen under an exclusive lock, and the block goes out in one write, so two
    reducers racing, or one run twice, append it exactly once. Returns whether it appended.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with open(path, encoding="utf-8", errors="replace") as existing:
            if any(line.startswith(marker) for line in existing):
                return False
        os.write(fd, block().encode("utf-8"))
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


def save_figure(fig: Any, path: Path) -> None:
    """A matplotlib figure as PNG, written atomically, and closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
