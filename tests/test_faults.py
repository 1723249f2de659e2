"""Faults that must cost nothing: a reducer started too early, files that are not the run's, a full disk, a
read-only folder, and secrets in the environment."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

import pipeline.shards as shards_module
from pipeline.reduce.debate import reduce_debate
from pipeline.runs import Run
from pipeline.shards import ShardWriteError, ShardWriter, read_shard
from pipeline.stages import saved_task
from pipeline.submit import main, submit
from tests.conftest import ROOT, copy_run, run_submit, tiny_overrides


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete 4-shard tiny debate (debug executor)."""
    results = tmp_path_factory.mktemp("faults") / "results"
    submit(tiny_overrides(results, "limit=8", "shards=4", "cluster=debug", "run_id=done"))
    return results / "done"


def test_a_reducer_started_while_a_shard_runs_says_so_and_merges_nothing(finished: Path) -> None:
    run = copy_run(finished, "early")
    for table in run.glob("debate_accuracy.*"):
        table.unlink()
    with ShardWriter(run / "debate" / "shard-00001-of-00004.jsonl"):
        result = reduce_debate(saved_task(Run(run), "debate"))
    assert result["complete"] is False
    assert result["refused"].startswith("shards still running: shard-00001-of-00004; nothing merged")
    assert not list(run.glob("debate_accuracy.*")), "no half-merged table"
    assert reduce_debate(saved_task(Run(run), "debate"))["complete"] is True, "once the shard has ended, the reducer merges"


def test_a_shard_file_of_another_shard_count_is_refused(finished: Path, capsys: pytest.CaptureFixture) -> None:
    run = copy_run(finished, "mixed-count")
    shutil.copy(run / "debate" / "shard-00000-of-00004.jsonl", run / "debate" / "shard-00000-of-00002.jsonl")
    assert main([f"results_dir={run.parent}", "run_id=mixed-count", "cluster=debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run / 'debate' / 'shard-00000-of-00002.jsonl'}: a shard file of another shard count or run")
    assert "nothing merged" not in err and reduce_debate(saved_task(Run(run), "debate"))["refused"].endswith("move it away")


def test_a_shard_from_another_run_is_refused_naming_the_file(finished: Path, capsys: pytest.CaptureFixture) -> None:
    run = copy_run(finished, "mixed-run")
    shutil.copy(run / "debate" / "shard-00003-of-00004.jsonl", run / "debate" / "shard-00000-of-00004.jsonl")
    assert main([f"results_dir={run.parent}", "run_id=mixed-run", "cluster=debug"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'debate' / 'shard-00000-of-00004.jsonl'}: holds record 6, which is not in shard 0 of 4 (a shard of another run?)" in err


def test_a_full_disk_is_a_clear_error_and_the_shard_keeps_its_complete_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "shard-00000-of-00001.jsonl"
    real_write = os.write
    writes = {"n": 0}

    def full_after_two(fd: int, data: bytes) -> int:
        writes["n"] += 1
        if writes["n"] > 2:
            real_write(fd, data[: len(data) // 2])  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(shards_module.os, "write", full_after_two)
    with ShardWriter(path) as writer:
        writer.append({"index": 0, "text": "a"})
        writer.append({"index": 1, "text": "b"})
        with pytest.raises(ShardWriteError, match=r"cannot write record 2 \(No space left on device\); the shard keeps its 2 complete records"):
            writer.append({"index": 2, "text": "c"})
    monkeypatch.undo()
    assert path.read_bytes().endswith(b"\n") and [r["index"] for r in read_shard(path)] == [0, 1]
    with ShardWriter(path) as writer:
        writer.append({"index": 2, "text": "c"})
    assert [r["index"] for r in read_shard(path)] == [0, 1, 2]


def test_a_read_only_shard_folder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(path: str, *args: object) -> int:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(shards_module.os, "open", read_only)
    with pytest.raises(ShardWriteError, match=r"cannot open the shard for writing \(Read-only file system\)"):
        with ShardWriter(tmp_path / "shard-00000-of-00001.jsonl"):
            pass


def test_a_results_folder_that_cannot_be_written_is_refused_before_submitting(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = run_submit("models=tiny", f"results_dir={blocker}", timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: results_dir={blocker}: cannot write the run folder {blocker}/") and "(Not a directory)" in done.stderr


def test_secrets_in_the_environment_never_reach_logs_configs_or_transcripts(tmp_path: Path) -> None:
    secrets = {"HF_TOKEN": "hf_SECRETtoken1234567890", "HUGGING_FACE_HUB_TOKEN": "hf_SECRETother0987654321",
               "WANDB_API_KEY": "SECRETwandbkey0123456789abcdef0123456789"}
    env = {**os.environ, **secrets}
    results = tmp_path / "results"
    import subprocess
    import sys

    outputs = []
    for args in (tiny_overrides(results, "limit=2", "cluster=local", "wait=true", "run_id=debate"),
                 ["stage=train", "models=tiny", "train.models=[a]", f"results_dir={results}", "run_id=train", "train.max_steps=2",
                  "train.max_samples=4", "train.per_device_train_batch_size=2", "train.gradient_accumulation_steps=1", "train.max_length=128",
                  "wandb.mode=offline", "cluster=debug"]):
        done = subprocess.run([sys.executable, str(ROOT / "jobs" / "submit.py"), *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout + done.stderr)
    leaked = []
    for path in [p for p in results.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        leaked += [f"{path}: {name}" for name, value in secrets.items() if value.encode() in data]
    leaked += [f"command output: {name}" for name, value in secrets.items() for out in outputs if value in out]
    assert not leaked, leaked
    assert (results / "transcripts.log").exists() and list((results / "train" / "train" / "tiny-llama" / "wandb").glob("offline-run-*"))


def test_an_empty_dataset_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text("")
    assert main(["models=tiny", f"results_dir={tmp_path / 'results'}", f"data.path={data}"]) == 2
    assert capsys.readouterr().err == f"error: {data / 'test.jsonl'}: no problems in the file\n"
