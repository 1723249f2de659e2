"""The train stage's multi-process launch path on a CPU: two processes of one job (submitit's local executor,
torch.distributed on gloo), exactly as a SLURM job with two tasks on one node starts them.

What two GPUs add (NCCL, ZeRO partitioning across cards, the scaling numbers) is measured on GPU machines;
this checks the parts that do not need them: ranks, loss parity with one process, and checkpoints that move
between process counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.submit import submit
from pipeline.train.checkpoints import keep_global_batch
from pipeline.train.metrics import read_metrics
from tests.conftest import ROOT
from tests.test_train import train_overrides


def _losses(results: Path, run_id: str) -> list[float]:
    return [r["loss"] for r in read_metrics(results / run_id / "train" / "tiny-llama" / "metrics.jsonl")]


def test_one_and_two_processes_give_the_same_losses_for_the_same_global_batch(results: Path) -> None:
    common = ("cluster=local", "wait=true", "train.max_samples=32", "train.lora.lora_dropout=0")
    one = submit(train_overrides(results, *common, "run_id=one", "train.per_device_train_batch_size=4"))
    two = submit(train_overrides(results, *common, "run_id=two", "train.per_device_train_batch_size=2", "cluster.tasks_per_node=2"))
    assert one["result"]["rows"][0]["processes"] == 1 and two["result"]["rows"][0]["processes"] == 2
    a, b = _losses(results, "one"), _losses(results, "two")
    assert len(a) == len(b) == 4
    # Same samples per step; the NLL term is averaged over each rank's tokens, hence small differences.
    assert all(abs(x - y) < 0.05 for x, y in zip(a, b)), (a, b)


def _local_jobs(run: Path) -> list[int]:
    """The pids of a run's local jobs (each the leader of its session and process group)."""
    return [int(job) for line in (run / "launch" / "jobs.jsonl").read_text().splitlines()
            for job in (*json.loads(line)["shards"].values(), json.loads(line)["reduce"])]


def _kill_after_checkpoint(results: Path, run_id: str, step: int, *extra: str) -> int:
    """Starts a train run, SIGKILLs its whole process group once checkpoint ``step`` is saved; returns the last saved step."""
    args = train_overrides(results, "cluster=local", "wait=true", f"run_id={run_id}", "train.max_steps=12", "train.save_steps=1",
                           "train.per_device_train_batch_size=4", "train.max_length=512", "train.max_samples=96", *extra)
    proc = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "submit.py"), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = results / run_id / "train" / "tiny-llama" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not (checkpoints / f"checkpoint-{step}" / "trainer_state.json").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the submitter; its local jobs run detached, each in a session of its own
    for job in _local_jobs(results / run_id):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job, signal.SIGKILL)  # the job's controller and its task processes
    proc.wait()
    return max(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").exists())


def _resume(results: Path, run_id: str, processes: int) -> dict:
    submit([f"results_dir={results}", f"run_id={run_id}", "cluster=local", "wait=true", f"cluster.tasks_per_node={processes}"])
    folder = results / run_id / "train" / "tiny-llama"
    assert [r["step"] for r in read_metrics(folder / "metrics.jsonl")] == list(range(1, 13)), "every step once"
    return json.loads((folder / "training.json").read_text())


@pytest.mark.parametrize("deepspeed", [None, "zero2"])  # ZeRO-3's universal path: the two-H200 run (docs/performance.md)
def test_a_checkpoint_written_by_two_processes_resumes_on_one(results: Path, deepspeed: str | None) -> None:
    extra = [f"train.deepspeed={deepspeed}"] if deepspeed else []
    saved = _kill_after_checkpoint(results, "two-to-one", 2, "cluster.tasks_per_node=2", *extra)
    assert 2 <= saved < 12
    done = _resume(results, "two-to-one", 1)
    assert done["resumed_from"] == saved and done["processes"] == 1 and done["steps"] == 12
    # Same global batch as the checkpoints (4 pairs x 2 processes): one process accumulates 2 batches a step.
    assert done["global_batch"] == 8 and done["per_device_batch_size"] == 4 and done["gradient_accumulation_steps"] == 2
    if deepspeed:  # DeepSpeed refuses a ZeRO checkpoint of another rank count: it went through a universal one
        log = (results / "two-to-one" / "logs" / "train-tiny-llama.log").read_text(encoding="utf-8")
        assert f"checkpoint-{saved} was written by 2 rank(s), this job has 1: resuming through a universal checkpoint" in log


def test_a_checkpoint_written_by_one_process_resumes_on_two(results: Path) -> None:
    # (ZeRO one -> two: on two H200s, benchmarks/multi_gpu_train.py stage; here the plain path)
    saved = _kill_after_checkpoint(results, "one-to-two", 2)
    assert 2 <= saved < 12
    done = _resume(results, "one-to-two", 2)
    assert done["resumed_from"] == saved and done["processes"] == 2 and done["steps"] == 12
    # Same global batch as the checkpoints (1 process x 4 pairs): 2 pairs per process, never more than configured.
    assert done["global_batch"] == 4 and done["per_device_batch_size"] == 2 and done["gradient_accumulation_steps"] == 1


def test_a_resume_keeps_the_global_batch_or_says_which_process_counts_can(tmp_path: Path) -> None:
    keep_global_batch(tmp_path, per_device=4, accumulation=1, world=2, resuming=False, write=True)  # first start: 8 pairs
    assert keep_global_batch(tmp_path, per_device=4, accumulation=1, world=1, resuming=True, write=False) == (4, 2)
    assert keep_global_batch(tmp_path, per_device=4, accumulation=1, world=4, resuming=True, write=False) == (2, 1)
    assert keep_global_batch(tmp_path, per_device=3, accumulation=1, world=2, resuming=True, write=False) == (2, 2)
    with pytest.raises(RuntimeError, match="trained with a global batch of 8 pairs, which 3 processes cannot share evenly: "
                                           "resume on a process count that divides 8"):
        keep_global_batch(tmp_path, per_device=4, accumulation=1, world=3, resuming=True, write=False)
