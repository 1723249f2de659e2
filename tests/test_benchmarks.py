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


def test_phase_table_reads_phase_lines_with_and_without_the_roofline(tmp_path: Path) -> None:
    """Today's phase lines give shares, capturing and host seconds; the lines of the code at issue 32's start (the
    before of a same-card comparison) give rows, tokens and seconds only, and must still make a table."""
    stamp = "2026-12-07 10:00:0{}"
    head = "INFO pipeline.progress: group {}/2: vote of 6, model a: 1536 rows in 20s, 300000 tokens (15000.0 tok/s)"
    roofline = ("; prefill 61,234 tok/s (31% of its limit), decode 17,812 tok/s (40% of its limit; 1.5 s capturing graphs),"
                " host 0.5 s")
    for name, detail in (("new", roofline), ("old", "")):
        log = tmp_path / f"{name}.log"
        log.write_text("\n".join([f"{stamp.format(0)} INFO pipeline.models.loading: loaded model a",
                                  f"{stamp.format(1)} {head.format(1)}{detail}", f"{stamp.format(2)} {head.format(2)}{detail}",
                                  f"{stamp.format(7)} INFO pipeline.debate.shard: shard-0.jsonl: 2/2 problems done"]) + "\n")
    report = _run("phase_table.py", str(tmp_path / "new.log"), str(tmp_path / "old.log"), tmp_path=tmp_path)
    new, old = (run["phases"]["vote of 6, model a"] for run in report["runs"])
    assert [run["shard_seconds"] for run in report["runs"]] == [7.0, 7.0]
    assert new["seconds"] == old["seconds"] == 40.0 and new["new_tokens"] == old["new_tokens"] == 600000
    assert new["decode_share_pct"] == [40, 40]
    assert (new["capture_seconds"], new["host_seconds"]) == (3.0, 1.0)
    assert old["decode_share_pct"] is None and old["capture_seconds"] is None and old["host_seconds"] is None


def test_same_calls_names_the_first_call_that_parts_and_why(tmp_path: Path) -> None:
    """Two runs' debug lines: the first call that differs, and whether its inputs, its layout (a cache given back
    before it) or only its result (the call itself) did."""
    line = ("2026-12-07 10:00:00 shard DEBUG pipeline.engine.decode: {model}: 256 rows x 300 columns, T={t}, 0 reused tokens, "
            "9000 prefilled in 1 chunks, 0 rows copied; digests: inputs {inputs}, tokens {tokens}, cache {cache}")
    release = "2026-12-07 10:00:00 shard INFO pipeline.engine.memory: a gives its cache back (9.0 GiB): 10 rows of b fit beside it, 20 wanted"
    calls = [("a", 0, "i1", "t1", "c1"), ("b", 0.7, "i2", "t2", "c2"), ("a", 0, "i3", "t3", "c3")]

    def write(name: str, changed: dict[int, tuple[str, ...]], released: bool = False) -> str:
        lines = [line.format(model=m, t=t, inputs=i, tokens=o, cache=c) for m, t, i, o, c in
                 (changed.get(n, call) for n, call in enumerate(calls))]
        if released:
            lines.insert(1, release)
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        return str(tmp_path / name)

    same = write("same.log", {})
    itself = write("itself.log", {1: ("b", 0.7, "i2", "t9", "c9")})
    other_inputs = write("inputs.log", {2: ("a", 0, "i9", "t9", "c9")})
    report = _run("same_calls.py", same, same, tmp_path=tmp_path)
    assert report["same"] == 3 and report["first_difference"] is None
    first = _run("same_calls.py", same, itself, tmp_path=tmp_path)["first_difference"]
    assert (first["call"], first["model"], first["differ"], first["cause"]) == (2, "b", ["tokens", "cache"], "the call itself")
    first = _run("same_calls.py", same, other_inputs, tmp_path=tmp_path)["first_difference"]
    assert (first["call"], first["differ"], first["cause"]) == (3, ["inputs", "tokens", "cache"], "inputs")
    first = _run("same_calls.py", same, write("released.log", {}, released=True), tmp_path=tmp_path)["first_difference"]
    assert (first["call"], first["differ"], first["cause"]) == (2, ["released"], "decisions")
