"""GPU jobs through SLURM's gres: ``slurm/start-local-cluster.sh`` with ``SLURM_LOCAL_GPUS=4`` (CI's setting).

On a machine without GPUs the declared GPUs are stand-in devices: SLURM allocates, queues for and exports
them (``CUDA_VISIBLE_DEVICES``, ``SLURM_JOB_GPUS``, ``SLURM_STEP_GPUS``) as on a GPU node, torch finds no
CUDA, and the jobs run on the CPU. Each task's log names what SLURM gave it; these tests read that.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from pipeline.monitor import format_status, run_status
from pipeline.runs import Run
from pipeline.submit import submit
from tests.conftest import comparable_tables, run_submit, tiny_overrides
from tests.test_slurm import _cluster_up, slurm_overrides, squeue, wait_for_run, wait_until
from tests.test_train import train_overrides


def declared_gpus() -> int:
    """The most GPUs one node of the default partition declares (``sinfo %G``, e.g. ``gpu:4``)."""
    if not _cluster_up():
        return 0
    gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True).stdout
    return max((int(n) for n in re.findall(r"gpu(?::[^:\s(]+)?:(\d+)", gres)), default=0)


GPUS = declared_gpus()

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(not _cluster_up(), reason="no SLURM cluster (slurm/start-local-cluster.sh)"),
    pytest.mark.skipif(_cluster_up() and GPUS < 2, reason="the SLURM cluster declares fewer than 2 GPUs "
                       "(start it with SLURM_LOCAL_GPUS=4 slurm/start-local-cluster.sh)"),
]


def given(log: str, variable: str) -> list[str]:
    """Every value of ``variable`` the task's log names in its placement lines."""
    return re.findall(rf"\b{variable}=(\S+)", log)


def test_an_array_with_one_gpu_per_task_runs_as_many_tasks_as_gpus_each_on_its_own(tmp_path: Path) -> None:
    """2 x GPUS shards with cluster.gpus_per_node=1: GPUS tasks run at once, each given a different single
    device; the others wait PENDING (Resources) until a GPU frees; the reducer holds no GPU. The tables equal
    a CPU run's."""
    results = tmp_path / "results"
    shards = 2 * GPUS
    info = submit(slurm_overrides(results, f"limit={shards}", f"shards={shards}", "run_id=gpu8", "cluster.gpus_per_node=1"))
    name, tasks = info["name"], info["shard_jobs"]
    asked = subprocess.run(["squeue", "-h", "-j", f"{tasks[0].split('_')[0]},{info['reduce_job']}", "-o", "%i %b"],
                           capture_output=True, text=True).stdout
    gres = {job == info["reduce_job"]: request for job, request in (line.split() for line in asked.splitlines())}
    assert gres == {False: "gres:gpu:1", True: "N/A"}, f"each task asks for a GPU, the reducer for none: {asked}"
    snapshots: list[list[tuple[str, ...]]] = []

    def all_gpus_taken() -> bool:
        lines = [tuple(line.split(" ")) for line in squeue(name)]
        snapshots.append(lines)
        states = sorted((state, reason) for _, state, reason in lines)
        return states == [("PENDING", "Resources")] * (shards - GPUS) + [("RUNNING", "None")] * GPUS

    # The reason of a task left waiting reads None until the scheduler's next pass.
    wait_until(f"{GPUS} tasks running and the others PENDING (Resources)", all_gpus_taken, timeout=300, every=0.2)
    running = [job for job, state, _ in snapshots[-1] if state == "RUNNING"]
    wait_until("the array to end", lambda: (snapshots.append([tuple(line.split(" ")) for line in squeue(name)]), not snapshots[-1])[1],
               timeout=400, every=0.5)
    assert max(sum(state == "RUNNING" for _, state, _ in lines) for lines in snapshots) == GPUS, "never more tasks than GPUs"
    wait_for_run(results / "gpu8", name)
    status = run_status(Run(results / "gpu8"))
    assert status["state"] == "complete" and {r["state"] for r in status["shards"]} == {"COMPLETED"}, format_status(status)

    devices = {}
    for k, job in enumerate(tasks):
        log = (results / "gpu8" / "logs" / f"debate-shard-{k:05d}-of-{shards:05d}.log").read_text()
        seen = given(log, "CUDA_VISIBLE_DEVICES")
        assert len(seen) == 1 and seen == given(log, "SLURM_JOB_GPUS") == given(log, "SLURM_STEP_GPUS"), log
        devices[job] = seen[0]
    assert set(devices.values()) <= {str(g) for g in range(GPUS)}, devices
    assert sorted(devices[job] for job in running) == [str(g) for g in range(GPUS)], (running, devices)

    cpu = tmp_path / "cpu"
    submit(tiny_overrides(cpu, f"limit={shards}", f"shards={shards}", "run_id=gpu8", "cluster=debug"))
    assert comparable_tables(results / "gpu8") == comparable_tables(cpu / "gpu8")


def test_a_two_gpu_train_job_runs_two_ranks_each_on_its_own_gpu(tmp_path: Path) -> None:
    """cluster.gpus_per_node=2: one job, two processes (ranks 0 and 1), both given the same two GPUs by SLURM,
    each taking its own (the local_rank-th of CUDA_VISIBLE_DEVICES), not the node's first two."""
    results = tmp_path / "results"
    holder, held = _hold_gpus(1, tmp_path)
    try:
        info = submit([*train_overrides(results, "run_id=gpu2", "train.max_steps=2", "train.max_samples=8"), "cluster=slurm", "cluster.cpus_per_task=1",
                       "cluster.timeout_min=15", "cluster.gpus_per_node=2"])
        wait_for_run(results / "gpu2", info["name"])
    finally:
        subprocess.run(["scancel", holder], check=False)
    status = run_status(Run(results / "gpu2"))
    assert status["state"] == "complete", format_status(status)
    log = next((results / "gpu2" / "logs").glob("train-*.log")).read_text()
    ranks = re.findall(r"rank (\d) of 2 \(local rank (\d)\) takes GPU (\d+), on cpu; CUDA_VISIBLE_DEVICES=(\S+) SLURM_JOB_GPUS=(\S+)", log)
    assert sorted(r[:2] for r in ranks) == [("0", "0"), ("1", "1")], log
    (visible,) = {r[3] for r in ranks}
    assert {r[4] for r in ranks} == {visible} and len(visible.split(",")) == 2, ranks
    assert held not in visible.split(","), f"GPU {held} is held by another job, yet the train job got {visible}"
    assert sorted(r[2] for r in ranks) == sorted(visible.split(",")), ranks
    trained = json.loads(next((results / "gpu2" / "train").glob("*/training.json")).read_text())
    assert trained["processes"] == 2 and trained["device"] == "cpu", trained


def test_a_cpu_job_is_not_held_by_busy_gpus_and_is_given_none(tmp_path: Path) -> None:
    """Every GPU taken by another job: a cluster.gpus_per_node=0 shard still runs, and SLURM gives it no GPU."""
    results = tmp_path / "results"
    holder, _ = _hold_gpus(GPUS, tmp_path)
    try:
        info = submit(slurm_overrides(results, "limit=2", "shards=1", "run_id=nogpu"))
        wait_for_run(results / "nogpu", info["name"])
    finally:
        subprocess.run(["scancel", holder], check=False)
    assert run_status(Run(results / "nogpu"))["state"] == "complete"
    log = (results / "nogpu" / "logs" / "debate-shard-00000-of-00001.log").read_text()
    assert "a on cpu, b on cpu; no GPU given" in log, log


def test_more_gpus_than_the_node_has_is_slurms_refusal_on_one_line(results: Path) -> None:
    done = run_submit(*slurm_overrides(results, "limit=4", "shards=2", f"cluster.gpus_per_node={GPUS + 1}"), timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith("error: SLURM refused the debate array: "), done.stderr
    assert "Requested node configuration is not available" in done.stderr
    assert done.stderr.strip().count("\n") == 0


def _hold_gpus(count: int, folder: Path) -> tuple[str, str]:
    """A job that takes ``count`` GPUs until cancelled; once it runs, its id and the GPUs SLURM gave it."""
    out = folder / "hold.out"
    job = subprocess.run(["sbatch", "--parsable", "-J", f"hold-{folder.name}", "-c", "1", f"--gpus-per-node={count}",
                          "-o", str(out), "--wrap", "echo $SLURM_JOB_GPUS; exec sleep 600"],
                         capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    wait_until("the GPU holder running", lambda: out.exists() and out.read_text().endswith("\n"), timeout=60, every=0.2)
    return job, out.read_text().strip()
