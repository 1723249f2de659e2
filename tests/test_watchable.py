"""A run one can watch: the waiting submitter's progress display, honest task states, terminal manners.

Every run here is the tiny pair on the local executor (the real submitit path), started as a user would:
``python jobs/submit.py ...`` in a pseudo-terminal, behind a pipe, or in a process group of its own.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import submitit

from pipeline.launch.local import DetachedLocalExecutor
from pipeline.monitor import format_status, run_status
from pipeline.runs import Run
from tests.conftest import ROOT, tiny_overrides

SUBMIT = [sys.executable, str(ROOT / "jobs" / "submit.py")]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
# A run's time as pipeline.progress.format_duration writes it: 45s, 1m00s (a loaded CI machine passes a minute), 1h05m.
DURATION = r"(?:\d+s|\d+m\d\ds|\d+h\d\dm)"


def _read_pty(fd: int, process: subprocess.Popen, timeout: float) -> bytes:
    """Everything the process writes to its terminal until it exits."""
    out, deadline = b"", time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the process closed its end
                break
            out += chunk
        elif process.poll() is not None:
            break
    return out


def test_on_a_terminal_the_progress_line_is_redrawn_in_place(results: Path) -> None:
    leader, follower = pty.openpty()
    args = tiny_overrides(results, "run_id=tty", "limit=8", "shards=2", "wait=true", "progress.refresh_s=0.1")
    process = subprocess.Popen([*SUBMIT, *args], stdin=follower, stdout=follower, stderr=follower, env=ENV, cwd=ROOT)
    os.close(follower)
    try:
        text = _read_pty(leader, process, 600).decode()
    finally:
        os.close(leader)
    assert process.wait(60) == 0, text
    assert "Traceback" not in text
    redraws = re.findall(r"\rdebate [^\r\n]*\x1b\[K", text)
    assert len(redraws) >= 3, text
    assert re.search(rf"debate +\[#{{20}}\] 8/8 problems · done in {DURATION}", text), text
    assert "| debate |" in text, "the merged table follows the display"


def test_behind_a_pipe_progress_is_plain_lines_and_the_pipe_closes_with_the_submitter(results: Path) -> None:
    """``submit.py ... | tee log``: plain lines, no carriage returns; without wait=true the pipe closes as
    soon as the submitter is done, though the jobs still run (they no longer hold its stdout)."""
    args = tiny_overrides(results, "run_id=piped", "limit=8", "shards=2", "wait=true", "progress.log_every_s=0", "progress.refresh_s=0.1")
    waited = subprocess.run([*SUBMIT, *args], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert waited.returncode == 0, waited.stderr
    assert "\r" not in waited.stdout and "\x1b" not in waited.stdout
    lines = [line for line in waited.stdout.splitlines() if line.startswith("debate ")]
    assert len(lines) >= 2 and re.fullmatch(rf"debate +\[#{{20}}\] 8/8 problems · done in {DURATION}", lines[-1]), waited.stdout

    args = tiny_overrides(results, "run_id=detached", "limit=8", "shards=2", "cluster.array_parallelism=1")
    started = time.time()
    quick = subprocess.run([*SUBMIT, *args], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert quick.returncode == 0, quick.stderr
    status = run_status(Run(results / "detached"))
    assert status["state"] == "running", (time.time() - started, format_status(status))


def test_ctrl_c_stops_watching_not_the_run_and_waiting_tasks_are_pending(results: Path) -> None:
    """Ctrl-C in the terminal (SIGINT to the submitter's process group) while it waits: one line, exit 130,
    no traceback, and the run goes on to complete. Meanwhile a task that waits for a slot of
    ``cluster.array_parallelism`` and the reducer that waits for the shards are PENDING, as SLURM shows them."""
    args = tiny_overrides(results, "run_id=interrupted", "limit=12", "shards=3", "cluster.array_parallelism=1", "wait=true")
    process = subprocess.Popen([*SUBMIT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT,
                               start_new_session=True)
    run = Run(results / "interrupted")
    seen: set[tuple[str, ...]] = set()
    deadline = time.time() + 300
    while time.time() < deadline and not any("RUNNING" in states and "PENDING" in states for states in seen):
        if (run.root / "launch" / "jobs.jsonl").exists():
            status = run_status(run)
            seen.add(tuple(row["state"] for row in status["shards"]) + (status["reduce"]["state"],))
        time.sleep(0.2)
    pending = next(states for states in seen if "RUNNING" in states and "PENDING" in states)
    assert pending[-1] == "PENDING", "the reducer waits for the shards"
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1].startswith("stopped watching; run interrupted goes on. Watch it: python jobs/status.py interrupted")
    deadline = time.time() + 300
    while run_status(run)["state"] != "complete" and time.time() < deadline:
        time.sleep(1)
    assert run_status(run)["state"] == "complete", format_status(run_status(run))
    assert {row["state"] for row in run_status(run)["shards"]} == {"COMPLETED"}


def test_a_cancel_prints_no_traceback_where_the_run_was_submitted(results: Path, tmp_path: Path) -> None:
    """The jobs' controllers no longer write into the submitter's terminal: after a cancel, the file that
    stood for that terminal holds only the submitter's own lines; the tasks say they were cancelled."""
    terminal = tmp_path / "terminal.txt"
    args = tiny_overrides(results, "run_id=cancelled", "limit=12", "shards=3", "cluster.array_parallelism=1")
    with terminal.open("w") as handle:
        assert subprocess.run([*SUBMIT, *args], stdout=handle, stderr=handle, env=ENV, cwd=ROOT, timeout=600).returncode == 0
    run = Run(results / "cancelled")
    deadline = time.time() + 300
    while "RUNNING" not in {row["state"] for row in run_status(run)["shards"]} and time.time() < deadline:
        time.sleep(0.2)
    cancel = subprocess.run([sys.executable, str(ROOT / "jobs" / "cancel.py"), "cancelled", "--results-dir", str(results)],
                            capture_output=True, text=True, timeout=60)
    assert cancel.returncode == 0 and "cancelled" in cancel.stdout
    deadline = time.time() + 60
    while run_status(run)["state"] == "running" and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(1)
    assert "Traceback" not in terminal.read_text() and "KeyboardInterrupt" not in terminal.read_text()
    states = [row["state"] for row in run_status(run)["shards"]]
    assert "CANCELLED" in states and "RUNNING" not in states, states


def test_a_local_job_starts_as_submitit_starts_it_only_detached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local backend starts each job's controller itself (submitit's start takes no session, stdin or
    stdout): with the command, environment and GPUs submitit's own local executor gives it, and the same
    job, only reading nothing, writing its log and in a session of its own. A submitit that starts its
    controller otherwise fails here, not in a run."""
    starts: list[tuple[Any, dict[str, Any]]] = []

    class Started:
        def __init__(self, args: Any, **kwargs: Any) -> None:
            starts.append((args, kwargs))
            self.pid = 4_000_000 + len(starts)

    monkeypatch.setattr(subprocess, "Popen", Started)
    for setup in ((), ("true",)):
        jobs = []
        for executor in (submitit.LocalExecutor(folder=tmp_path), DetachedLocalExecutor(folder=tmp_path)):
            executor.update_parameters(timeout_min=7, tasks_per_node=2, gpus_per_node=1, visible_gpus=(3, 5), signal_delay_s=11, setup=setup)
            jobs.append(executor._submit_command("python -u -m submitit.core._submit folder"))
        (theirs, their_options), (ours, our_options) = starts[-2:]
        assert ours == theirs and our_options.pop("env") == their_options.pop("env")
        assert our_options.pop("stdin") == subprocess.DEVNULL and our_options.pop("stderr") == subprocess.STDOUT
        assert our_options.pop("start_new_session") and isinstance(our_options.pop("stdout"), int)
        assert our_options == their_options, "nothing else differs"
        assert [type(job) for job in jobs] == [submitit.local.local.LocalJob] * 2 and jobs[0].num_tasks == jobs[1].num_tasks == 2
        assert (tmp_path / f"{jobs[1].job_id}_controller.log").exists()


def test_a_closed_pipe_ends_a_command_quietly() -> None:
    """``status.py | head``, ``submit.py --help | head``: the reader is gone before the command writes."""
    for command in ([sys.executable, str(ROOT / "jobs" / "submit.py"), "--help"], [sys.executable, str(ROOT / "jobs" / "status.py")]):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        process.stdout.close()
        err = process.stderr.read().decode()
        assert process.wait(60) == 141, err
        assert err == "", err


def test_help_lists_stages_groups_and_every_key_with_its_default() -> None:
    done = subprocess.run([*SUBMIT, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    text = done.stdout
    assert text.startswith("usage: python jobs/submit.py [key=value ...]")
    for stage in ("all", "debate", "eval", "train"):
        assert re.search(rf"^  {stage} +\S", text, re.M), stage
    for choice in ("cluster=NAME", "  slurm ", "models=NAME", "  small ", "  tiny "):
        assert choice in text
    for key in ("shards=1", "limit=null", "debate.max_rounds=3", "eval.chunk_size=128", "train.max_steps=null", "progress.log_every_s=30"):
        assert key in text, key


def test_status_and_a_refused_submission_never_import_torch(results: Path) -> None:
    """What makes them take a fraction of a second (docs/performance.md has the times): no torch,
    transformers, lm-eval, wandb or huggingface_hub behind a status screen or a one-line refusal."""
    probe = ("import runpy, sys; sys.argv = {argv}; code = 0\n"
             "try:\n    runpy.run_path({path}, run_name='__main__')\nexcept SystemExit as end:\n    code = end.code\n"
             "heavy = sorted(m for m in ('torch', 'transformers', 'lm_eval', 'matplotlib', 'wandb', 'huggingface_hub') if m in sys.modules)\n"
             "print('HEAVY', heavy, code)")
    cases = [(["status.py", "--results-dir", str(results)], 0), (["submit.py", "stage=nope"], 2), (["submit.py", "shards=0"], 2),
             (["submit.py", "--help"], 0)]
    for argv, code in cases:
        script = probe.format(argv=argv, path=repr(str(ROOT / "jobs" / argv[0])))
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert done.stdout.strip().splitlines()[-1] == f"HEAVY [] {code}", (argv, done.stdout, done.stderr)


def test_every_task_writes_its_progress_and_logs_its_phases(results: Path) -> None:
    args = tiny_overrides(results, "run_id=logged", "limit=4", "shards=1", "wait=true", "progress.log_every_s=0")
    done = subprocess.run([*SUBMIT, *args], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    run = results / "logged"
    shot = json.loads((run / "progress" / "debate" / "shard-00000-of-00001.json").read_text())
    assert shot["state"] == "done" and shot["work"] == {"done": 4, "total": 4, "unit": "problems"}
    log = (run / "logs" / "debate-shard-00000-of-00001.log").read_text()
    for phase in ("model b alone", "vote of 3, model a", "vote of 3, model b", "debate round 1, model a", "debate round 1, model b"):
        assert re.search(rf"{phase}: \d+/\d+ rows, [\d.]+ tok/s", log), phase
        assert re.search(rf"{phase}: \d+ rows in {DURATION}, \d+ tokens", log), phase


def test_debug_logs_name_each_decoder_call_the_same_in_two_runs_of_one_config(results: Path) -> None:
    """progress.log_level=DEBUG: a line per static-decoder call with digests of its inputs, tokens and cache, equal
    line for line in two runs of one config (the CPU repeats itself), so two runs' logs show the first call that parts."""
    lines = []
    for run_id in ("traced", "traced-again"):
        args = tiny_overrides(results, f"run_id={run_id}", "limit=3", "shards=1", "wait=true", "debate.max_rounds=1",
                              "progress.log_level=DEBUG")
        done = subprocess.run([*SUBMIT, *args], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
        assert done.returncode == 0, done.stderr
        log = (results / run_id / "logs" / "debate-shard-00000-of-00001.log").read_text()
        lines.append(re.findall(r"DEBUG pipeline\.engine\.decode: (tiny-\w+: \d+ rows .*digests: inputs \w{12}, tokens \w{12}, cache \w{12})", log))
    # model b alone, the two votes, one debate round of two turns
    assert len(lines[0]) == 5 and lines[0] == lines[1]


def test_plots_are_scaled_to_their_data_and_titled() -> None:
    """Accuracies of a few percent fill the plot instead of one line at the bottom of a 0-100% axis."""
    from pipeline.reduce.figures import eval_figure, rounds_figure

    low = {"accuracy": 0.02, "ci95_low": 0.005, "ci95_high": 0.07}
    summary = {"per_round": [{"method": "after round 1", **low}], "n": 100, "models": {"a": "x", "b": "y + adapter (r/train/y)"},
               "methods": [{"method": "debate", "kind": "method", **low}, {"method": "x alone", "kind": "method", "accuracy": 0.03}]}
    ax = rounds_figure(summary, "r1").axes[0]
    assert 0.07 < ax.get_ylim()[1] < 0.1
    assert "run r1, n=100" in ax.get_title() and "y + adapter (r/train/y)" in ax.get_title()
    rows = [{"model": "x", "task": "gsm8k", "filter": "strict-match", "n": 100, **low}]
    ax = eval_figure(rows, "GSM8K accuracy, run r1, n=100").axes[0]
    assert 0.07 < ax.get_ylim()[1] < 0.1 and ax.get_title() == "GSM8K accuracy, run r1, n=100"


def test_the_stages_announce_their_work_in_their_own_units(results: Path) -> None:
    from pipeline.stages import describe_work, load_config

    train = load_config(["stage=train", "train.max_samples=8", "train.max_steps=2", "train.models=[a]"])
    assert describe_work(train, 1319) == "1 model(s) trained on 8 pairs (GSM8K train), 2 steps"
    full = load_config(["stage=train", "train.max_samples=null"])
    assert describe_work(full, 1319) == "2 model(s) trained on 7473 pairs (GSM8K train), 1 epoch(s)"
    assert describe_work(load_config(["stage=eval", "shards=2"]), 40) == "2 model(s) x 1 task(s) on 40 problems, 2 shard(s) each"
    assert describe_work(load_config(["stage=debate", "shards=4"]), 16) == "16 problems, 4 shard(s)"
    assert describe_work(load_config(["stage=all", "shards=2", "train.max_steps=3"]), 16) == \
        "eval -> train -> eval fine-tuned -> debate on 16 problems, 2 shard(s) a step; 2 model(s) trained on 2000 pairs (GSM8K train), 3 steps"


def test_building_the_package_prints_no_warning(tmp_path: Path) -> None:
    """What jobs/setup.sh's editable install runs (setuptools' PEP 660 hook) and a plain wheel build: no
    BuildBackendWarning (data folders outside the packages, a meta-path-finder editable install)."""
    script = ("import sys; from setuptools import build_meta\n"
              f"build_meta.build_editable({str(tmp_path / 'editable')!r}); build_meta.build_wheel({str(tmp_path / 'wheel')!r})")
    done = subprocess.run([sys.executable, "-W", "default", "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    noise = [line for line in (done.stdout + done.stderr).splitlines() if "Warning" in line]  # Python warning categories
    assert noise == [], noise


def test_a_steps_work_is_summed_alike_by_the_display_and_the_status(tmp_path: Path) -> None:
    """The waiting submitter's line and the status command's step total are one sum (``progress.step_work``):
    while a train unit has not taken its first step its total is unknown, shown as ``?``, and the bar fills by
    the units that know theirs."""
    from pipeline.progress import TaskProgress, step_work
    from pipeline.shards import Unit
    from pipeline.stages import STAGES
    from pipeline.watch import Step, step_line

    run = Run(tmp_path)
    first, second = Unit("tiny-llama", 0, 1, ()), Unit("tiny-qwen2", 0, 1, ())
    step = Step("train", STAGES["train"], None, {first: (0, 0), second: (0, 0)})
    TaskProgress(run.progress_path("train", first.label), first.label).set_work(4, 8, "steps")
    assert step_line(step, run, 0).startswith(f"train          [{'#' * 10}{'-' * 10}] 4/? steps")
    TaskProgress(run.progress_path("train", second.label), second.label).set_work(0, 8, "steps")
    assert " 4/16 steps" in step_line(step, run, 0)
    assert step_work([(4, 8), (0, 0)]) == (4, 8, False) and step_work([(4, 8), (0, 8)]) == (4, 16, True)
    assert step_work([]) == (0, 0, True)
