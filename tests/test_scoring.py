"""Scoring from kept texts: the debate stops on the same stated answer, every reply keeps its text and stop
reason, a pair of one model twice gives distinct rows and columns, and a recorded run is scored again by one
command."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.data import Problem
from pipeline.debate import engine as debate_engine
from pipeline.debate.engine import DebateEngine
from pipeline.debate.settings import Baselines, DebateSettings
from pipeline.engine.generation import Completion
from pipeline.reduce.debate import reduce_debate
from pipeline.reduce.outcomes import read_csv
from pipeline.runs import Run
from pipeline.shards import read_shard
from pipeline.stages import saved_task
from pipeline.submit import submit
from tests.conftest import ROOT, NamedModel, tiny_overrides

# Replies as Qwen2.5-Coder writes them: Markdown headings whose step numbers are not answers.
A_18 = "#### Step 1: Eggs left\n16 - 3 - 4 = 9\n#### Step 2: Money\n9 * 2 = 18\n\\[\n\\boxed{18}\n\\]"
B_18 = "#### 1. Check the other solution\nTheir steps are right.\n#### 2. Result\nSo she makes $18.\n#### 18"
B_20 = "#### Step 3: Recompute\n9 * 2 = 20\n#### 20"


def _scripted(monkeypatch: pytest.MonkeyPatch, replies: dict[tuple[str, int], str]) -> list[tuple[str, int]]:
    """The engine's generation replaced by fixed replies per (model, problem index); returns the calls made."""
    calls: list[tuple[str, int]] = []

    def generate(chat, convs, **_) -> list[Completion]:
        question_of = {p.question: p.index for p in PROBLEMS}
        out = []
        for conv in convs:
            index = next(i for q, i in question_of.items() if q in conv[0]["content"] or q in conv[-1]["content"])
            calls.append((chat.name, index))
            out.append(Completion(replies[(chat.name, index)], 20, 0.1, True))
        return out

    monkeypatch.setattr(debate_engine, "generate_chat", generate)
    return calls


PROBLEMS = [Problem(0, "Janet's ducks lay 16 eggs ...", "18"), Problem(1, "Another question about eggs ...", "18")]


def test_a_debate_whose_models_state_the_same_answer_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both models state 18 under Markdown headings in round 1 (problem 0): the debate stops there, although
    the heading lines hold other numbers. On problem 1 they differ (18 and 20) and it goes on to round 2."""
    calls = _scripted(monkeypatch, {("A", 0): A_18, ("B", 0): B_18, ("A", 1): A_18, ("B", 1): B_20})
    settings = DebateSettings(max_rounds=2, baselines=Baselines(solo=False, vote_models=()))
    records = []
    DebateEngine({"a": NamedModel("A"), "b": NamedModel("B")}, settings, seed=0).run_all(PROBLEMS, records.append)
    by_index = {r["index"]: r for r in records}
    assert (by_index[0]["agreed"], by_index[0]["rounds"], len(by_index[0]["turns"])) == (True, 1, 2)
    assert [t["answer"] for t in by_index[0]["turns"]] == ["18", "18"]
    assert (by_index[1]["agreed"], by_index[1]["rounds"], len(by_index[1]["turns"])) == (False, 2, 4)
    assert calls.count(("A", 0)) == 1 and calls.count(("A", 1)) == 2


@pytest.fixture(scope="module")
def twice(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny Llama as both models of the pair, with model b alone and a vote for each."""
    results = tmp_path_factory.mktemp("twice") / "results"
    info = submit(tiny_overrides(results, "models.b=tiny-llama", "limit=6", "shards=2", "cluster=debug", "wait=true",
                                 "run_id=twice", "debate.max_new_tokens=48", "debate.baselines.vote_k=2"))
    return {"info": info, "run": results / "twice", "results": results}


def test_every_reply_keeps_its_text_and_stop_reason(twice: dict) -> None:
    records = [r for f in sorted((twice["run"] / "debate").glob("shard-*.jsonl")) for r in read_shard(f)]
    assert len(records) == 6
    for r in records:
        replies = [*r["turns"], r["solo"]["b"], *(x for v in r["vote"].values() for x in v["replies"])]
        assert len(replies) >= 2 + 1 + 2 * 2
        for reply in replies:
            assert isinstance(reply["text"], str) and isinstance(reply["stopped"], bool)
            assert {"answer", "flexible", "form", "tokens", "seconds"} <= set(reply)
        assert r["solo"]["a"]["turn"] == 0 and r["solo"]["a"]["answer"] == r["turns"][0]["answer"]
        assert r["vote"]["a"]["samples"] == [x["answer"] for x in r["vote"]["a"]["replies"]]


def test_one_model_twice_gives_distinct_rows_and_columns_and_outcomes_recomputes_each(twice: dict) -> None:
    run = twice["run"]
    summary = json.loads((run / "debate_accuracy.json").read_text())
    methods = [m["method"] for m in summary["methods"] if m["kind"] == "method"]
    assert methods == ["debate", "model a (tiny-llama) alone", "model b (tiny-llama) alone",
                       "model a (tiny-llama) majority vote (k=2)", "model b (tiny-llama) majority vote (k=2)"]
    with (run / "debate_outcomes.csv").open() as handle:
        header = next(csv.reader(handle))
    assert len(header) == len(set(header))
    outcomes = read_csv(run / "debate_outcomes.csv")
    for row in summary["methods"]:
        if row["kind"] == "method":
            flags = [right for _, right in outcomes.methods[row["method"]].values()]
            assert (sum(flags), len(flags)) == (row["correct"], row["n"])
    printed = subprocess.run([sys.executable, str(ROOT / "jobs" / "outcomes.py"), str(run / "debate_outcomes.csv")],
                             capture_output=True, text=True, check=True).stdout
    for name in methods:
        assert f"| {name} |" in printed


def test_the_rescore_command_reads_a_recorded_run_again(twice: dict, tmp_path: Path) -> None:
    """A run whose records were read by an older rule (the heading's step number): rescoring reads the kept
    texts again, counts what changed, rewrites the shard and the table, and keeps the old table beside it."""
    import shutil

    run = twice["run"].parent / "rescored"
    shutil.copytree(twice["run"], run)
    (run / "config.yaml").write_text((twice["run"] / "config.yaml").read_text().replace("run_id: twice", "run_id: rescored"))
    shard = sorted((run / "debate").glob("shard-*.jsonl"))[0]
    records = [json.loads(line) for line in shard.read_text().splitlines()]
    gold = records[0]["gold"]
    records[0]["solo"]["b"].update(text=f"#### Step 3: Add\n\\boxed{{{gold}}}", stopped=True, answer="3", correct=False)
    shard.write_text("".join(json.dumps(r) + "\n" for r in records))
    reduce_debate(saved_task(Run(run), "debate"))  # the table as the older rule made it
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "rescore.py"), "rescored", "--results-dir", str(twice["results"])],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "1 answers changed" in done.stdout and "debate_accuracy.before-rescore.md" in done.stdout
    assert read_shard(shard)[0]["solo"]["b"]["answer"] == gold and read_shard(shard)[0]["solo"]["b"]["correct"] is True
    after = json.loads((run / "debate_accuracy.json").read_text())
    before = json.loads((run / "debate_accuracy.before-rescore.json").read_text())
    row = "model b (tiny-llama) alone"
    assert {m["method"]: m for m in after["methods"]}[row]["correct"] == {m["method"]: m for m in before["methods"]}[row]["correct"] + 1
    again = subprocess.run([sys.executable, str(ROOT / "jobs" / "rescore.py"), "rescored", "--results-dir", str(twice["results"])],
                           capture_output=True, text=True, check=True)
    assert "0 answers changed" in again.stdout
