"""Shard files: append/resume, torn last line, corrupt middle line, one writer at a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.shards import ShardBusyError, ShardCorruptError, ShardWriter, read_shard, shard_name


def test_shard_name_sorts_and_says_the_count() -> None:
    assert shard_name(3, 8) == "shard-00003-of-00008.jsonl"
    assert sorted(shard_name(i, 12) for i in (10, 2, 0)) == [shard_name(i, 12) for i in (0, 2, 10)]


def test_append_then_resume_sees_every_record(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with ShardWriter(path) as w:
        w.append({"index": 0, "x": "a"})
        w.append({"index": 1, "x": "b"})
    with ShardWriter(path) as w:
        assert w.done_indices() == {0, 1}
        w.append({"index": 2})
    assert [r["index"] for r in read_shard(path)] == [0, 1, 2]


def test_torn_last_line_is_dropped_and_cut_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"index": 0}) + "\n" + '{"index": 1, "text": "half a rec')
    assert [r["index"] for r in read_shard(path)] == [0]
    with ShardWriter(path) as w:
        assert w.done_indices() == {0}
        w.append({"index": 1, "text": "whole"})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1]


def test_corrupt_middle_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"index": 0}) + "\n" + "garbage\n" + json.dumps({"index": 2}) + "\n")
    with pytest.raises(ShardCorruptError, match=rf"{path}:2: corrupt record"):
        read_shard(path)
    with pytest.raises(ShardCorruptError, match=":2:"):
        ShardWriter(path).__enter__()


def test_a_record_is_never_written_twice(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with ShardWriter(path) as w:
        w.append({"index": 5})
        with pytest.raises(RuntimeError, match="already recorded"):
            w.append({"index": 5})
    assert len(read_shard(path)) == 1


def test_second_writer_on_the_same_shard_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with ShardWriter(path):
        with pytest.raises(ShardBusyError, match="another process"):
            with ShardWriter(path):
                pass
