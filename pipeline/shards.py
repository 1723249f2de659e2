"""Shard files: one JSONL line per finished question, appended and flushed as work completes.

A shard is the unit of truth. Its file is the only state a shard task keeps, so that:
- a rerun skips the questions already there (resume);
- a torn last line, left by a job killed in the middle of a write, is dropped and that question redone;
- a corrupt line anywhere else stops everything with the file and line named, since silently skipping it
  would lose a record and silently redoing it would write a question twice;
- two processes never append to the same shard at once (an exclusive lock), so nothing is written twice.

Reading a stage's shards back lives here too: every record, one check per unit (how far it got), and a
refusal of files that are not the run's. The submitter (what is left to do) and the reducers use it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Mapping

class ShardCorruptError(RuntimeError):
    """A line in the middle of a shard file is not a valid record."""


class ShardBusyError(RuntimeError):
    """Another process holds the shard's lock: the same shard is already running."""


class ShardWriteError(OSError):
    """A record could not be written (disk full, read-only folder); the shard keeps its complete records."""


def shard_in_use(path: Path) -> bool:
    """Whether a live process holds the shard's lock, i.e. the shard is being written right now."""
    lock = Path(f"{path}.lock")
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def shard_name(index: int, count: int) -> str:
    """``shard-00003-of-00008.jsonl``: sorts well and says how many shards the run has."""
    return f"shard-{index:05d}-of-{count:05d}.jsonl"


@dataclass(frozen=True)
class Unit:
    """One shard of one stage: ``<stage>/<part>/shard-i-of-n.jsonl`` and the record indices it must hold.

    ``part`` splits a stage's array beyond its shards: the eval stage's ``a/gsm8k`` (model x task);
    the debate stage has a single part, ``""``.
    """

    part: str
    shard: int
    shards: int
    indices: tuple[int, ...]

    def path(self, stage_dir: Path) -> Path:
        return stage_dir / self.part / shard_name(self.shard, self.shards)

    @property
    def label(self) -> str:
        """How the unit reads in logs and status: ``a-gsm8k-shard-00001-of-00003``; a part alone when it is
        not sharded (``tiny-llama`` of the train stage)."""
        where = self.part.replace("/", "-")
        if where and self.shards == 1 and not self.indices:
            return where
        return f"{where}-shard-{self.shard:05d}-of-{self.shards:05d}" if where else f"shard-{self.shard:05d}-of-{self.shards:05d}"


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short, stable digest of the settings that decide a record's content."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class RecordSchema:
    """What every record of one unit's shard must hold: the keys its readers use, and the fingerprint of the
    settings it was made with. The fingerprint is written into each record, so a shard can never be merged
    with records made under other settings, whatever happened to the run's config.yaml."""

    required: tuple[str, ...]
    fingerprint: str

    def problem(self, record: dict[str, Any]) -> str | None:
        """Why ``record`` does not belong to this shard, or None."""
        missing = [key for key in self.required if key not in record]
        if missing:
            return f"incomplete record (no {missing[0]!r}); delete that line to redo its question"
        made_with = record.get("settings")
        if made_with != self.fingerprint:
            made = f"settings {made_with}" if made_with else "no settings fingerprint (an older suite's record)"
            return (f"a record made with other settings ({made}; this run's are {self.fingerprint}): merging it would "
                    "mix two experiments; move the file away, or resume with the settings it was made with")
        return None


def _parse_lines(path: Path, data: bytes, schema: RecordSchema | None = None) -> tuple[list[dict[str, Any]], int]:
    """Records of a shard's bytes, and the length of the part made of whole lines.

    Every record is written as one line ending in a newline in a single write, so only the bytes after the
    last newline can be torn; every newline-terminated line must be a valid record (of ``schema``, if given).
    """
    valid = data.rfind(b"\n") + 1
    records: list[dict[str, Any]] = []
    for line_no, raw in enumerate(data[:valid].splitlines(), start=1):
        try:
            record = json.loads(raw)
            if not isinstance(record, dict) or "index" not in record:
                raise ValueError("not a record with an 'index'")
        except ValueError as err:
            raise ShardCorruptError(
                f"{path}:{line_no}: corrupt record ({err}); fix or delete that line, then rerun the shard"
            ) from None
        problem = schema.problem(record) if schema else None
        if problem:
            raise ShardCorruptError(f"{path}:{line_no}: {problem}")
        records.append(record)
    return records, valid


def read_shard(path: Path, schema: RecordSchema | None = None) -> list[dict[str, Any]]:
    """The complete records of a shard file; a torn last line is ignored, a corrupt middle line raises, and
    so does (given ``schema``) a record that is incomplete or was made with other settings."""
    if not path.exists():
        return []
    if not path.is_file():
        raise ShardCorruptError(f"{path}: not a file where the shard's records go; move it away, then rerun the shard")
    return parse_shard(path, path.read_bytes(), schema)


def parse_shard(path: Path, data: bytes, schema: RecordSchema | None = None) -> list[dict[str, Any]]:
    """``read_shard`` on a shard's bytes that came another way (a compressed copy of its file), ``path`` naming
    them in errors."""
    return _parse_lines(path, data, schema)[0]


class ShardWriter:
    """Exclusive, append-only access to one shard file, with resume.

    Entering takes the lock, drops a torn tail and loads the finished records; ``append`` writes one
    complete line, flushes and fsyncs it, so a killed job loses at most the records still in flight.
    """

    def __init__(self, path: Path, schema: RecordSchema | None = None) -> None:
        self.path = path
        self.schema = schema
        self.records: list[dict[str, Any]] = []
        self._done: set[int] = set()
        self._lock_fd: int | None = None
        self._fd: int | None = None

    def __enter__(self) -> "ShardWriter":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(f"{self.path}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as err:
            raise ShardWriteError(err.errno, f"{self.path}: cannot open the shard for writing ({err.strerror})") from None
        if not self._lock(attempts=20):
            os.close(self._lock_fd)
            self._lock_fd = None
            raise ShardBusyError(f"{self.path} is being written by another process")
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_APPEND, 0o644)
        data = self.path.read_bytes()
        self.records, valid = _parse_lines(self.path, data, self.schema)
        self._done = {int(r["index"]) for r in self.records}
        if valid < len(data):
            os.ftruncate(self._fd, valid)
            os.fsync(self._fd)
        return self

    def _lock(self, attempts: int) -> bool:
        """The exclusive lock, retried for about a second: a reducer's ``shard_in_use`` check holds a shared
        lock for an instant, which must not make a starting shard give up."""
        for attempt in range(attempts):
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if attempt + 1 < attempts:
                    time.sleep(0.05)
        return False

    def done_indices(self) -> set[int]:
        return set(self._done)

    def append(self, record: dict[str, Any]) -> None:
        """Writes one record as one line in one write call, then makes it durable."""
        if self._fd is None:
            raise RuntimeError("ShardWriter.append outside its 'with' block")
        if int(record["index"]) in self._done:
            raise RuntimeError(f"{self.path}: question {record['index']} is already recorded")
        if self.schema is not None:
            record = {**record, "settings": self.schema.fingerprint}
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        size = os.fstat(self._fd).st_size
        try:
            if os.write(self._fd, line) != len(line):
                raise OSError(28, "short write (no space left on device?)")
            os.fsync(self._fd)
        except OSError as err:
            os.ftruncate(self._fd, size)  # never leave part of a line: the file ends with its last complete record
            raise ShardWriteError(
                err.errno, f"{self.path}: cannot write record {record['index']} ({err.strerror}); the shard keeps its "
                f"{len(self.records)} complete records: free the space or fix the folder, then resubmit to resume"
            ) from None
        self.records.append(record)
        self._done.add(int(record["index"]))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._lock_fd = None


# What a unit's records must hold, by unit (None: any records).
SchemaOf = Callable[[Unit], RecordSchema] | None



@dataclass(frozen=True)
class ShardCheck:
    """How far one shard got."""

    unit: Unit
    done: int
    error: str | None = None
    running: bool = False

    @property
    def expected(self) -> int:
        return len(self.unit.indices)

    @property
    def state(self) -> str:
        if self.running:
            return "running"
        if self.error:
            return "corrupt"
        return "complete" if self.done == self.expected else ("missing" if self.done == 0 else "partial")

    def as_dict(self) -> dict[str, Any]:
        return {"part": self.unit.part, "shard": self.unit.shard, "state": self.state, "done": self.done,
                "expected": self.expected, "error": self.error}


def collect(stage_dir: Path, units: list[Unit], schema_of: SchemaOf = None) -> tuple[dict[str, list[dict[str, Any]]], list[ShardCheck]]:
    """Records per part, in index order, and one check per unit. With ``schema_of``, a record that is
    incomplete or was made with other settings makes its shard corrupt (file and line named)."""
    records: dict[str, list[dict[str, Any]]] = {}
    checks: list[ShardCheck] = []
    for unit in units:
        path = unit.path(stage_dir)
        if shard_in_use(path):
            checks.append(ShardCheck(unit, len(read_shard(path)), running=True))
            continue
        try:
            found = read_shard(path, schema_of(unit) if schema_of else None)
        except ShardCorruptError as err:
            checks.append(ShardCheck(unit, 0, str(err)))
            continue
        expected = set(unit.indices)
        stray = [r["index"] for r in found if r["index"] not in expected]
        if stray:
            raise ValueError(f"{path}: holds record {stray[0]}, which is not in shard {unit.shard} of {unit.shards} (a shard of another run?)")
        if len({r["index"] for r in found}) != len(found):
            raise ValueError(f"{path}: a record is written twice")
        records.setdefault(unit.part, []).extend(found)
        checks.append(ShardCheck(unit, len(found)))
    return {part: sorted(rs, key=lambda r: r["index"]) for part, rs in records.items()}, checks


def stray_files(stage_dir: Path, units: list[Unit]) -> list[Path]:
    """Shard files in the stage's folders that no unit of this run owns: another shard count's, or files
    copied in from elsewhere. Merging around them would silently drop or mix records."""
    owned = {unit.path(stage_dir) for unit in units}
    folders = {unit.path(stage_dir).parent for unit in units}
    return sorted(p for folder in folders for p in folder.glob("shard-*.jsonl") if p not in owned)


def check_files(stage_dir: Path, units: list[Unit], schema_of: SchemaOf = None) -> tuple[dict[str, list[dict[str, Any]]], list[ShardCheck]]:
    """Records and checks, after making sure every shard file is this run's: raises ValueError naming the
    first file of another shard count in the folder, or whose records belong to other shards."""
    stray = stray_files(stage_dir, units)
    if stray:
        count = units[0].shards if units else 0
        raise ValueError(f"{stray[0]}: a shard file of another shard count or run (this run has {count} shards per part); move it away")
    return collect(stage_dir, units, schema_of)
