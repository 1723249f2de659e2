"""Benchmark: the eval stage (lm-eval, hf backend) with each engine, ``eval.engine=generate`` (HFLM's own
``generate``, the reference) against ``eval.engine=static`` (the suite's static decoder), on one model folder.

Each engine is a real eval run of the stage (``stage=eval``, one shard, the debug executor: in this process),
so what is timed is what a shard does: lm-eval's chunks of ``eval.chunk_size`` questions, its batches, the
chat template and few-shot prompts, the cut at each request's stop strings. The wall time of an engine is the
sum of its chunks' lm-eval calls (the records' ``seconds``; the model's loading is not in it). A short warm-up
run of each engine comes first (CUDA context, cuBLAS, the decoder's graphs' first captures: paid once per
shard, not per question). Printed as JSON: each engine's seconds, questions/s and accuracy, the speed-up, and
how many responses differ from ``generate``'s (with where the first few part).

    # GPU, the default pair's 1.5B (a Hugging Face folder), all 1,319 questions, bf16
    python benchmarks/bench_eval_engine.py --model /path/to/qwen2.5-coder-1.5b-instruct --dtype bfloat16 --json benchmarks/results/eval-engine-bf16.json
    # CPU, the tiny pair's Qwen2, 16 questions (the responses must all agree in float32)
    python benchmarks/bench_eval_engine.py --model tiny-qwen2 --dtype float32 --limit 16 --max-gen-toks 64 --batch-size 8 --warmup 0

The folder must be one the static decoder can reproduce greedily: the suite's own conversion of the default
pair (``~/.cache/gsm8k-slurm/models/<name>``) is; a hub folder whose ``generation_config.json`` sets
``repetition_penalty`` (Qwen's own instruct releases do) makes ``generate`` apply it, and the static run then
stops with ``eval.engine=static cannot decode this request``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.shards import read_shard  # noqa: E402
from pipeline.submit import submit  # noqa: E402


def run_eval(args: argparse.Namespace, results: Path, engine: str, run_id: str, limit: int | None) -> dict[str, Any]:
    """One eval run of the stage with ``engine``; its records by question and the reducer's table rows."""
    overrides = [
        "stage=eval", f"models.a={args.model}", "eval.models=[a]", f"tasks=[{args.task}]", "shards=1", "cluster=debug",
        f"results_dir={results}", f"run_id={run_id}", f"limit={'null' if limit is None else limit}", f"models.dtype={args.dtype}",
        f"eval.engine={engine}", f"eval.batch_size={args.batch_size}", f"eval.max_batch_size={args.max_batch_size}",
        f"eval.chunk_size={args.chunk_size}",
    ]
    if args.max_gen_toks is not None:
        overrides.append(f"eval.max_gen_toks={args.max_gen_toks}")
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the reducer's table: stdout is the report alone
        info = submit(overrides)
    wall = time.perf_counter() - started
    if not info["result"]["complete"]:
        raise SystemExit(f"the {engine} run did not complete: {info['result']}")
    records = {r["index"]: r for f in sorted((results / run_id / "eval" / "a" / args.task).glob("shard-*.jsonl")) for r in read_shard(f)}
    _free()
    return {"records": records, "rows": info["result"]["rows"], "wall": wall}


def _free() -> None:
    """The run's model and the decoder's cache go before the next run loads its own."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def differences(reference: dict[int, dict], other: dict[int, dict], shown: int) -> dict[str, Any]:
    """How many responses differ, how many extracted answers and verdicts with them, and the first few."""
    differ = [i for i in sorted(reference) if reference[i]["response"] != other[i]["response"]]
    verdicts = [i for i in differ if reference[i]["correct"] != other[i]["correct"]]
    examples = []
    for i in differ[:shown]:
        a, b = reference[i]["response"], other[i]["response"]
        at = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        examples.append({"index": i, "first_difference_at_char": at, "generate": a[max(0, at - 40) : at + 80],
                         "static": b[max(0, at - 40) : at + 80]})
    return {"questions": len(reference), "responses_differ": len(differ),
            "extracted_answers_differ": sum(reference[i]["extracted"] != other[i]["extracted"] for i in differ),
            "verdicts_differ": len(verdicts), "examples": examples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a Hugging Face model folder (or a registered model name)")
    parser.add_argument("--task", default="gsm8k", help="a vendored task: gsm8k (5-shot, plain text) or gsm8k_cot_llama (8-shot chat)")
    parser.add_argument("--limit", type=int, default=None, help="the first N test questions (default: all 1,319)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch-size", default="auto", help="eval.batch_size (the stage's default: auto, at most --max-batch-size)")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=128, help="eval.chunk_size: questions per lm-eval call")
    parser.add_argument("--max-gen-toks", type=int, default=None, help="eval.max_gen_toks (default: the task's own, gsm8k 256)")
    parser.add_argument("--warmup", type=int, default=8, help="questions of an untimed first run of each engine (0: none)")
    parser.add_argument("--engines", nargs=2, default=["generate", "static"], help="the reference engine, then the one compared")
    parser.add_argument("--examples", type=int, default=5, help="differing responses shown")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()

    import torch

    results = Path(tempfile.mkdtemp(prefix="bench-eval-engine-"))
    if args.warmup:
        for engine in args.engines:
            run_eval(args, results, engine, f"warmup-{engine}", args.warmup)
    runs = {engine: run_eval(args, results, engine, f"timed-{engine}", args.limit) for engine in args.engines}
    reference, other = args.engines
    report: dict[str, Any] = {
        "model": args.model, "task": args.task, "dtype": args.dtype, "batch_size": args.batch_size, "max_batch_size": args.max_batch_size,
        "chunk_size": args.chunk_size, "max_gen_toks": args.max_gen_toks,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__, "engines": {},
    }
    for engine, run in runs.items():
        seconds = sum(r["seconds"] for r in run["records"].values())
        report["engines"][engine] = {
            "questions": len(run["records"]), "lm_eval_seconds": round(seconds, 2), "questions_per_s": round(len(run["records"]) / seconds, 2),
            "run_wall_seconds": round(run["wall"], 2),
            "accuracy": {r["filter"]: r["accuracy"] for r in run["rows"]},
        }
    report["speedup"] = round(report["engines"][reference]["lm_eval_seconds"] / report["engines"][other]["lm_eval_seconds"], 2)
    report["differences"] = differences(runs[reference]["records"], runs[other]["records"], args.examples)
    text = json.dumps(report, indent=2)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
