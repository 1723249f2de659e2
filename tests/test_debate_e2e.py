"""The debate stage end to end on the tiny pair: submit -> shards -> reducer -> tables and log."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.monitor import format_status, run_status
from pipeline.reduce.debate import reduce_debate
from pipeline.runs import Run
from pipeline.shards import read_shard
from pipeline.stages import saved_task
from pipeline.submit import submit
from tests.conftest import ROOT, comparable_tables, tiny_overrides


def _records(run_dir: Path) -> list[dict]:
    return [r for f in sorted((run_dir / "debate").glob("shard-*.jsonl")) for r in read_shard(f)]


def _untimed(value: object) -> object:
    """Records (sorted by question) without their wall times, at any depth."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return sorted((_untimed(v) for v in value), key=lambda r: r["index"]) if value and isinstance(value[0], dict) and "index" in value[0] \
            else [_untimed(v) for v in value]
    return value


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """limit=16, shards=4 through submitit's local executor, waiting for the reducer."""
    results = tmp_path_factory.mktemp("e2e") / "results"
    info = submit(tiny_overrides(results, "limit=16", "shards=4", "cluster=local", "wait=true", "run_id=e2e"))
    return {"info": info, "results": results, "run": results / "e2e"}


def test_every_question_is_recorded_exactly_once(local_run: dict) -> None:
    records = _records(local_run["run"])
    assert sorted(r["index"] for r in records) == list(range(16))
    shards = sorted(p.name for p in (local_run["run"] / "debate").glob("shard-*.jsonl"))
    assert shards == [f"shard-0000{i}-of-00004.jsonl" for i in range(4)]


def test_records_hold_the_whole_debate(local_run: dict) -> None:
    for r in _records(local_run["run"]):
        assert {"index", "question", "gold", "turns", "final_answer", "agreed", "rounds", "correct", "first_answers", "solo", "vote"} <= set(r)
        assert 1 <= r["rounds"] <= 2
        assert [t["model"] for t in r["turns"]][:2] == ["a", "b"]
        for t in r["turns"]:
            assert {"model", "round", "text", "answer", "tokens", "seconds"} <= set(t)
            assert 0 < t["tokens"] <= 96
        if r["agreed"]:
            assert r["turns"][-1]["answer"] is not None
        assert len(r["vote"]["a"]["samples"]) == 3


def test_the_tiny_models_stop_on_their_end_of_turn_token(local_run: dict) -> None:
    turns = [t for r in _records(local_run["run"]) for t in r["turns"]]
    stopped = sum(t["stopped"] for t in turns)
    assert stopped >= 0.8 * len(turns), f"only {stopped}/{len(turns)} turns stopped before the limit"


def test_reducer_wrote_tables_plot_and_log(local_run: dict) -> None:
    run = local_run["run"]
    result = local_run["info"]["result"]
    assert result["complete"] is True
    assert "| debate |" in result["table"] and "majority vote (k=3)" in result["table"]
    summary = json.loads((run / "debate_accuracy.json").read_text())
    assert [m["method"] for m in summary["methods"]][:3] == ["debate", "model a (tiny-llama) alone", "model b (tiny-qwen2) alone"]
    assert [r["method"] for r in summary["per_round"]] == ["after round 1", "after round 2"]
    assert (run / "debate_accuracy_per_round.png").read_bytes()[:4] == b"\x89PNG"
    log = (local_run["results"] / "transcripts.log").read_text()
    assert log.count("==== run e2e |") == 1 and "--- problem 15 |" in log


def test_the_table_reads_pass_and_mean_off_the_votes_samples(local_run: dict) -> None:
    """pass@3 and mean@3 rows with n and an interval beside each vote, recomputed here from the shards'
    samples, and the curve of all three against j = 1..3 as a PNG."""
    from pipeline.answers import same_answer

    run = local_run["run"]
    records = sorted(_records(run), key=lambda r: r["index"])
    rows = {m["method"]: m for m in json.loads((run / "debate_accuracy.json").read_text())["methods"]}
    table = local_run["info"]["result"]["table"]
    for key, label in (("a", "model a (tiny-llama)"), ("b", "model b (tiny-qwen2)")):
        right = [[same_answer(s, r["gold"]) for s in r["vote"][key]["samples"]] for r in records]
        any_right = sum(any(flags) for flags in right)
        pass_row, mean_row = rows[f"{label} pass@3"], rows[f"{label} mean@3"]
        assert (pass_row["correct"], pass_row["n"]) == (any_right, 16)
        assert mean_row["accuracy"] == round(sum(sum(f) / 3 for f in right) / 16, 4) and mean_row["n"] == 16
        for row in (pass_row, mean_row):
            assert row["ci95_low"] <= row["accuracy"] <= row["ci95_high"] and row["ci95_high"] > 0
            assert f"| {row['method']} | {100 * row['accuracy']:.1f}% | {100 * row['ci95_low']:.1f}% - {100 * row['ci95_high']:.1f}% | {row['correct']} / 16 |" in table
        assert pass_row["accuracy"] >= rows[f"{label} majority vote (k=3)"]["accuracy"]
    curves = json.loads((run / "debate_accuracy.json").read_text())["sampling"]
    assert [(c["model"], c["k"], len(c["points"])) for c in curves] == [("a", 3, 9), ("b", 3, 9)]
    assert (run / "debate_vote_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_reducer_is_idempotent_and_logs_once_even_when_racing(local_run: dict) -> None:
    run = local_run["run"]
    before = {p.name: p.read_bytes() for p in run.glob("debate_accuracy.*") if p.suffix != ".png"}
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        outcomes = pool.map(reduce_debate, [saved_task(Run(run), "debate")] * 3)
    assert not any(o.get("transcripts_appended") for o in outcomes)
    after = {p.name: p.read_bytes() for p in run.glob("debate_accuracy.*") if p.suffix != ".png"}
    assert after == before
    assert (local_run["results"] / "transcripts.log").read_text().count("==== run e2e |") == 1


def test_racing_reducers_append_a_fresh_run_exactly_once(local_run: dict, tmp_path: Path) -> None:
    results = local_run["results"]
    copy = results / "race"
    subprocess.run(["cp", "-r", str(local_run["run"]), str(copy)], check=True)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        outcomes = pool.map(reduce_debate, [saved_task(Run(copy), "debate")] * 4)
    assert sum(bool(o["transcripts_appended"]) for o in outcomes) == 1
    assert (results / "transcripts.log").read_text().count("==== run race |") == 1


def test_resubmitting_a_finished_run_submits_no_shard(local_run: dict) -> None:
    info = submit([f"results_dir={local_run['results']}", "run_id=e2e", "wait=true"])
    assert info["resumed"] and info["submitted_shards"] == []
    assert info["result"]["complete"]
    assert len(_records(local_run["run"])) == 16


def test_a_shard_killed_mid_run_resumes_to_the_same_tables(local_run: dict, tmp_path: Path) -> None:
    """SIGKILL a single-shard run after some records are written, rerun it, compare with the clean run: the
    same tables and, batch invariance holding, the same records (the resumed questions ran in other batches)."""
    results = tmp_path / "results"
    args = tiny_overrides(results, "limit=16", "shards=1", "cluster=debug", "run_id=killed", "debate.batch_size=4")
    proc = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "submit.py"), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    shard = results / "killed" / "debate" / "shard-00000-of-00001.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not shard.exists() or len(read_shard(shard)) < 5):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(read_shard(shard))
    assert 5 <= done_before < 16, done_before
    info = submit([f"results_dir={results}", "run_id=killed", "cluster=debug"])
    records = read_shard(shard)
    assert sorted(r["index"] for r in records) == list(range(16)), "no duplicate, no lost question"
    assert info["result"]["complete"]
    clean = tmp_path / "clean"
    submit(tiny_overrides(clean, "limit=16", "shards=1", "cluster=debug", "run_id=killed", "debate.batch_size=4"))
    assert comparable_tables(results / "killed") == comparable_tables(clean / "killed")
    assert _untimed(_records(results / "killed")) == _untimed(_records(clean / "killed"))


def test_status_and_cancel_work_for_local_runs(local_run: dict) -> None:
    status = run_status(Run(local_run["run"]))
    assert status["state"] == "complete" and status["done"] == status["steps"][0]["total"] == 16
    assert [(r["shard"], r["done"], r["total"], r["state"]) for r in status["shards"]] == [(i, 4, 4, "COMPLETED") for i in range(4)]
    assert "run e2e (debate, local): complete, 16/16 problems" in format_status(status)
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "cancel.py"), "e2e", "--results-dir", str(local_run["results"])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "cancelled nothing" in done.stdout
