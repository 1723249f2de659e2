"""An adversarial user's cases: no silently mixed table, no signal to a process the suite cannot identify, no
traceback from a damaged run folder, nothing written by a refused submission."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.config import ConfigError
from pipeline.stages import load_config
from pipeline.launch import JOBS_FILE
from pipeline.monitor import cancel_run, run_status
from pipeline.reduce.debate import reduce_debate
from pipeline.runs import Run, open_run
from pipeline.submit import main, submit
from pipeline.launch.local import process_alive, process_start
from tests.conftest import ROOT, copy_run, tiny_overrides


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
    result = reduce_debate(str(run))
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
    result = reduce_debate(str(run))  # the reducer reports it instead of crashing
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


@pytest.mark.parametrize("content", ["", "stage: [unclosed\n", "- just\n- a list\n"])
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
    configs = [load_config(tiny_overrides(results, "run_id=race", f"seed={seed}")) for seed in range(8)]
    barrier = threading.Barrier(len(configs))
    outcomes: list[object] = [None] * len(configs)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = open_run(configs[i])[1]
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
