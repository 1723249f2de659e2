"""Benchmark: does a question's answer depend on its batch, its shard or a resume? Counts of differences, on a
GPU with the real pair (issue 31).

The engine (goal 1), model a, greedy, the first ``--limit`` test questions: every case's tokens against one
reference call (all questions in one batch, CUDA graphs, fresh prefills), row by row:

- ``batch_1``, ``batch_7``, ``batch_64``: at most that many rows per batch;
- ``places_and_padding``: the same questions among as many others, longer (a system prompt), so every row
  sits elsewhere in its batch and beside other padding;
- ``prefill_groups``: prompts prefilled in groups of at most 512 tokens;
- ``graphs_off``: every decode step launched kernel by kernel;
- ``reuse_kv``: a second turn (the reply and a review request appended) started from the first turn's cache,
  against the same second turn prefilled afresh.

The records (goal 2), through ``jobs/submit.py`` (``--cluster``, default ``debug``: in this process), one round,
no votes unless said: ``shards_8`` (shards=8 against shards=1), ``killed_and_resumed`` (shards=1, killed once
a batch of records is written and resumed), ``votes_on`` (votes of 2 per model beside the solo rows),
``batch_size_128`` (the killed run's twin: batches of ``--kill-batch``). Each compares the per-question outcomes file and the records without their timings.

    python benchmarks/invariance.py --model-a ~/.cache/gsm8k-slurm/models/qwen2.5-coder-1.5b-instruct \\
        --model-b ~/.cache/gsm8k-slurm/models/qwen2.5-coder-0.5b-instruct --cases batch_64 reuse_kv --json out.json

``--cases`` picks cases (default: all); the references and runs stay in ``--work``, so a long list can be
split over calls of a few minutes each.

``--batch-invariant false`` measures the kernels picked for speed instead. It prints one JSON object (and
writes it with ``--json``): per case, the rows (or questions) compared and how many differ; 0 is the goal.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.answers import read_answer  # noqa: E402
from pipeline.data import load_problems  # noqa: E402
from pipeline.debate.settings import REVIEW_PROMPT, SOLVE_PROMPT  # noqa: E402
from pipeline.engine import DecoderOptions  # noqa: E402
from pipeline.engine.generation import generate_chat  # noqa: E402
from pipeline.engine.memory import Decoders  # noqa: E402
from pipeline.models.device import pick_device  # noqa: E402
from pipeline.models.loading import ChatModel, load_chat_model  # noqa: E402
from pipeline.models.registry import load_registry, resolve_model  # noqa: E402
from pipeline.shards import read_shard  # noqa: E402

LONGER = "You are a careful assistant who checks every step of a calculation twice before writing its result down. " * 3


def _conversations(questions: list[str]) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": SOLVE_PROMPT.format(question=q)}] for q in questions]


def _differ(reference: list[Any], other: list[Any]) -> dict[str, int]:
    """Rows whose tokens (texts) differ, and whose extracted answers differ."""
    return {"rows": len(reference), "rows_differing": sum(a.text != b.text for a, b in zip(reference, other)),
            "answers_differing": sum(read_answer(a.text, True).flexible != read_answer(b.text, True).flexible for a, b in zip(reference, other))}


ENGINE_CASES = ("batch_1", "batch_7", "batch_64", "places_and_padding", "prefill_groups", "graphs_off", "reuse_kv")
RECORD_CASES = ("shards_8", "batch_size_128", "votes_on", "killed_and_resumed")


class Engine:
    """Goal 1 for one model: each case's tokens against the reference call's (kept in the work folder, so
    cases may run in separate calls)."""

    def __init__(self, chat: ChatModel, questions: list[str], new: int, invariant: bool, work: Path, alone: int) -> None:
        self.chat, self.new, self.invariant, self.alone = chat, new, invariant, alone
        self.convs = _conversations(questions)
        saved = work / f"reference-{len(questions)}-{new}-{invariant}.json"
        if not saved.exists():
            saved.write_text(json.dumps([c.text for c in self.call(self.convs)]))
        self.reference = [Reply(t) for t in json.loads(saved.read_text())]

    def call(self, conversations: list[list[dict[str, str]]], max_batch: int | None = None, **options: Any) -> list[Any]:
        """One case's call, from new decoders (no cache or graphs carried over), each call decoded afresh;
        ``options``: the ``DecoderOptions`` the case changes."""
        decoders = Decoders(DecoderOptions(reuse_kv=False, batch_invariant=self.invariant, **options))
        return generate_chat(self.chat, conversations, max_new_tokens=self.new, max_batch=max_batch, decoders=decoders)

    def case(self, name: str) -> dict[str, int]:
        if name.startswith("batch_"):  # small batches on the first questions only: one row at a time is slow
            n = int(name.removeprefix("batch_"))
            count = min(len(self.convs), max(self.alone, n + 1))
            return _differ(self.reference[:count], self.call(self.convs[:count], max_batch=n))
        if name == "places_and_padding":
            longer = [[{"role": "system", "content": LONGER}] + c for c in self.convs]
            return _differ(self.reference, self.call(self.convs + longer)[: len(self.convs)])
        if name == "prefill_groups":
            return _differ(self.reference, self.call(self.convs, prefill_tokens=512))
        if name == "graphs_off":
            return _differ(self.reference, self.call(self.convs, cuda_graphs=False))
        second = [c + [{"role": "assistant", "content": r.text}, {"role": "user", "content": REVIEW_PROMPT.format(other=r.text)}]
                  for c, r in zip(self.convs, self.reference)]
        fresh = self.call(second)
        reusing = Decoders(DecoderOptions(reuse_kv=True, batch_invariant=self.invariant))
        generate_chat(self.chat, self.convs, max_new_tokens=self.new, decoders=reusing)  # the first turn, cached
        return _differ(fresh, generate_chat(self.chat, second, max_new_tokens=self.new, decoders=reusing))


class Reply:
    """A saved reference reply: its text."""

    def __init__(self, text: str) -> None:
        self.text = text


def _submit(*overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "jobs" / "submit.py"), *overrides]


def _run(overrides: list[str]) -> None:
    """One submission, its output in ``submit.log`` beside the runs (a failure names it)."""
    log = Path(next(o for o in overrides if o.startswith("results_dir=")).split("=", 1)[1]) / "submit.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        if subprocess.run(_submit(*overrides), cwd=ROOT, stdout=out, stderr=out).returncode != 0:
            raise SystemExit(f"jobs/submit.py {' '.join(overrides)} failed: see {log}")


def _outcome(run: Path) -> tuple[bytes, list[dict[str, str]], dict[int, dict]]:
    text = (run / "debate_outcomes.csv").read_bytes()
    rows = list(csv.DictReader(io.StringIO(text.decode())))
    records = {r["index"]: _untimed(r) for f in (run / "debate").glob("shard-*.jsonl") for r in read_shard(f)}
    return text, rows, records


def _untimed(value: Any) -> Any:
    """A record without its timings and its settings' fingerprint (votes on or off fingerprint differently)."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in ("seconds", "settings")}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _compare(base: Path, other: Path, solo_only: bool = False) -> dict[str, Any]:
    text_a, rows_a, rec_a = _outcome(base)
    text_b, rows_b, rec_b = _outcome(other)
    columns = [c for c in rows_a[0] if c.endswith("| answer") and (not solo_only or "alone" in c)]
    strip = (lambda r: {k: v for k, v in r.items() if k != "vote"}) if solo_only else (lambda r: r)  # noqa: E731
    same_file = {} if solo_only else {"identical_outcome_file": text_a == text_b}  # votes add columns of their own
    return {"questions": len(rows_a), **same_file,
            "answers_differing": {c: sum(a[c] != b.get(c) for a, b in zip(rows_a, rows_b)) for c in columns},
            "records_differing": sum(strip(rec_a[i]) != strip(rec_b.get(i)) for i in rec_a)}


def record_case(name: str, args: argparse.Namespace, results: Path) -> dict[str, Any]:
    """Goal 2: one case of debates through the submitter, against its uninterrupted ``shards=1`` twin (run
    once per work folder)."""
    common = ["stage=debate", f"models.a={args.model_a}", f"models.b={args.model_b}", f"models.dtype={args.dtype}", f"limit={args.limit}",
              f"results_dir={results}", "wait=true", "wandb.mode=disabled", "debate.max_rounds=1", f"debate.max_new_tokens={args.new}",
              f"debate.batch_invariant={str(args.batch_invariant).lower()}"]
    no_votes = "debate.baselines.vote_models=[]"

    def once(run_id: str, *more: str) -> None:
        if not (results / run_id / "debate_outcomes.csv").exists():
            _run([*common, f"cluster={args.cluster}", f"run_id={run_id}", *more])

    once("base", "shards=1", no_votes)
    if name == "shards_8":
        once("shards8", "shards=8", no_votes)
        return _compare(results / "base", results / "shards8")
    if name == "batch_size_128":
        once("batch128", "shards=1", "debate.batch_size=128", no_votes)
        return _compare(results / "base", results / "batch128")
    if name == "votes_on":
        once("votes", "shards=1", "debate.baselines.vote_models=[a,b]", "debate.baselines.vote_k=2")
        return _compare(results / "base", results / "votes", solo_only=True)
    batch = f"debate.batch_size={args.kill_batch}"
    once(f"batch{args.kill_batch}", "shards=1", batch, no_votes)
    return _killed([*common, "cluster=debug", "shards=1", batch, no_votes], results, args.kill_after, args.limit,
                   results / f"batch{args.kill_batch}")


def _killed(settings: list[str], results: Path, after: int, limit: int, uninterrupted: Path) -> dict[str, Any]:
    """shards=1, killed once ``after`` records are written (mid-run: the next batch is under way), then
    resumed; against the same settings uninterrupted."""
    proc = subprocess.Popen(_submit(*settings, "run_id=killed"), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    shard = results / "killed" / "debate" / "shard-00000-of-00001.jsonl"
    while proc.poll() is None and (not shard.exists() or len(read_shard(shard)) < after):
        time.sleep(0.2)
    if proc.poll() is not None:
        raise SystemExit(f"the run to kill ended before the kill ({after} records); lower --kill-after or --kill-batch")
    os.killpg(proc.pid, signal.SIGKILL)  # at once: the next batch is under way, its records not yet written
    proc.wait()
    written = len(read_shard(shard))
    if written >= limit:
        raise SystemExit(f"the kill came after all {limit} records: nothing was resumed; lower --kill-after or --kill-batch")
    _run([f"results_dir={results}", "run_id=killed", "cluster=debug", "wait=true"])
    return {"records_before_the_kill": written, **_compare(uninterrupted, results / "killed")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-a", required=True, help="model folder or registered name (model a)")
    parser.add_argument("--model-b", required=True, help="model folder or registered name (model b)")
    parser.add_argument("--dtype", default="auto", help="models.dtype (auto: bf16 on the GPU)")
    parser.add_argument("--limit", type=int, default=1319, help="the first N test questions")
    parser.add_argument("--new", type=int, default=512, help="tokens per turn")
    parser.add_argument("--alone", type=int, default=64, help="questions the batch_1 and batch_7 cases compare")
    parser.add_argument("--batch-invariant", type=lambda v: v.lower() == "true", default=True, help="true (default) or false")
    parser.add_argument("--cluster", default="debug", help="the submitter's cluster= for the record cases (debug, local)")
    parser.add_argument("--kill-after", type=int, default=200, help="records written before the kill")
    parser.add_argument("--kill-batch", type=int, default=128, help="debate.batch_size of the killed run and its twin")
    parser.add_argument("--cases", nargs="+", choices=ENGINE_CASES + RECORD_CASES, default=list(ENGINE_CASES + RECORD_CASES))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "invariance",
                        help="keeps the references and the runs between calls (cases may run in separate calls)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
                              "args": {k: str(v) for k, v in vars(args).items()}, "cases": {}}
    started = time.perf_counter()
    engine_cases = [c for c in args.cases if c in ENGINE_CASES]
    if engine_cases:
        spec = resolve_model("--model-a", args.model_a, load_registry())
        chat = load_chat_model(spec, Path.home() / ".cache" / "gsm8k-slurm" / "models", args.dtype, device)
        questions = [p.question for p in load_problems(ROOT / "pipeline/assets/gsm8k/test.jsonl", args.limit)]
        engine = Engine(chat, questions, args.new, args.batch_invariant, args.work, args.alone)
        for case in engine_cases:
            report["cases"][case] = engine.case(case)
            print(case, json.dumps(report["cases"][case]), flush=True)
        del chat, engine
        if device.type == "cuda":
            torch.cuda.empty_cache()
    runs = args.work / f"runs-{args.limit}-{args.new}-{args.batch_invariant}"
    for case in (c for c in args.cases if c in RECORD_CASES):
        report["cases"][case] = record_case(case, args, runs)
        print(case, json.dumps(report["cases"][case]), flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
