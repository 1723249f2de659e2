"""The local backend's ordering: a job after others waits for their end, whatever its outcome (SLURM's
``afterany``), read from the result files submitit writes when a task ends; a job killed before it could
write them has ended once its process is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from submitit.local.local import LocalJob

from pipeline.launch.local_gate import EXIT_GRACE_S, Dependency
from pipeline.progress import read_progress
from pipeline.runs import Run
from pipeline.submit import submit
from tests.conftest import tiny_overrides


def test_a_dependency_has_ended_once_its_tasks_wrote_their_results_and_it_exited_or_its_process_is_gone(tmp_path: Path) -> None:
    """A stranger's sleep stands for a job of two tasks whose process still runs: its results and its exit
    (or a grace past the results) end it; without results, the end of its process does."""
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        dependency = Dependency.of(LocalJob(folder=tmp_path, job_id=str(stranger.pid), tasks=[0, 1]))
        first, second = dependency.results
        assert not dependency.ended(), "running, no result"
        first.write_bytes(b"")
        assert not dependency.ended(), "one task of two has ended"
        second.write_bytes(b"")
        assert not dependency.ended(), "every task wrote its result, but the process has not exited yet"
        assert dependency.finished(), "its work is over: the status command shows it ended"
        old = time.time() - EXIT_GRACE_S - 1
        for path in (first, second):
            os.utime(path, (old, old))
        assert dependency.ended(), "results written longer ago than the grace: ended, though the process lingers"
        first.unlink()
        second.unlink()
        stranger.kill()
        stranger.wait()
        assert dependency.ended(), "killed before it wrote a result: ended with its process"
    finally:
        if stranger.poll() is None:
            stranger.kill()


def test_a_shard_killed_before_its_result_still_lets_its_reducer_report(results: Path) -> None:
    """SIGKILL of a running shard's process: it never writes a result, yet the reducer after it runs and
    reports the shard missing, as an afterany reducer does on SLURM."""
    submit(tiny_overrides(results, "limit=4", "shards=2", "cluster=local", "cluster.array_parallelism=1", "run_id=killed"))
    run = Run(results / "killed")
    shard = run.progress_path("debate", "shard-00000-of-00002")
    reducer = run.progress_path("debate", "_reduce")
    deadline = time.time() + 300
    while time.time() < deadline and (read_progress(shard) or {}).get("state") != "running":
        time.sleep(0.1)
    os.kill(read_progress(shard)["pid"], signal.SIGKILL)
    while time.time() < deadline and (read_progress(reducer) or {}).get("state") not in ("done", "failed"):
        time.sleep(0.5)
    assert (read_progress(reducer) or {}).get("state") == "done", read_progress(reducer)
    assert "shard-00000-of-00002: missing" in (run.logs_dir / "reduce-debate.log").read_text()
    assert "PARTIAL" in (run.root / "debate_accuracy.md").read_text()
