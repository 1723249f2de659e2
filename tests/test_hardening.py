"""An adversarial user's cases: no silently mixed table, no signal to a process the suite cannot identify, no
traceback from a damaged run folder, nothing written by a refused submission."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.config import ConfigError
from pipeline.stages import RUN_ONLY_WHEN, build_config, completed, load_config, run_only_keys, saved_task
from pipeline.launch import JOBS_FILE
from pipeline.monitor import cancel_run, run_status
from pipeline.reduce.debate import reduce_debate
from pipeline.runs import Run, open_run
from pipeline.shards import read_shard
from pipeline.submit import main, submit
from pipeline.launch.process import process_alive, process_start
from tests.conftest import ROOT, copy_run, tiny_overrides, without_timings


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete 2-round, 2-shard tiny debate (debug executor)."""
    results = tmp_path_factory.mktemp("hardening") / "results"
    submit(tiny_overrides(results, "limit=4", "shards=2", "cluster=debug", "run_id=done"))
    return results / "done"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_records_carry_the_fingerprint_of_their_settings(finished: Path) -> None:
    lines = (finished / "debate" / "shard-00000-of-00002.jsonl").read_text().splitlines()
    assert len({json.loads(line)["settings"] for line in lines}) == 1


def test_a_run_whose_config_is_gone_is_refused_and_nothing_is_written(finished: Path, capsys: pytest.CaptureFixture) -> None:
    """The reported case: config.yaml deleted, a shard cut, resubmitted with other rounds."""
    run = copy_run(finished, "no-config")
    (run / "config.yaml").unlink()
    shard = run / "debate" / "shard-00001-of-00002.jsonl"
    shard.write_text(shard.read_text().splitlines()[0] + "\n")
    before = _files(run)
    assert main([f"results_dir={run.parent}", "run_id=no-config", "stage=debate", "models=tiny", "cluster=debug",
                 "limit=4", "shards=2", "debate.max_rounds=3"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: run no-config: its config.yaml is missing but its shards are there ({run}); restore config.yaml, or move the folder away to start again\n"
    assert _files(run) == before, "a refused submission writes nothing"


def test_records_of_other_settings_are_never_merged(finished: Path, capsys: pytest.CaptureFixture) -> None:
    """Even with a config.yaml that agrees with the submission, a record made under other settings (here: a
    shard line of a 3-round run) is named with its file and line by the submitter and by the reducer."""
    run = copy_run(finished, "mixed-settings")
    shard = run / "debate" / "shard-00000-of-00002.jsonl"
    lines = shard.read_text().splitlines()
    other = {**json.loads(lines[1]), "settings": "0123456789abcdef"}
    shard.write_text("\n".join([lines[0], json.dumps(other)]) + "\n")
    assert main([f"results_dir={run.parent}", "run_id=mixed-settings", "cluster=debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {shard}:2: a record made with other settings (settings 0123456789abcdef; this run's are ")
    result = reduce_debate(saved_task(Run(run), "debate"))
    assert result["complete"] is False and f"{shard}:2: a record made with other settings" in str(result["shards"])


def test_an_incomplete_record_is_named_not_counted_as_done(finished: Path, capsys: pytest.CaptureFixture) -> None:
    run = copy_run(finished, "incomplete")
    shard = run / "debate" / "shard-00001-of-00002.jsonl"
    lines = shard.read_text().splitlines()
    broken = json.loads(lines[0])
    del broken["turns"]
    shard.write_text("\n".join([json.dumps(broken), lines[1]]) + "\n")
    assert main([f"results_dir={run.parent}", "run_id=incomplete", "cluster=debug"]) == 2
    assert capsys.readouterr().err == f"error: {shard}:1: incomplete record (no 'turns'); delete that line to redo its question\n"
    result = reduce_debate(saved_task(Run(run), "debate"))  # the reducer reports it instead of crashing
    assert result["complete"] is False and "corrupt" in {s["state"] for s in result["shards"]}
    shard.write_text(lines[1] + "\n")  # the line deleted, as the message says: the question is redone
    assert submit([f"results_dir={run.parent}", "run_id=incomplete", "cluster=debug"])["result"]["complete"] is True
    assert len(shard.read_text().splitlines()) == 2


def test_a_resume_refused_names_the_sub_key_and_writes_nothing(finished: Path, capsys: pytest.CaptureFixture) -> None:
    run = copy_run(finished, "other-rounds")
    before = _files(run)
    assert main([f"results_dir={run.parent}", "run_id=other-rounds", "cluster=debug", "debate.max_rounds=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run other-rounds was made with debate.max_rounds=2 (this submission: 3); resume it with the same debate.max_rounds, or leave it out")
    assert _files(run) == before


def test_a_default_changed_since_the_run_was_made_is_no_difference(finished: Path) -> None:
    """A saved run whose prompt differs from today's default resumes with its own, also when a sibling key
    of the same section is given again (settings are adopted leaf by leaf, not section by section)."""
    run = copy_run(finished, "old-default")
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace("Problem: {question}", "Problem (old wording): {question}"))
    for shard in (run / "debate").glob("shard-*.jsonl"):
        shard.unlink()
    info = submit([f"results_dir={run.parent}", "run_id=old-default", "cluster=debug", "debate.baselines.vote_k=3"])
    assert info["result"]["complete"] is True


@pytest.mark.parametrize("content", ["", "stage: [unclosed\n", "- just\n- a list\n", "stage: debate\n"])
def test_a_damaged_config_is_one_line_for_submit_and_status(finished: Path, content: str) -> None:
    run = copy_run(finished, f"damaged-{len(content)}")
    (run / "config.yaml").write_text(content)
    for command in ([sys.executable, str(ROOT / "jobs" / "submit.py"), f"results_dir={run.parent}", f"run_id={run.name}"],
                    [sys.executable, str(ROOT / "jobs" / "status.py"), run.name, "--results-dir", str(run.parent)]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"error: {run / 'config.yaml'}: the run's config") and done.stderr.count("\n") == 1, done.stderr
        assert "Traceback" not in done.stdout + done.stderr


def test_two_submissions_of_one_new_run_id_do_not_both_pass(tmp_path: Path) -> None:
    """Eight submissions of one new run id at the same moment, each with its own seed: one creates the run,
    the seven others are checked against it and refused; config.yaml is the winner's, whole."""
    results = tmp_path / "results"
    composed = [load_config(tiny_overrides(results, "run_id=race", f"seed={seed}")) for seed in range(8)]
    configs = [build_config(cfg) for cfg in composed]
    barrier = threading.Barrier(len(configs))
    outcomes: list[object] = [None] * len(configs)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = open_run(configs[i], run_only_keys(composed[i]), RUN_ONLY_WHEN, completed)[2]
        except ConfigError as err:
            outcomes[i] = str(err)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    created = [i for i, o in enumerate(outcomes) if o is False]
    assert len(created) == 1, outcomes
    assert all(isinstance(o, str) and "was made with seed=" in o for i, o in enumerate(outcomes) if i not in created)
    assert f"seed: {created[0]}\n" in (results / "race" / "config.yaml").read_text()
    assert not list((results / "race").glob(".config.yaml.*")), "no temporary left"


def _local_entry(run: Path, pid: int, started: int | None) -> None:
    entry = {"time": "t", "stage": "debate", "cluster": "local", "name": "n", "shards": {"shard-00000-of-00002": str(pid), "shard-00001-of-00002": str(pid)},
             "reduce": str(pid), "started": {str(pid): started}}
    (run / "launch").mkdir(parents=True, exist_ok=True)
    (run / "launch" / JOBS_FILE).write_text(json.dumps(entry) + "\n")


def test_cancel_and_status_never_touch_a_process_they_cannot_identify(finished: Path) -> None:
    """A recorded job id whose pid now belongs to another process (here: a stranger's sleep, recorded with
    another start time, as after pid reuse) is neither signalled nor shown running; the same pid with its
    own start time is both."""
    run = copy_run(finished, "reused-pid")
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        start = process_start(stranger.pid)
        assert start is not None and process_alive(stranger.pid, start)
        for recorded in (start - 1, None):  # another process's start time; an entry from before start times were kept
            _local_entry(run, stranger.pid, recorded)
            assert cancel_run(Run(run)) == []
            status = run_status(Run(run))
            assert {row["state"] for row in status["shards"]} == {"COMPLETED"} and status["reduce"]["state"] == "COMPLETED"
            time.sleep(0.2)
            assert stranger.poll() is None, "the stranger was signalled"
        _local_entry(run, stranger.pid, start)
        assert cancel_run(Run(run)) == [str(stranger.pid)]
        assert stranger.wait(10) != 0
    finally:
        if stranger.poll() is None:
            stranger.kill()


def test_a_secret_interpolated_into_a_setting_is_refused(results: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_SECRETinterpolated123")
    assert main(["models=tiny", f"results_dir={results}", "debate.system_prompt=${oc.env:HF_TOKEN}"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: debate.system_prompt holds the value of the secret $HF_TOKEN; secrets stay in the environment "
                   "and out of settings (they would be written into the run folder)\n")
    assert "hf_SECRET" not in err and list(results.iterdir()) == []


def test_a_failed_reducer_under_wait_is_one_line(finished: Path) -> None:
    """The reducer cannot write its table (a folder stands where the file goes): the command's last line says
    so and where its log is, exit 1, no traceback in the terminal."""
    run = copy_run(finished, "reducer-fails")
    (run / "debate_accuracy.md").unlink()
    (run / "debate_accuracy.md").mkdir()
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "submit.py"), f"results_dir={run.parent}", "run_id=reducer-fails",
                           "cluster=local", "wait=true"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the debate reducer failed (") and "Is a directory" in last, done.stderr
    assert f"its log: {run / 'logs' / 'reduce-debate.log'}; rerun it with: python jobs/submit.py run_id=reducer-fails" in last


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 2 MiB tmpfs (root only, as CI is)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_nearly_full_disk_refuses_the_submission_in_one_line(small_disk: Path, capsys: pytest.CaptureFixture) -> None:
    results = small_disk / "results"
    assert main(["models=tiny", f"results_dir={results}", "cluster=debug", "limit=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: results_dir={results}: 2 MiB free on its file system, below paths.min_free_mib=200;")
    assert not results.exists()


def test_a_disk_that_fills_during_the_run_is_a_shard_write_error(small_disk: Path, capsys: pytest.CaptureFixture) -> None:
    """The real tmpfs fills while the shard writes: the shard says ShardWriteError in its log and keeps its
    complete records; the command ends in exit 1 without a traceback (a partial table, or the reducer's one
    line when it cannot write either); once there is room, the same command completes the run."""
    results = small_disk / "results"
    ballast = small_disk / "ballast"
    info = submit(tiny_overrides(results, "limit=8", "shards=1", "cluster=debug", "run_id=full", "paths.min_free_mib=0",
                                 "debate.batch_size=1"))
    assert info["result"]["complete"] is True  # the run fits; now fill the disk and redo it
    shard = results / "full" / "debate" / "shard-00000-of-00001.jsonl"
    lines = shard.read_text().splitlines()
    shard.write_text(lines[0] + "\n")
    free = os.statvfs(small_disk)
    ballast.write_bytes(b"x" * max(0, free.f_bavail * free.f_frsize - 3000))
    code = main([f"results_dir={results}", "run_id=full", "cluster=debug", "paths.min_free_mib=0"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    # the task log sits on the full disk too: the shard's error reaches stderr (the debug executor's task runs here)
    assert "ShardWriteError" in err and "No space left on device" in err, err
    kept = shard.read_text()
    assert kept.endswith("\n") and 1 <= len(kept.splitlines()) < 8
    ballast.unlink()
    assert submit([f"results_dir={results}", "run_id=full", "cluster=debug", "paths.min_free_mib=0"])["result"]["complete"] is True
    assert len(shard.read_text().splitlines()) == 8


# ---- Hardening II (issue 30): runs and files ----------------------------------------------------------------


def _command(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=ROOT, input=stdin)


def test_a_failing_debug_job_opens_no_debugger(finished: Path) -> None:
    """cluster=debug runs the jobs in the submitter; a job that raises used to open pdb's post-mortem, which read
    the rest of piped stdin as commands: now one line, exit 1, stdin untouched."""
    run = copy_run(finished, "debug-fails")
    (run / "debate_accuracy.md").unlink()
    (run / "debate_accuracy.md").mkdir()
    done = _command(str(ROOT / "jobs" / "submit.py"), f"results_dir={run.parent}", "run_id=debug-fails", "cluster=debug",
                    stdin="print('PDB-READ-THIS')\n")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "(Pdb)" not in done.stdout + done.stderr and "PDB-READ-THIS" not in done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the debate reducer failed (IsADirectoryError: [Errno 21] Is a directory: "), last
    assert last.endswith("; rerun it with: python jobs/submit.py run_id=debug-fails"), last


def test_a_resume_with_another_batch_is_refused_unless_the_run_is_batch_invariant(finished: Path) -> None:
    """The run was made without debate.batch_invariant=true: its batching settings change tokens (on a GPU's fast
    kernels up to 123 of 256 rows), so they are in its records' fingerprint and a resume must keep them; the
    refusal says what would have made them run-only. Invariance cannot be switched on for the rest of a run,
    and the shard count is the run's own either way. Nothing is written."""
    run = copy_run(finished, "batch-refused")
    shard = run / "debate" / "shard-00001-of-00002.jsonl"
    shard.write_text(shard.read_text().splitlines()[0] + "\n")
    before = _files(run)
    for changes, message in (
        (["debate.batch_size=1"], f"run batch-refused was made with debate.batch_size=256 (this submission: 1); resume it with the same "
                                  f"debate.batch_size, or leave it out (see {run / 'config.yaml'}); debate.batch_size changes results "
                                  "unless the run was made with debate.batch_invariant=true, which makes it run-only"),
        (["debate.batch_invariant=true", "debate.batch_size=1"], "run batch-refused was made with debate.batch_invariant=null (this submission: true)"),
        (["shards=1"], "run batch-refused was made with shards=2 (this submission: 1)"),
    ):
        with pytest.raises(ConfigError) as refused:
            submit([f"results_dir={run.parent}", "run_id=batch-refused", *changes])
        assert str(refused.value).startswith(message) and "\n" not in str(refused.value), str(refused.value)
    assert _files(run) == before


def test_a_run_made_before_a_default_changed_resumes_as_it_was_made(tmp_path: Path) -> None:
    """debate.vote_batch_rows came in the ninth session at null (each vote in batches of batch_size), the default
    until the sixteenth changed it to 1536 (and added debate.refill, off: what runs did). A run made with null
    resumes at null, whether its config.yaml says so or lacks the keys (a run made before they existed); the
    records written on resume carry the fingerprint of those before (that null's fingerprint is the one earlier
    runs had: tests/test_run_config.py); today's default given on the command line is refused as another
    experiment (the run was not made batch-invariant)."""
    results = tmp_path / "results"
    submit(tiny_overrides(results, "limit=2", "shards=1", "cluster=debug", "run_id=made-before", "debate.vote_batch_rows=null",
                          "debate.max_new_tokens=24", "debate.max_rounds=1"))
    run = results / "made-before"
    config, shard = run / "config.yaml", run / "debate" / "shard-00000-of-00001.jsonl"
    assert "  vote_batch_rows: null\n" in config.read_text() and "  refill: false\n" in config.read_text()
    for lacks_the_keys in (False, True):
        if lacks_the_keys:
            config.write_text(config.read_text().replace("  vote_batch_rows: null\n", "").replace("  refill: false\n", ""))
        shard.write_text(shard.read_text().splitlines()[0] + "\n")
        with pytest.raises(ConfigError, match=r"^run made-before was made with debate.vote_batch_rows=null \(this submission: 1536\)"):
            submit([f"results_dir={results}", "run_id=made-before", "debate.vote_batch_rows=1536"])
        info = submit([f"results_dir={results}", "run_id=made-before"])
        assert info["resumed"] and info["result"]["complete"] is True
        assert len(read_shard(shard)) == 2
        assert len({json.loads(line)["settings"] for line in shard.read_text().splitlines()}) == 1


def test_a_saved_config_without_a_stages_section_resumes_and_shows(finished: Path, tmp_path: Path) -> None:
    """The resume check and the status command type a saved config; one whose section of a stage it does not run was
    deleted by hand takes that section's defaults, as a key added since the run was made would: it resumes and shows,
    with no traceback. (In a results folder of its own: the status command of the other cases reads every run.)"""
    run = tmp_path / "results" / "no-train"
    shutil.copytree(finished, run)
    config = run / "config.yaml"
    saved = OmegaConf.load(config)
    saved.run_id = "no-train"
    del saved["train"]
    OmegaConf.save(saved, config)
    info = submit([f"results_dir={run.parent}", "run_id=no-train"])
    assert info["resumed"] and info["result"]["complete"] is True
    shown = subprocess.run([sys.executable, str(ROOT / "jobs" / "status.py"), "no-train", "--results-dir", str(run.parent)],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert shown.returncode == 0 and "Traceback" not in shown.stdout + shown.stderr, shown.stderr


def test_a_resume_may_change_run_only_settings(tmp_path: Path) -> None:
    """A batch-invariant run out of memory resumes at a smaller batch, without the cache reuse: with
    debate.batch_invariant=true the batching settings (run_only_when on their knob() in debate/settings.py)
    change no token, so they are outside the records' fingerprint and not compared on resume; the records
    made at two batch sizes are those of the run made at one. The engine and kernels are never among them, nor
    the shard count (the run's own, invariant or not)."""
    results = tmp_path / "results"
    submit(tiny_overrides(results, "limit=3", "shards=1", "cluster=debug", "run_id=whole", "debate.batch_invariant=true",
                          "debate.max_new_tokens=48", "debate.baselines.vote_models=[]"))
    run = copy_run(results / "whole", "smaller-batch")
    shard = run / "debate" / "shard-00000-of-00001.jsonl"
    shard.write_text(shard.read_text().splitlines()[0] + "\n")
    with pytest.raises(ConfigError, match=r"^run smaller-batch was made with shards=1 \(this submission: 3\); resume it with the same shards"):
        submit([f"results_dir={results}", "run_id=smaller-batch", "shards=3"])
    info = submit([f"results_dir={results}", "run_id=smaller-batch", "debate.batch_size=1", "debate.reuse_kv=false",
                   "debate.prefill_tokens=512"])
    assert info["resumed"] and info["result"]["complete"] is True
    whole = results / "whole" / "debate" / "shard-00000-of-00001.jsonl"
    assert without_timings(read_shard(shard)) == without_timings(read_shard(whole))
    assert len(read_shard(shard)) == 3


def test_a_resume_goes_on_in_the_runs_backend(finished: Path, capsys: pytest.CaptureFixture) -> None:
    """The run was made with cluster=debug: resumed by its id alone (the default backend is local), it goes on
    in the debug backend, with its cluster settings; naming another backend is taken as said."""
    run = copy_run(finished, "same-backend")
    shard = run / "debate" / "shard-00000-of-00002.jsonl"
    shard.write_text(shard.read_text().splitlines()[0] + "\n")
    info = submit([f"results_dir={run.parent}", "run_id=same-backend"])
    assert info["cluster"] == "debug" and info["result"]["complete"] is True
    assert "cluster=debug" in capsys.readouterr().out.splitlines()[0]
    assert "cpus_per_task: 1\n" in (run / "config.yaml").read_text()


def _status(run: Path, *extra: str) -> subprocess.CompletedProcess:
    return _command(str(ROOT / "jobs" / "status.py"), *extra, "--results-dir", str(run.parent))


def test_a_torn_job_list_is_named_and_the_run_still_shown_cancelled_and_resumed(finished: Path) -> None:
    run = copy_run(finished, "torn-jobs")
    jobs = run / "launch" / JOBS_FILE
    whole = jobs.read_text()
    with jobs.open("ab") as handle:
        handle.write(b'{"time": "t", "stage": "deb')  # a write cut short
    for command in ([str(ROOT / "jobs" / "status.py"), "torn-jobs"], [str(ROOT / "jobs" / "status.py")],
                    [str(ROOT / "jobs" / "cancel.py"), "torn-jobs"]):
        done = _command(*command, "--results-dir", str(run.parent))
        assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr, done.stderr
    shown = _status(run, "torn-jobs")
    assert f"warning: {jobs}:2: not a job record (a write cut short?); skipped: its jobs are not shown or cancelled here; delete that line" in shown.stdout
    assert "(1 damaged file(s): python jobs/status.py torn-jobs)" in _status(run).stdout
    cancelled = _command(str(ROOT / "jobs" / "cancel.py"), "torn-jobs", "--results-dir", str(run.parent))
    assert cancelled.stderr == f"warning: {jobs}:2: not a job record (a write cut short?); skipped: its jobs are not shown or cancelled here; delete that line\n"
    submit([f"results_dir={run.parent}", "run_id=torn-jobs", "cluster=debug"])
    lines = jobs.read_text().splitlines()
    assert jobs.read_text().startswith(whole) and len(lines) == 3 and lines[1] == '{"time": "t", "stage": "deb'
    assert json.loads(lines[2])["stage"] == "debate", "the next submission is a line of its own"


def test_a_folder_in_place_of_the_job_list_is_named(finished: Path, capsys: pytest.CaptureFixture) -> None:
    run = copy_run(finished, "jobs-folder")
    jobs = run / "launch" / JOBS_FILE
    jobs.unlink()
    jobs.mkdir()
    shown = _status(run, "jobs-folder")
    assert shown.returncode == 0 and "Traceback" not in shown.stderr
    assert f"warning: {jobs}: cannot read the run's job list (Is a directory); its jobs are not shown or cancelled here" in shown.stdout
    assert _command(str(ROOT / "jobs" / "cancel.py"), "jobs-folder", "--results-dir", str(run.parent)).returncode == 0
    assert main([f"results_dir={run.parent}", "run_id=jobs-folder", "cluster=debug"]) == 2
    assert capsys.readouterr().err == f"error: {jobs}: not a file (the run's list of its jobs goes there); move it away, then resubmit\n"


@pytest.mark.parametrize("damage", ["garbage", "non-utf8", "folder"])
def test_a_damaged_shard_is_a_status_row_and_a_one_line_refusal(finished: Path, damage: str, capsys: pytest.CaptureFixture) -> None:
    run = copy_run(finished, f"shard-{damage}")
    shard = run / "debate" / "shard-00001-of-00002.jsonl"
    good = shard.read_text().splitlines()[0]
    if damage == "folder":
        shard.unlink()
        shard.mkdir()
        named = f"{shard}: not a file where the shard's records go; move it away, then rerun the shard"
    else:
        shard.write_bytes(good.encode() + (b"\n\xff\xfe{}\n" if damage == "non-utf8" else b"\nnot json\n"))
        named = f"{shard}:2: corrupt record ("
    shown = _status(run, run.name)
    assert shown.returncode == 0 and "Traceback" not in shown.stdout + shown.stderr, shown.stderr
    assert "shard-00001-of-00002  " in shown.stdout and " DAMAGED " in shown.stdout and f"warning: {named}" in shown.stdout
    listed = _status(run)
    assert listed.returncode == 0 and f"{run.name} " in listed.stdout and "done " in listed.stdout, listed.stderr
    assert main([f"results_dir={run.parent}", f"run_id={run.name}", "cluster=debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {named}") and err.count("\n") == 1


@pytest.mark.parametrize("note", [None, 7, ["x"]])
def test_a_progress_file_of_the_wrong_shape_is_no_progress(finished: Path, note: object) -> None:
    run = copy_run(finished, f"progress-{type(note).__name__}")
    for path in (run / "progress" / "debate").glob("*.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "state": "failed", "note": note}))
    shown = _status(run, run.name)
    assert shown.returncode == 0 and "Traceback" not in shown.stdout + shown.stderr, shown.stderr
    assert f"run {run.name} (debate, debug): complete" in shown.stdout


def test_an_outcomes_file_that_is_not_one_is_one_line(finished: Path, tmp_path: Path) -> None:
    good = (finished / "debate_outcomes.csv").read_bytes()
    header = good.split(b"\n", 1)[0]
    cases = {
        "latin1.csv": (b"index,gold\xff\n", "not UTF-8 text (byte 10); not an outcomes file a reducer wrote"),
        "huge.csv": (header + b"\n1,2," + b"x" * 131073 + b"\n", "not an outcomes file (field larger than field limit (131072))"),
        "cut-header.csv": (header[: header.rindex(b"|") + 3], "1: not an outcomes file (expected 'index,gold,<method> | answer,"),
        "header-only.csv": (header + b"\n", "no questions after the header (a file cut short?)"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        done = _command(str(ROOT / "jobs" / "outcomes.py"), str(path))
        assert done.returncode == 2 and done.stdout == "", (name, done.stdout)
        assert done.stderr.startswith(f"error: {path}") and message in done.stderr and done.stderr.count("\n") == 1, (name, done.stderr)


# ---- names and pages ---------------------------------------------------------------------------------------

HOSTILE_NAMES = ("p | q", "[x](javascript:alert%281%29)")


def test_model_names_reach_the_tables_and_the_page_escaped(tmp_path: Path) -> None:
    """Model folders named ``p | q`` and ``[x](javascript:alert%281%29)`` debate: each markdown row keeps its six
    cells, the names read back whole, and report.html holds no link but its own anchors."""
    import shutil

    from pipeline.reduce.report import _cells, markdown_html

    folders = []
    for name, source in zip(HOSTILE_NAMES, ("tiny-llama", "tiny-qwen2")):
        folders.append(tmp_path / "models" / name)
        shutil.copytree(ROOT / "pipeline" / "assets" / "tiny" / source, folders[-1])
    results = tmp_path / "results"
    submit(tiny_overrides(results, "limit=2", "shards=1", "cluster=debug", "run_id=names", f"models.a='{folders[0]}'",
                          f"models.b='{folders[1]}'", "debate.max_rounds=1"))
    table = (results / "names" / "debate_accuracy.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "alone" in line]
    assert len(rows) == 4 and sorted(len(_cells(row)) for row in rows) == [6, 6, 9, 9], rows  # the methods table and the paired one
    rendered = markdown_html(table, results / "names")
    assert f"<td>model a ({HOSTILE_NAMES[0]}) alone</td>" in rendered and f"<td>model b ({HOSTILE_NAMES[1]}) alone</td>" in rendered
    page = (results / "names" / "report.html").read_text()
    assert sorted(set(re.findall(r'href="([^"]*)"', page))) == ["#browser", "#config"]
    assert "<a " not in page.replace('<a href="#browser">', "").replace('<a href="#config">', "")


def test_markdown_escapes_keep_a_name_one_literal_cell() -> None:
    from pipeline.markdown import code, escape
    from pipeline.reduce.report import _cells, _inline

    for name in (*HOSTILE_NAMES, "a*b*_c_", "<img src=x onerror=alert(1)>", "`x`", "line\nbreak", "back\\slash", "tiny_llama"):
        row = f"| {escape(name)} | 1 |"
        [cell, one] = _cells(row)
        assert one == "1" and html.unescape(_inline(cell)) == name.replace("\n", " "), name
        assert "<" not in _inline(cell).replace("&lt;", "")
    assert escape("tiny_llama-1.5b") == "tiny_llama-1.5b", "a plain name stays as it is"
    assert _inline(code("a`b")) == "<code>a`b</code>" and _inline(code("`x`")) == "<code>`x`</code>"
    assert _inline("[page](debate_report.html) [x](javascript:alert(1)) [y](https://example.com)") == (
        '<a href="debate_report.html">page</a> [x](javascript:alert(1)) [y](https://example.com)')


def test_a_command_started_with_sigint_ignored_starts_programs_that_take_sigint() -> None:
    """`python jobs/submit.py ... &` in a script: the shell starts it with SIGINT ignored, and without taking
    it back every local job it starts would ignore the SIGINT of `jobs/cancel.py`."""
    probe = ("import subprocess, sys\n"
             "from pipeline.cli import run_command\n"
             "def main():\n"
             "    child = subprocess.Popen(['sleep', '30'])\n"
             "    ignored = [l for l in open(f'/proc/{child.pid}/status') if l.startswith('SigIgn:')][0].split()[1]\n"
             "    child.kill()\n"
             "    print(int(ignored, 16) & 2)\n"
             "    return 0\n"
             "START\n")
    ignore = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731
    for start, inherited in (("run_command(main)", "0"), ("main()", "2")):
        done = subprocess.run([sys.executable, "-c", probe.replace("START", start)], capture_output=True, text=True, cwd=ROOT,
                              preexec_fn=ignore, timeout=60)
        assert done.stdout.strip() == inherited, done.stderr
