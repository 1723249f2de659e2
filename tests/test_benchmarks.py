"""The benchmarks that need no GPU still run, on tiny inputs, and say what they measured: a benchmark is run on a
lent machine with little time, where a script broken by a change elsewhere (``bench_debate.py --mode phases``
once took one argument fewer than the engine passed) costs the whole lease. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def _run(script: str, *args: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{script}.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(out)], cwd=ROOT, check=True,
                   capture_output=True, text=True, timeout=600)
    return json.loads(out.read_text())


def test_bench_debate_times_every_phase_of_a_shard_and_its_host_seconds(tmp_path: Path) -> None:
    report = _run("bench_debate.py", "--models", "tiny", "--mode", "phases", "--questions", "4", "--rounds", "1",
                  "--max-new-tokens", "8", tmp_path=tmp_path)
    names = [p["phase"] for p in report["phases"]]
    assert names[:3] == ["model b alone", "vote of 2, model a", "vote of 2, model b"], names
    assert all(p["host_s"] >= 0 and p["host_s"] <= p["seconds"] for p in report["phases"])


def test_bench_prefix_index_finds_every_prompts_row(tmp_path: Path) -> None:
    report = _run("bench_prefix_index.py", "--questions", "16", "--reply", "64", tmp_path=tmp_path)
    assert set(report["cases"]) == {"vote after solo", "turn after vote", "vote after another group", "six batches"}
    assert all(c["found"] == c["prompts"] for c in report["cases"].values())


def test_bench_prompts_pads_from_ids_as_the_tokenizer_does(tmp_path: Path) -> None:
    report = _run("bench_prompts.py", "--questions", "8", "--batch", "16", tmp_path=tmp_path)
    assert report["rows"] == 48 and report["batches"] == 3 and report["same_tensors"] is True
    assert report["distinct_conversations"] == 8 and report["same_ids"] is True, "each question's six samples tokenized once"


def test_bench_reading_reads_the_labelled_replies(tmp_path: Path) -> None:
    report = _run("bench_reading.py", "--repeat", "1", tmp_path=tmp_path)
    assert report["texts"] == 465 and report["seconds"] > 0
