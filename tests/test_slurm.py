"""``cluster=slurm`` against a real single-node SLURM (``slurm/start-local-cluster.sh``; CI starts it).

Every test scopes its squeue/scontrol calls to its own jobs: the cluster is machine-wide.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from pipeline.config import ConfigError
from pipeline.monitor import format_status, run_status
from pipeline.runs import Run
from pipeline.shards import ShardWriter, read_shard
from pipeline.submit import submit
from tests.conftest import comparable_tables, run_submit, tiny_overrides


def _cluster_up() -> bool:
    if shutil.which("sbatch") is None:
        return False
    return subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout.count("UP") > 0


pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not _cluster_up(), reason="no SLURM cluster (slurm/start-local-cluster.sh)")]


def slurm_overrides(results: Path, *extra: str) -> list[str]:
    return tiny_overrides(results, "cluster=slurm", "cluster.cpus_per_task=1", "cluster.timeout_min=15", *extra)


def wait_until(what: str, check: Callable[[], bool], timeout: float = 400, every: float = 1.0,
               explain: Callable[[], str] | None = None) -> None:
    """Poll ``check``; on a timeout ``explain`` says what the cluster looked like then, since a CI log is all
    that is left of a run that hung."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f"\n{explain()}" if explain else ""))


# When this test session began, as squeue prints a submit time in SQUEUE_ENV. A job queued before it is another
# session's, though it may carry the same name: a session killed mid-run leaves its jobs in the state the cluster
# saves, and they come back, held or pending, when it starts again. Every job of this session is submitted after
# this module is imported, so no margin: one would count a job submitted in the second before as this session's.
SESSION_START = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
# squeue's times as SESSION_START is written, whatever the caller's SLURM_TIME_FORMAT (relative prints today's as 20:49:31).
SQUEUE_ENV = {**os.environ, "SLURM_TIME_FORMAT": "standard"}


def squeue(name: str) -> list[str]:
    """``job state reason`` of each of this session's jobs named ``name``, one array task a line."""
    out = subprocess.run(["squeue", "-h", "-r", "-n", name, "-o", "%i %T %r %V"], capture_output=True, text=True, env=SQUEUE_ENV)
    rows = (line.rsplit(" ", 1) for line in out.stdout.splitlines())
    return [row for row, submitted in rows if submitted >= SESSION_START]


_PENDING_SINCE: dict[str, float] = {}


def kick_requeued(names: list[str]) -> None:
    """A requeued job waits ~120 s (BeginTime) before it may run again; start ours early. Not at once:
    slurmd refuses to relaunch a job in the second it was killed ('Job credential revoked')."""
    for name in names:
        for line in squeue(name):
            job, state, reason = line.split(" ", 2)
            if state == "PENDING" and "BeginTime" in reason:
                since = _PENDING_SINCE.setdefault(job, time.time())
                if time.time() - since >= 5:
                    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True)
                    _PENDING_SINCE.pop(job)


def wait_for_run(run_dir: Path, name: str, timeout: float = 500) -> None:
    """Until neither the array nor its reducer is queued, kicking requeued jobs along."""
    def finished() -> bool:
        kick_requeued([name, f"{name}-reduce"])
        return not squeue(name) and not squeue(f"{name}-reduce")
    wait_until(f"run {run_dir.name}", finished, timeout, explain=lambda: cluster_snapshot(run_dir))


def cluster_snapshot(run_dir: Path) -> str:
    """Every queued job on the machine (other tests' too: they share its CPUs) and the tail of each of the run's
    logs."""
    queue = subprocess.run(["squeue", "-h", "-r", "-o", "%i %j %T %r %M %V"], capture_output=True, text=True, env=SQUEUE_ENV)
    parts = [f"squeue:\n{queue.stdout}{queue.stderr}"]
    for log in sorted((run_dir / "logs").glob("*.log")):
        parts.append(f"{log.name} (last lines):\n" + "\n".join(log.read_text(errors="replace").splitlines()[-5:]))
    return "\n".join(parts)


def test_eight_shard_array_matches_the_local_executor(tmp_path: Path) -> None:
    results = tmp_path / "results"
    info = submit(slurm_overrides(results, "limit=16", "shards=8", "run_id=slurm8"))
    name = info["name"]
    assert name == "gsm8k-debate-slurm8"
    assert info["shard_jobs"][0].endswith("_0") and len(info["shard_jobs"]) == 8
    seen = squeue(name)
    assert seen, "squeue shows the array under its name while it runs"
    wait_for_run(results / "slurm8", name)
    records = [r for p in sorted((results / "slurm8" / "debate").glob("*.jsonl")) for r in read_shard(p)]
    assert sorted(r["index"] for r in records) == list(range(16))
    status = run_status(Run(results / "slurm8"))
    assert status["state"] == "complete", format_status(status)
    assert {r["state"] for r in status["shards"]} == {"COMPLETED"}, format_status(status)
    local = tmp_path / "local"
    submit(tiny_overrides(local, "limit=16", "shards=8", "run_id=slurm8", "cluster=local", "wait=true"))
    assert comparable_tables(results / "slurm8") == comparable_tables(local / "slurm8")


def test_a_failed_shard_is_reported_and_a_resubmit_completes_it(tmp_path: Path) -> None:
    """Shard 2 fails (its file is held by another writer until its task has given up): the afterany reducer
    still runs and says so."""
    results = tmp_path / "results"
    shard = results / "fail4" / "debate" / "shard-00002-of-00004.jsonl"
    with ShardWriter(shard):
        info = submit(slurm_overrides(results, "limit=8", "shards=4", "run_id=fail4"))
        task = info["shard_jobs"][2]
        wait_until("shard 2 to give up", lambda: not any(line.split(" ")[0] == task for line in squeue(info["name"])), every=0.1)
    wait_for_run(results / "fail4", info["name"])
    reduce_log = (results / "fail4" / "logs" / "reduce-debate.log").read_text()
    assert "shard-00002-of-00004: missing (0/2 problems)" in reduce_log
    md = (results / "fail4" / "debate_accuracy.md").read_text()
    assert "PARTIAL: 6 of 8 problems" in md and "python jobs/submit.py stage=debate run_id=fail4" in md
    assert "being written by another process" in (results / "fail4" / "logs" / "debate-shard-00002-of-00004.log").read_text()
    again = submit([f"results_dir={results}", "run_id=fail4", "cluster=slurm", "cluster.cpus_per_task=1"])
    assert again["submitted_shards"] == [2]
    wait_for_run(results / "fail4", again["name"])
    assert "PARTIAL" not in (results / "fail4" / "debate_accuracy.md").read_text()
    assert run_status(Run(results / "fail4"))["state"] == "complete"


def test_a_job_requeued_twice_mid_run_loses_and_doubles_nothing(tmp_path: Path) -> None:
    results = tmp_path / "results"
    info = submit(slurm_overrides(results, "limit=48", "shards=1", "run_id=requeue", "debate.batch_size=1"))
    shard = results / "requeue" / "debate" / "shard-00000-of-00001.jsonl"
    seen = 1
    for _ in range(2):
        def running_with_new_records() -> bool:
            kick_requeued([info["name"]])
            job = info["shard_jobs"][0].split("_")[0]
            running = any(line.startswith(job) and " RUNNING " in f" {line} " for line in squeue(info["name"]))
            return running and shard.exists() and len(read_shard(shard)) > seen
        wait_until("the job running and writing", running_with_new_records, timeout=300, every=0.1)
        seen = len(read_shard(shard))
        assert seen < 48, "the job finished before it could be requeued"
        done = subprocess.run(["scontrol", "requeue", info["shard_jobs"][0]], capture_output=True, text=True)
        assert done.returncode == 0, (done.stderr, squeue(info["name"]))
        wait_until("the requeue", lambda: any("PENDING" in line for line in squeue(info["name"])), timeout=60, every=0.5)
    wait_for_run(results / "requeue", info["name"])
    indices = [r["index"] for r in read_shard(shard)]
    assert sorted(indices) == list(range(48)), "no duplicate and no lost record"
    sacct = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", info["shard_jobs"][0].split("_")[0], "-o", "State"],
                           capture_output=True, text=True).stdout
    assert "REQUEUED" in sacct and "COMPLETED" in sacct


def test_time_limit_reached_requeues_and_completes(tmp_path: Path) -> None:
    """A 2-minute limit with the signal 50 s before it (SLURM sends it 50-80 s after the start): the shard
    checkpoints, is requeued, and resumes where it stopped. One problem at a time, so the work outlasts it."""
    results = tmp_path / "results"
    info = submit(slurm_overrides(results, "limit=200", "shards=1", "run_id=timeout", "debate.batch_size=1",
                                  "cluster.timeout_min=2", "cluster.signal_delay_s=50", "cluster.max_requeues=20"))
    wait_for_run(results / "timeout", info["name"], timeout=900)
    shard = results / "timeout" / "debate" / "shard-00000-of-00001.jsonl"
    assert sorted(r["index"] for r in read_shard(shard)) == list(range(200))
    assert "Job has timed out" in (results / "timeout" / "logs" / "debate-shard-00000-of-00001.log").read_text()
    log = (results / "timeout" / "logs" / "debate-shard-00000-of-00001.log").read_text()
    assert log.count("to do") >= 2, "the shard started again after its requeue, resuming"
    assert "0 already done" in log and any(f"{k} already done" in log for k in range(1, 200))
    assert run_status(Run(results / "timeout"))["state"] == "complete"


def test_unknown_partition_is_slurms_refusal_on_one_line(results: Path) -> None:
    done = run_submit(*slurm_overrides(results, "limit=4", "shards=2", "cluster.partition=nosuchpart"), timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: SLURM refused the debate array: ")
    assert "invalid partition" in done.stderr.lower()
    assert done.stderr.strip().count("\n") == 0


def test_no_slurm_on_the_machine_is_one_line(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin/nonexistent")
    with pytest.raises(ConfigError, match="cluster=slurm: no 'sbatch' on PATH"):
        submit(slurm_overrides(results, "limit=4"))
    assert not any((results).iterdir()), "nothing created"


def test_a_signal_that_could_come_before_the_job_starts_is_refused(results: Path) -> None:
    with pytest.raises(ConfigError, match="SLURM may send the signal up to 60 s early"):
        submit(slurm_overrides(results, "cluster.timeout_min=1", "cluster.signal_delay_s=45"))


def test_eval_array_runs_models_x_tasks_x_shards(tmp_path: Path) -> None:
    """stage=eval on SLURM: one array task per model x task x shard, then the reducer; same table as debug."""
    results = tmp_path / "results"
    eval_args = ["stage=eval", "models=tiny", "limit=4", "shards=2", "eval.batch_size=4", "eval.max_gen_toks=32", "tasks=[gsm8k]"]
    info = submit([*eval_args, f"results_dir={results}", "cluster=slurm", "cluster.cpus_per_task=1",
                   "cluster.timeout_min=15", "run_id=evalslurm"])
    assert info["name"] == "gsm8k-eval-evalslurm" and len(info["shard_jobs"]) == 4
    wait_for_run(results / "evalslurm", info["name"])
    status = run_status(Run(results / "evalslurm"))
    assert status["state"] == "complete" and {r["state"] for r in status["shards"]} == {"COMPLETED"}, format_status(status)
    debug = tmp_path / "debug"
    submit([*eval_args, f"results_dir={debug}", "cluster=debug", "run_id=evalslurm"])
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((results / "evalslurm" / "eval_accuracy.json").read_text())["rows"]]
    again = [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((debug / "evalslurm" / "eval_accuracy.json").read_text())["rows"]]
    assert rows == again and len(rows) == 4


def test_stage_all_runs_the_chain_with_dependencies(tmp_path: Path) -> None:
    """eval -> train -> eval fine-tuned -> debate -> README on SLURM: each step held by afterany on the last."""
    results = tmp_path / "results"
    info = submit(["stage=all", "models=tiny", f"results_dir={results}", "run_id=chain", "limit=4", "shards=2",
                   "eval.batch_size=4", "eval.max_gen_toks=32", "train.max_samples=8", "train.max_steps=2",
                   "train.per_device_train_batch_size=2", "train.gradient_accumulation_steps=1", "train.max_length=256",
                   "wandb.mode=disabled", "debate.max_new_tokens=48", "debate.max_rounds=2", "debate.baselines.vote_k=2",
                   "cluster=slurm", "cluster.cpus_per_task=1", "cluster.timeout_min=15"])
    train_job = info["steps"][1]["jobs"][0].split("_")[0]
    shown = subprocess.run(["scontrol", "show", "job", train_job], capture_output=True, text=True).stdout
    assert "Dependency=afterany:" in shown or "Dependency=(null)" in shown, shown
    names = [f"gsm8k-{where}-chain" for where in ("eval", "train", "eval_finetuned", "debate", "summary")]
    wait_until("the chain", lambda: (kick_requeued(names), not any(squeue(n) or squeue(f"{n}-reduce") for n in names))[1], timeout=600)
    readme = (results / "chain" / "README.md").read_text()
    assert "4. Debate of the fine-tuned models" in readme and "No table" not in readme, readme
    assert run_status(Run(results / "chain"))["state"] == "complete"


def test_status_shows_tasks_held_by_the_array_throttle_and_the_dependency_as_pending(tmp_path: Path) -> None:
    """The same PENDING-vs-RUNNING as on the local executor, from squeue: with cluster.array_parallelism=1 one
    task runs, the others wait (JobArrayTaskLimit), and the reducer waits on its afterany dependency."""
    results = tmp_path / "results"
    info = submit(slurm_overrides(results, "limit=6", "shards=3", "run_id=throttled", "cluster.array_parallelism=1"))
    run = Run(results / "throttled")
    seen: list[dict] = []

    def one_running() -> bool:
        status = run_status(run)
        seen.append(status)
        return [r["state"] for r in status["shards"]].count("RUNNING") == 1

    wait_until("one running shard", one_running, timeout=120, every=0.2)
    status = seen[-1]
    assert sorted(r["state"] for r in status["shards"]) == ["PENDING", "PENDING", "RUNNING"], format_status(status)
    assert status["reduce"]["state"] == "PENDING" and status["state"] == "running"
    wait_for_run(results / "throttled", info["name"])
    assert {r["state"] for r in run_status(run)["shards"]} == {"COMPLETED"}


def test_the_readme_slurm_block_is_what_submit_prints(tmp_path: Path) -> None:
    """README's "On SLURM" example, run as written (in a temporary results folder), then cancelled."""
    from tests.readme_blocks import README, block, shape

    args = ["stage=debate", "shards=8", "limit=32", "models=tiny", "cluster=slurm", "cluster.cpus_per_task=1", "run_id=demo-slurm"]
    assert "python jobs/submit.py " + " ".join(args) in README.read_text()
    done = run_submit(*args, "debate.max_new_tokens=96", "debate.max_rounds=2", f"results_dir={tmp_path}", timeout=300)
    ids = re.findall(r"jobs \(\d+\): (\d+)_.*; reduce (\d+) ->", done.stdout)
    subprocess.run(["scancel", *(ids[0] if ids else ())], check=False)
    assert done.returncode == 0, done.stderr
    assert shape(done.stdout) == shape(block("slurm-submit"))


def test_more_gpus_than_the_partition_has_is_refused(tmp_path: Path) -> None:
    """A train job's GPUs are checked against the partition's gres before anything is submitted."""
    gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True).stdout
    have = max((int(n) for n in re.findall(r"gpu(?::[^:\s(]+)?:(\d+)", gres)), default=0)
    done = run_submit("stage=train", "models=tiny", f"results_dir={tmp_path}", "cluster=slurm", f"cluster.gpus_per_node={have + 2}", timeout=120)
    assert done.returncode == 2
    assert f"cluster.gpus_per_node={have + 2}: the nodes of the default partition have at most {have} GPU(s)" in done.stderr, done.stderr


def test_slurmd_restarted_while_an_array_runs_loses_nothing(tmp_path: Path) -> None:
    """slurmd stopped and started again mid-array: the running steps live on (slurmstepd), the rest start after."""
    results = tmp_path / "results"
    info = submit(slurm_overrides(results, "limit=16", "shards=8", "run_id=restart", "cluster.array_parallelism=4"))
    wait_until("a running shard", lambda: any(" RUNNING " in f" {line} " for line in squeue(info["name"])), timeout=120, every=0.2)
    state_dir = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/slurm-local"))
    pid = int((state_dir / "slurmd.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    wait_until("slurmd to stop", lambda: not Path(f"/proc/{pid}").exists(), timeout=60, every=0.2)
    node = subprocess.run(["scontrol", "show", "node"], capture_output=True, text=True).stdout
    cpus = re.search(r"CPUTot=(\d+)", node).group(1)
    gpus = re.search(r"Gres=gpu:(\d+)", node)
    script = Path(__file__).resolve().parent.parent / "slurm" / "start-local-cluster.sh"
    subprocess.run(["bash", str(script)], env={**os.environ, "SLURM_LOCAL_CPUS": cpus, "SLURM_LOCAL_GPUS": gpus.group(1) if gpus else "0",
                                               "SLURM_LOCAL_CLEAN": "0"},
                   check=True, capture_output=True, timeout=300)
    wait_for_run(results / "restart", info["name"])
    records = [r for p in sorted((results / "restart" / "debate").glob("*.jsonl")) for r in read_shard(p)]
    assert sorted(r["index"] for r in records) == list(range(16)), "no duplicate and no lost record"
    assert run_status(Run(results / "restart"))["state"] == "complete"


def test_a_reducer_started_while_the_array_runs_says_so_and_merges_nothing(tmp_path: Path) -> None:
    """The reducer run by hand while SLURM still runs the shards: it names them and writes no table."""
    from pipeline.reduce.debate import reduce_debate
    from pipeline.stages import saved_task

    results = tmp_path / "results"
    info = submit(slurm_overrides(results, "limit=24", "shards=1", "run_id=early", "debate.batch_size=1"))
    shard = results / "early" / "debate" / "shard-00000-of-00001.jsonl"
    wait_until("records being written", lambda: shard.exists() and 0 < len(read_shard(shard)) < 24, timeout=300, every=0.1)
    result = reduce_debate(saved_task(Run(results / "early"), "debate"))
    assert result["refused"].startswith("shards still running: shard-00000-of-00001; nothing merged"), result
    assert not (results / "early" / "debate_accuracy.md").exists()
    wait_for_run(results / "early", info["name"])
    assert json.loads((results / "early" / "debate_accuracy.json").read_text())["complete"] is True
