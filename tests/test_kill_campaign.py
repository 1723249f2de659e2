"""Kill campaign: SIGKILL shards and reducers at random points; nothing is lost, nothing is doubled.

For the debate and eval stages, a single-shard tiny run is started as ``python jobs/submit.py ...`` and its
process group is SIGKILLed after a delay drawn from a seeded ``random.Random``, then started again (and
killed again), several times, before one uninterrupted resume. After every kill the shard's complete
records must have unique indices, must still hold every record the previous kill left (byte for byte),
and must each equal the undisturbed run's record for that index except the wall-time fields (``seconds``);
at the end the merged table equals the undisturbed run's. Then deterministic mid-write cases (a record's
line cut where a kill in the middle of its write would cut it), and the debate reducer killed at random
points: its tables are never half-written and the transcript log holds the run's block 0 or 1 times,
complete. Counts go to ``/tmp/kill_campaign.json`` (and are printed).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pipeline.shards import read_shard
from pipeline.submit import submit
from tests.conftest import ROOT, comparable_tables, tiny_overrides

SUMMARY_PATH = Path("/tmp/kill_campaign.json")
SUMMARY: dict[str, Any] = {}
SEED = 20261125
DEBATE_KILLS = 8
EVAL_KILLS = 8
REDUCER_TRIES = 15
MAX_ATTEMPTS = 24  # per shard campaign: kills plus runs that finished before their kill
RESTART_WHEN_LEFT = 0.25  # a shard with at most this share left to do is checked, then started over
RUN_ID = "kc"
TABLES = ("debate_accuracy.json", "debate_accuracy.csv", "debate_accuracy.md", "debate_accuracy_per_round.png")


def _note(section: str, counts: dict[str, Any]) -> None:
    """Keeps a section of the summary, rewrites the JSON file and prints the counts."""
    SUMMARY[section] = counts
    SUMMARY_PATH.write_text(json.dumps(SUMMARY, indent=2) + "\n")
    print(f"\n{section}: {json.dumps(counts)}")


def _strip_seconds(value: Any) -> Any:
    """A record without its wall-time fields (``seconds`` at any depth: turns, solo, vote, the record)."""
    if isinstance(value, dict):
        return {k: _strip_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_strip_seconds(v) for v in value]
    return value


def _canon(record: dict[str, Any]) -> str:
    """A record's JSON line minus time fields, keys in written order: equal strings mean identical records."""
    return json.dumps(_strip_seconds(record), ensure_ascii=False)


def _complete_part(data: bytes) -> bytes:
    return data[: data.rfind(b"\n") + 1]


def _start(args: list[str], out: Path) -> subprocess.Popen:
    """``python jobs/submit.py ...`` in its own process group (what is killed is the whole group)."""
    with open(out, "ab") as sink:
        return subprocess.Popen([sys.executable, str(ROOT / "jobs" / "submit.py"), *args], cwd=ROOT,
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)


def _new_log_text(logs: Path, log_glob: str, sizes: dict[Path, int]) -> str:
    """What the task logs under ``logs`` gained since ``sizes`` was taken."""
    return "".join(p.read_bytes()[sizes.get(p, 0):].decode("utf-8", "replace") for p in sorted(logs.glob(log_glob)))


def _wait_for_task_start(proc: subprocess.Popen, logs: Path, log_glob: str, sizes: dict[Path, int], timeout: float = 120) -> bool:
    """Waits until the shard task logs its start (``... N to do``); False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if " to do" in _new_log_text(logs, log_glob, sizes):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError("the shard task did not start")


def _undisturbed(args: list[str], shard: Path, total: int, logs: Path, log_glob: str, out: Path) -> dict[str, float]:
    """Runs to the end, noting when the task started and when the shard got its first and its last record
    (seconds from the process's start)."""
    started = time.monotonic()
    proc = _start(args, out)
    task_start = first = last = None
    while proc.poll() is None:
        now = time.monotonic() - started
        if task_start is None and " to do" in _new_log_text(logs, log_glob, {}):
            task_start = now
        done = len(read_shard(shard))
        if done and first is None:
            first = now
        if done == total and last is None:
            last = now
        time.sleep(0.02)
    wall = time.monotonic() - started
    assert proc.returncode == 0, out.read_text()[-3000:]
    assert len(read_shard(shard)) == total
    first = wall if first is None else first
    return {"wall_s": round(wall, 2), "task_start_s": round(task_start or 0.0, 2),
            "first_record_s": round(first, 2), "last_record_s": round(last or wall, 2)}


def _kill_after(proc: subprocess.Popen, delay: float) -> bool:
    """SIGKILLs the process group after ``delay`` seconds; True if the process had ended by itself."""
    try:
        proc.wait(timeout=delay)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return False


def _copy_run(run: Path, results: Path) -> Path:
    """A copy of a run folder under another results folder; its config's paths (results_dir, transcript
    log) are moved along, so that nothing the copy does touches the original's files."""
    copy = results / run.name
    shutil.copytree(run, copy)
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace(str(run.parent), str(results)))
    return copy


def _phase(task_log: str) -> str:
    """Where a kill landed, from the last line the task logged before it (the kill came after that line)."""
    lines = [line for line in task_log.splitlines() if re.search(r" (INFO|WARNING|ERROR) ", line)]
    if not lines:
        return "start-up (imports, config, before the task)"
    if any(": complete," in line for line in lines):
        return "after the shard (reducer, exit)"
    last = lines[-1]
    if "problems done" in last or "questions done" in last:
        return "just after a record was written"
    if "already done" in last or ("loaded tiny-llama" in last and "debate-shard" in last):
        return "loading the models"
    return "generating"


def _kill_campaign(
    *,
    rng: random.Random,
    args: list[str],
    shard: Path,
    logs: Path,
    log_glob: str,
    clean: dict[int, str],
    timing: dict[str, float],
    kills_wanted: int,
    out: Path,
) -> dict[str, Any]:
    """Start, SIGKILL, check; again and again. While kills are still to come, a shard with at most a quarter
    left to do (or completed by a run before its kill) is emptied after its checks, so every kill has work
    to interrupt; the state the last kill left is resumed by the caller."""
    total = len(clean)
    kills: list[dict[str, Any]] = []
    finished_before_kill = compared = restarts = 0
    valid_before = b""
    for attempt in range(MAX_ATTEMPTS):
        if len(kills) >= kills_wanted:
            break
        before = {r["index"] for r in read_shard(shard)}
        log_sizes = {p: p.stat().st_size for p in logs.glob(log_glob)}
        proc = _start(args, out)
        if attempt % 3 == 0:  # from the process's start: imports, config, loading, generate, writes
            anchor, delay = "process start", rng.uniform(0.5, timing["wall_s"])
            started = True
        else:  # from the task's start: model loading, generate, between records, the reducer
            work_left = (timing["last_record_s"] - timing["task_start_s"]) * (total - len(before)) / total
            anchor, delay = "task start", rng.uniform(0.0, work_left + 0.3)
            started = _wait_for_task_start(proc, logs, log_glob, log_sizes)
        finished = _kill_after(proc, delay) if started else proc.wait() is not None

        data = shard.read_bytes() if shard.exists() else b""
        records = read_shard(shard)
        indices = [r["index"] for r in records]
        assert len(indices) == len(set(indices)), f"attempt {attempt}: a record is written twice: {sorted(indices)}"
        assert before <= set(indices), f"attempt {attempt}: records lost: {sorted(before - set(indices))}"
        assert data.startswith(valid_before), f"attempt {attempt}: records already written were rewritten"
        for r in records:
            assert r["index"] in clean, f"attempt {attempt}: record {r['index']} is not in the shard"
            assert _canon(r) == clean[r["index"]], f"attempt {attempt}: record {r['index']} differs from the undisturbed run's"
        compared += len(records)
        valid_before = _complete_part(data)

        if finished:
            assert proc.returncode == 0, out.read_text()[-3000:]
            finished_before_kill += 1
        else:
            new_log = _new_log_text(logs, log_glob, log_sizes)
            if len(indices) == total:
                landed = "after the shard was complete"
            elif len(indices) > len(before):
                landed = "while records were being written"
            else:
                landed = "before this run's first record"
            kills.append({
                "delay_s": round(delay, 2),
                "from": anchor,
                "landed": landed,
                "phase": _phase(new_log),
                "records_before": len(before),
                "records_after": len(indices),
                "torn_tail_bytes": len(data) - len(valid_before),
            })
        more_to_come = len(kills) < kills_wanted
        if more_to_come and total - len(indices) <= RESTART_WHEN_LEFT * total:  # little left to interrupt: start over
            shard.unlink()
            valid_before = b""
            restarts += 1
    assert len(kills) == kills_wanted, f"only {len(kills)} kills in {MAX_ATTEMPTS} attempts: {kills}"
    return {
        "kills": len(kills),
        "kills_before_first_record": sum(k["landed"] == "before this run's first record" for k in kills),
        "kills_while_records_written": sum(k["landed"] == "while records were being written" for k in kills),
        "kills_after_shard_complete": sum(k["landed"] == "after the shard was complete" for k in kills),
        "kills_leaving_a_torn_line": sum(k["torn_tail_bytes"] > 0 for k in kills),
        "phases": dict(Counter(k["phase"] for k in kills)),
        "runs_finished_before_their_kill": finished_before_kill,
        "shard_restarts": restarts,
        "records_compared_after_kills": compared,
        "detail": kills,
    }


def _check_final_shard(shard: Path, clean: dict[int, str]) -> int:
    records = read_shard(shard)
    data = shard.read_bytes()
    assert data.endswith(b"\n") and len(data.splitlines()) == len(records), "no torn or extra line left"
    assert sorted(r["index"] for r in records) == sorted(clean), "every index exactly once"
    for r in records:
        assert _canon(r) == clean[r["index"]], f"record {r['index']} differs from the undisturbed run's"
    return len(records)


# --------------------------------------------------------------------------------------------- debate

def _debate_args(results: Path) -> list[str]:
    return tiny_overrides(results, "limit=12", "shards=1", "cluster=debug", f"run_id={RUN_ID}", "debate.batch_size=2")


DEBATE_SHARD = Path("debate") / "shard-00000-of-00001.jsonl"


def _clean_run(base: Path, args_for: Any, shard: Path, total: int, log_glob: str) -> dict[str, Any]:
    """The undisturbed run, as a subprocess like the killed ones, timed; its records by index."""
    results = base / "results"
    run = results / RUN_ID
    timing = _undisturbed(args_for(results), run / shard, total, run / "logs", log_glob, base / "submit.out")
    clean = {r["index"]: _canon(r) for r in read_shard(run / shard)}
    return {"results": results, "run": run, "timing": timing, "clean": clean}


@pytest.fixture(scope="module")
def debate_clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _clean_run(tmp_path_factory.mktemp("debate-clean"), _debate_args, DEBATE_SHARD, 12, "debate-*.log")


def test_debate_shard_killed_at_random_points(debate_clean: dict[str, Any], tmp_path: Path) -> None:
    results = tmp_path / "results"
    run = results / RUN_ID
    args = _debate_args(results)
    counts = _kill_campaign(rng=random.Random(SEED), args=args, shard=run / DEBATE_SHARD, logs=run / "logs",
                            log_glob="debate-*.log", clean=debate_clean["clean"], timing=debate_clean["timing"],
                            kills_wanted=DEBATE_KILLS, out=tmp_path / "submit.out")
    info = submit([f"results_dir={results}", f"run_id={RUN_ID}", "cluster=debug", "cluster.cpus_per_task=1"])
    assert info["result"]["complete"]
    final = _check_final_shard(run / DEBATE_SHARD, debate_clean["clean"])
    assert comparable_tables(run) == comparable_tables(debate_clean["run"])
    log = (results / "transcripts.log").read_text()
    assert log.count(f"==== run {RUN_ID} |") == 1 and log.endswith(f"==== end of run {RUN_ID}\n\n")
    _note("debate_shard", {"undisturbed": debate_clean["timing"], **counts, "records_compared_at_the_end": final})


def test_debate_record_cut_mid_write_is_redone_once(debate_clean: dict[str, Any], tmp_path: Path) -> None:
    """A kill in the middle of a record's write leaves the start of its line: the rerun drops it and redoes
    that question once (also when the redone question ends up in another batch than before)."""
    results = tmp_path / "results"
    run = _copy_run(debate_clean["run"], results)
    shard = run / DEBATE_SHARD
    full = shard.read_bytes()
    lines = full.splitlines(keepends=True)
    cuts = [  # (complete records kept, bytes of the next record's line kept)
        (11, 1),                        # the last record: its first byte
        (11, len(lines[11]) // 2),      # the last record: half of it
        (11, len(lines[11]) - 1),       # the last record: all of its JSON, not its newline
        (9, len(lines[9]) // 2),        # record 9 (batched with 8 at first; with 10 on the rerun)
    ]
    redone = 0
    for kept, part in cuts:
        shard.write_bytes(b"".join(lines[:kept]) + lines[kept][:part])
        info = submit([f"results_dir={results}", f"run_id={RUN_ID}", "cluster=debug", "cluster.cpus_per_task=1"])
        assert info["result"]["complete"]
        _check_final_shard(shard, debate_clean["clean"])
        assert shard.read_bytes().startswith(b"".join(lines[:kept])), "the records before the cut are untouched"
        assert comparable_tables(run) == comparable_tables(debate_clean["run"])
        redone += len(lines) - kept
    log = (results / "transcripts.log").read_text()
    assert log.count(f"==== run {RUN_ID} |") == 1
    _note("debate_mid_write", {"cuts": len(cuts), "records_redone": redone})


# ----------------------------------------------------------------------------------------------- eval

def _eval_args(results: Path) -> list[str]:
    return [
        "stage=eval", "models=tiny", f"results_dir={results}", "limit=8", "eval.max_gen_toks=48", "eval.batch_size=4",
        "eval.chunk_size=2", "cluster.cpus_per_task=1", "tasks=[gsm8k]", "eval.models=[a]", "shards=1",
        "cluster=debug", f"run_id={RUN_ID}",
    ]


EVAL_SHARD = Path("eval") / "a" / "gsm8k" / "shard-00000-of-00001.jsonl"


def _eval_rows(run: Path) -> list[dict[str, Any]]:
    rows = json.loads((run / "eval_accuracy.json").read_text())["rows"]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture(scope="module")
def eval_clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _clean_run(tmp_path_factory.mktemp("eval-clean"), _eval_args, EVAL_SHARD, 8, "eval-*.log")


def test_eval_shard_killed_at_random_points(eval_clean: dict[str, Any], tmp_path: Path) -> None:
    results = tmp_path / "results"
    run = results / RUN_ID
    counts = _kill_campaign(rng=random.Random(SEED + 1), args=_eval_args(results), shard=run / EVAL_SHARD,
                            logs=run / "logs", log_glob="eval-*.log", clean=eval_clean["clean"],
                            timing=eval_clean["timing"], kills_wanted=EVAL_KILLS, out=tmp_path / "submit.out")
    info = submit([f"results_dir={results}", f"run_id={RUN_ID}", "cluster=debug", "cluster.cpus_per_task=1"])
    assert info["result"]["complete"]
    final = _check_final_shard(run / EVAL_SHARD, eval_clean["clean"])
    assert _eval_rows(run) == _eval_rows(eval_clean["run"])
    lm_eval_dir = (run / EVAL_SHARD).with_suffix(".lm_eval")
    leftovers = sorted(p.name for p in lm_eval_dir.glob(".*.tmp"))
    _note("eval_shard", {
        "undisturbed": eval_clean["timing"], **counts, "records_compared_at_the_end": final,
        # a resume may start a chunk elsewhere than the undisturbed run did: lm-eval's per-chunk results
        # files then overlap (they are kept for reference; the table is computed from the records)
        "lm_eval_results_files": len(list(lm_eval_dir.glob("results-*.json"))),
        "lm_eval_results_files_undisturbed": len(list((eval_clean["run"] / EVAL_SHARD).with_suffix(".lm_eval").glob("results-*.json"))),
        "tmp_leftovers": leftovers,
    })


def test_eval_record_cut_mid_write_is_redone_once(eval_clean: dict[str, Any], tmp_path: Path) -> None:
    results = tmp_path / "results"
    run = _copy_run(eval_clean["run"], results)
    shard = run / EVAL_SHARD
    lines = shard.read_bytes().splitlines(keepends=True)
    cuts = [(7, len(lines[7]) // 2),  # the last record, half written
            (3, len(lines[3]) // 2)]  # record 3: chunk [2, 3] at first, [3, 4] on the rerun
    redone = 0
    for kept, part in cuts:
        shard.write_bytes(b"".join(lines[:kept]) + lines[kept][:part])
        info = submit([f"results_dir={results}", f"run_id={RUN_ID}", "cluster=debug", "cluster.cpus_per_task=1"])
        assert info["submitted"] == ["a-gsm8k-shard-00000-of-00001"] and info["result"]["complete"]
        _check_final_shard(shard, eval_clean["clean"])
        assert shard.read_bytes().startswith(b"".join(lines[:kept]))
        assert _eval_rows(run) == _eval_rows(eval_clean["run"])
        redone += len(lines) - kept
    _note("eval_mid_write", {"cuts": len(cuts), "records_redone": redone})


# ------------------------------------------------------------------------------------ debate reducer

REDUCER = ("import sys; from pipeline.reduce.debate import reduce_debate; from pipeline.runs import Run; "
           "from pipeline.stages import saved_task; from pathlib import Path; "
           "print('imported', flush=True); reduce_debate(saved_task(Run(Path(sys.argv[1])), 'debate'))")


def _without_timestamp(block: str) -> str:
    """A transcript block minus the time in its header line (the only part that differs between runs)."""
    return re.sub(r" \| \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\n", " | <time>\n", block, count=1)


def _timed_reducer(run: Path, log_path: Path) -> dict[str, float]:
    """An uninterrupted reducer: when its imports were done, when the log got the run, when it exited
    (seconds from the process's start)."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", REDUCER, str(run)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "imported"
    imported = time.monotonic() - started
    logged = None
    while proc.poll() is None:
        if logged is None and log_path.exists() and log_path.stat().st_size:
            logged = time.monotonic() - started
        time.sleep(0.005)
    assert proc.returncode == 0
    wall = time.monotonic() - started
    return {"imported_s": round(imported, 3), "log_appended_s": round(logged or wall, 3), "wall_s": round(wall, 3)}


def test_debate_reducer_killed_mid_write(debate_clean: dict[str, Any], tmp_path: Path) -> None:
    clean_run = debate_clean["run"]
    expected = {name: (clean_run / name).read_bytes() for name in TABLES}
    clean_block = _without_timestamp((debate_clean["results"] / "transcripts.log").read_text())
    marker, end = f"==== run {RUN_ID} |", f"==== end of run {RUN_ID}\n\n"

    # When the reducer writes: timed on a copy of its own (an uninterrupted subprocess run).
    timing_run = _copy_run(clean_run, tmp_path / "timing")
    timing = _timed_reducer(timing_run, timing_run.parent / "transcripts.log")
    assert {name: (timing_run / name).read_bytes() for name in TABLES} == expected

    results = tmp_path / "results"
    run = _copy_run(clean_run, results)
    log_path = results / "transcripts.log"

    def reset() -> None:  # the run as a reducer first sees it: no tables, not in the log
        for name in TABLES:
            (run / name).unlink(missing_ok=True)
        log_path.unlink(missing_ok=True)

    reset()
    rng = random.Random(SEED + 2)
    tries: list[dict[str, Any]] = []
    for i in range(REDUCER_TRIES):
        stamp = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in run.glob("debate_accuracy*")}
        tmp_before = {p.name for p in run.glob(".debate_accuracy*")}
        proc = subprocess.Popen([sys.executable, "-c", REDUCER, str(run)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, start_new_session=True, text=True)
        if i % 3 == 0:  # from the process's start: imports, reading, tables, plot, log, exit
            anchor, delay = "process start", rng.uniform(0.0, timing["wall_s"])
        else:  # from the end of its imports: reading the shard, writing tables, plot and log
            assert proc.stdout is not None and proc.stdout.readline().strip() == "imported"
            anchor, delay = "imports done", rng.uniform(0.0, timing["log_appended_s"] - timing["imported_s"] + 0.05)
        finished = _kill_after(proc, delay)
        assert proc.stdout is not None
        proc.stdout.close()

        present = sorted(p.name for p in run.glob("debate_accuracy*"))
        assert set(present) <= set(TABLES), f"try {i}: unexpected files taken for tables: {present}"
        for name in present:
            data = (run / name).read_bytes()
            assert data == expected[name], f"try {i}: {name} is not the complete table"
            if name.endswith(".json"):
                json.loads(data)
        written = [n for n in present if stamp.get(n) != ((run / n).stat().st_ino, (run / n).stat().st_mtime_ns)]
        tmp_new = sorted({p.name for p in run.glob(".debate_accuracy*")} - tmp_before)
        log = log_path.read_text() if log_path.exists() else ""
        blocks = log.count(marker)
        assert blocks in (0, 1), f"try {i}: the run is {blocks} times in the transcript log"
        if blocks:
            assert log.startswith(marker) and log.endswith(end), f"try {i}: the run's transcript block is incomplete"
            assert _without_timestamp(log) == clean_block
        else:
            assert log == "", f"try {i}: the log holds part of a block: {log[:200]!r}"
        if finished:
            landed = "finished before the kill"
        elif blocks:
            landed = "after the log append"
        elif len(written) == len(TABLES):
            landed = "after the tables, before the log append"
        elif set(written) >= set(TABLES[:3]):
            landed = "while making the plot (json, csv, md written)"
        elif written or tmp_new:
            landed = "while writing json, csv or md"
        else:
            landed = "before any write"
        tries.append({"delay_s": round(delay, 3), "from": anchor, "landed": landed, "tables_written": len(written),
                      "tmp_left": len(tmp_new), "log_blocks": blocks})
        if blocks:
            reset()

    # Finally one uninterrupted run, on whatever the last try left.
    last_left_block = log_path.exists() and log_path.read_text().count(marker) == 1
    from pipeline.reduce.debate import reduce_debate
    from pipeline.runs import Run
    from pipeline.stages import saved_task

    outcome = reduce_debate(saved_task(Run(run), "debate"))
    assert outcome["complete"] and outcome["transcripts_appended"] is (not last_left_block)
    assert {name: (run / name).read_bytes() for name in TABLES} == expected
    log = log_path.read_text()
    assert log.count(marker) == 1 and log.startswith(marker) and log.endswith(end)
    assert _without_timestamp(log) == clean_block
    leftovers = sorted(p.name for p in run.glob(".debate_accuracy*"))
    assert leftovers == [], "a writer removes the temporaries that killed writers left (pipeline/files.py)"
    killed = [t for t in tries if t["landed"] != "finished before the kill"]
    _note("debate_reducer", {
        "undisturbed": timing,
        "tries": len(tries),
        "kills": len(killed),
        "landed": dict(Counter(t["landed"] for t in tries)),
        "kills_mid_write": sum(t["landed"].startswith(("while", "after the tables")) for t in tries),
        "kills_leaving_a_tmp_file": sum(t["tmp_left"] > 0 for t in tries),  # hidden .<table>.<pid>.tmp, never globbed as a table
        "tmp_leftovers_after_the_final_run": leftovers,
        "final_run_appended": outcome["transcripts_appended"],
        "detail": tries,
    })


def test_a_transcript_block_torn_mid_append_is_completed_by_the_rerun(debate_clean: dict[str, Any], tmp_path: Path) -> None:
    from pipeline.reduce.debate import reduce_debate
    from pipeline.runs import Run
    from pipeline.stages import saved_task

    results = tmp_path / "results"
    run = _copy_run(debate_clean["run"], results)
    block = (debate_clean["results"] / "transcripts.log").read_bytes()
    log_path = results / "transcripts.log"
    log_path.write_bytes(block[:4096])  # what a kill in the middle of the append leaves (one page)
    reduce_debate(saved_task(Run(run), "debate"))
    log = log_path.read_text()
    assert log.count(f"==== run {RUN_ID} |") == 1 and log.endswith(f"==== end of run {RUN_ID}\n\n")
