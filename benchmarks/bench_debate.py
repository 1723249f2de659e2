"""Benchmark: the seed notebook's way (one question at a time) against the batched shard engine; or, with
``--mode phases``, every phase of a real shard against its own limit.

Both ways run the same debate engine on the same questions; the only difference is how many debates share a
generate call (1, or the whole group). Prints questions/s and generated tokens/s side by side with the
ratio, and for the static decoder the seconds spent in prefill, the share of prompt tokens reused from
the previous turn and the share of the prefill's positions that were chunk padding. Baselines (solo,
vote) are off: the seed had none, and they would only add the same work to both.

``--mode phases`` runs one batched shard as a run makes it, baselines on (model b alone, each model's vote of
``2 x rounds`` samples at the vote temperature, then the debate's turns), and prints one row per phase: its
rows, seconds and tokens/s, and its prefill and decode tokens/s with their share of their own limit
(``pipeline.engine.roofline``: weights and live KV cache at the card's bandwidth, or the FLOPs at its peak),
then the same rows as JSON on the last line. ``--sampler torch`` samples with PyTorch's ops instead of the
fused kernel (the before of the sampler's after, on the same card in the same call).

    # CPU, the tiny pair (a real debate: models stop on their end-of-turn tokens)
    python benchmarks/bench_debate.py --models tiny --questions 64 --seed-questions 16
    # GPU, random weights of the real shapes (Llama-3.1-8B and Qwen2-7B); speed depends on shapes only
    python benchmarks/bench_debate.py --models random-8b --questions 256 --seed-questions 4 --dtype bfloat16
    # every turn prefilled whole, against the default (each turn starts from the model's previous one)
    python benchmarks/bench_debate.py --models random-8b --mode batched --questions 256 --dtype bfloat16 --reuse-kv off
    # the turns refilled from the next problems (debate.refill=true) against each group's rounds run to the end
    python benchmarks/bench_debate.py --models tiny --mode phases --questions 64 --batch-size 16 --refill on
    # two GPUs: one model on each (debate.devices=split)
    python benchmarks/bench_debate.py --models random-8b --mode batched --devices split --questions 256 --dtype bfloat16
    # the default pair's phases, all 1,319 questions, from converted model folders (<dir>/<registry name>/)
    python benchmarks/bench_debate.py --models default --model-dir ~/.cache/gsm8k-slurm/models --mode phases \
        --questions 1319 --max-new-tokens 512 --json benchmarks/results/phases-h100.json

The one-at-a-time way costs the same per question whatever the count, so it runs on ``--seed-questions``
of the questions and its questions/s is that rate (printed with the count it was measured on).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import PROJECT_ROOT  # noqa: E402
from pipeline.stages import checked_config, load_config  # noqa: E402
from pipeline.data import load_problems  # noqa: E402
from pipeline.debate.engine import DebateEngine  # noqa: E402
from pipeline.debate.settings import DebateSettings  # noqa: E402
from pipeline.settings import build  # noqa: E402
from pipeline.engine.generation import Completion, generate_chat  # noqa: E402
from pipeline.engine.memory import Decoders  # noqa: E402
from pipeline.engine.roofline import Timings  # noqa: E402
from pipeline.models.device import pick_devices, pick_dtype  # noqa: E402
from pipeline.models.loading import ChatModel, load_chat_model, stop_token_ids  # noqa: E402
from pipeline.models.registry import load_registry  # noqa: E402
from random_weights import REAL_SHAPES, random_causal_lm  # noqa: E402  (benchmarks/, the script's own folder)

def random_model(shape: str, tokenizer_from: str, dtype: torch.dtype, device: torch.device) -> ChatModel:
    """A random-weight model of a real shape, with the tiny fixture's tokenizer for its chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(PROJECT_ROOT / "pipeline/assets/tiny" / tokenizer_from)
    tokenizer.padding_side = "left"
    # One added token per id the model can emit, so a generated token re-encodes to exactly one token and the
    # prompts grow turn after turn as in a real debate (ids past a small vocabulary would decode to nothing).
    tokenizer.add_tokens([f"<r{i}>" for i in range(len(tokenizer), REAL_SHAPES[shape]["vocab_size"])])
    model = random_causal_lm(shape, dtype, device)
    return ChatModel(name=f"random-{shape}", model=model, tokenizer=tokenizer, stop_ids=stop_token_ids(tokenizer, model))


def load_pair(which: str, dtype_name: str, devices: dict[str, torch.device], model_dir: Path | None = None) -> dict[str, ChatModel]:
    """The pair: random weights of real shapes, the tiny fixtures, two small real models, or the config's
    default pair (``models.a`` / ``models.b``), real ones from ``model_dir`` (default ``paths.model_cache``)."""
    if which == "random-8b":
        dtype = pick_dtype(dtype_name, devices["a"])
        return {"a": random_model("llama-3.1-8b", "tiny-llama", dtype, devices["a"]), "b": random_model("qwen2-7b", "tiny-qwen2", dtype, devices["b"])}
    registry = load_registry()
    cfg = load_config([])
    names = {"tiny": ("tiny-llama", "tiny-qwen2"), "small": ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"),
             "default": (cfg.models.a, cfg.models.b)}[which]
    cache = (model_dir or Path(cfg.paths.model_cache)).expanduser()
    return {k: load_chat_model(registry[n], cache, dtype_name, devices[k]) for k, n in zip("ab", names)}


def _sync() -> None:
    for index in range(torch.cuda.device_count()):
        torch.cuda.synchronize(index)


def debate_engine(models: dict, settings: DebateSettings, decoders: Decoders) -> DebateEngine:
    """The shard's engine, on the benchmark's decoders (already warm)."""
    engine = DebateEngine(models, settings, 0)
    engine.decoders = decoders
    return engine


def measure(engine: DebateEngine, problems: list) -> dict[str, float]:
    """The shard's own loop (``run_all``: baselines a group of ``batch_size`` at a time, turns refilled or group by group)."""
    records: list[dict[str, Any]] = []
    counters = ("prefill_seconds", "prefill_tokens", "prefill_positions", "reused_tokens")
    totals = lambda: {c: sum(getattr(d, c) for d in engine.decoders) for c in counters}  # noqa: E731
    before = totals()
    _sync()
    started = time.perf_counter()
    engine.run_all(problems, records.append)
    _sync()
    seconds = time.perf_counter() - started
    tokens = sum(r["tokens"] for r in records)
    after = totals()
    spent = {c: after[c] - before[c] for c in counters}
    return {"questions": len(records), "seconds": seconds, "q_per_s": len(records) / seconds, "tok_per_s": tokens / seconds, "tokens": tokens,
            "prefill_s": spent["prefill_seconds"], "prefill_share": spent["prefill_seconds"] / seconds,
            "prefilled_tokens": spent["prefill_tokens"], "reused_tokens": spent["reused_tokens"],
            "prefill_padding": 1 - spent["prefill_tokens"] / spent["prefill_positions"] if spent["prefill_positions"] else 0.0}


def measure_phases(engine: DebateEngine, problems: list) -> tuple[list[dict[str, Any]], float]:
    """One shard (``run_all``), timed phase by phase (each of the engine's batched generations), and its seconds."""
    phases: list[dict[str, Any]] = []
    generate = engine._generate

    def timed(speaker: str, convs: list, seeds: list[int], temperature: float, phase: str,
              max_batch: int | None = None) -> list[Completion]:
        for decoder in engine.decoders:
            decoder.total = Timings()
        _sync()
        started = time.perf_counter()
        out = generate(speaker, convs, seeds, temperature, phase, max_batch)
        _sync()
        seconds = time.perf_counter() - started
        timings = Timings()
        for decoder in engine.decoders:
            timings.add(decoder.total)
        timings.call_seconds = seconds  # its host seconds, as a run's phase line says them
        tokens = sum(c.tokens for c in out)
        phases.append({"phase": f"{engine.group}{phase}", "model": engine.models[speaker].name, "rows": len(convs), "temperature": temperature,
                       "seconds": round(seconds, 3), "tokens": tokens, "tok_per_s": round(tokens / seconds, 1), "timings": timings.describe(),
                       **timings.as_dict()})
        return out

    engine._generate = timed  # type: ignore[method-assign]
    _sync()
    started = time.perf_counter()
    engine.run_all(problems, lambda record: None)
    _sync()
    return phases, time.perf_counter() - started


def print_phases(phases: list[dict[str, Any]]) -> None:
    share = lambda v: f"{v:.0%}" if v is not None else "n/a"  # noqa: E731
    rate = lambda v: f"{v:,.0f}" if v is not None else "-"  # noqa: E731
    print(f"{'phase':<32}{'rows':>6}{'seconds':>9}{'tok/s':>9}{'prefill tok/s':>15}{'of limit':>10}{'decode tok/s':>14}{'of limit':>10}{'capture s':>11}{'host s':>8}")
    for p in phases:
        print(f"{p['phase']:<32}{p['rows']:>6}{p['seconds']:>9.1f}{p['tok_per_s']:>9,.0f}{rate(p['prefill_tok_per_s']):>15}{share(p['prefill_share_of_limit']):>10}"
              f"{rate(p['decode_tok_per_s']):>14}{share(p['decode_share_of_limit']):>10}{p['capture_s']:>11.1f}{p['host_s']:>8.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", choices=["tiny", "small", "default", "random-8b"], default="tiny")
    parser.add_argument("--model-dir", type=Path, help="the converted model folders (<dir>/<registry name>/; default paths.model_cache)")
    parser.add_argument("--questions", type=int, default=64, help="questions for the batched engine (one shard)")
    parser.add_argument("--seed-questions", type=int, default=8, help="questions for the one-at-a-time way")
    parser.add_argument("--batch-size", type=int, default=256, help="debates advanced together (debate.batch_size)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--engine", default="auto", choices=["auto", "static", "generate"], help="the batched run's engine (debate.engine)")
    parser.add_argument("--seed-engine", default="generate", choices=["auto", "static", "generate"],
                        help="the one-at-a-time run's engine (the seed notebook called generate)")
    parser.add_argument("--kernels", default="auto", choices=["auto", "triton", "torch"], help="the static decoder's step kernels (debate.kernels)")
    parser.add_argument("--reuse-kv", default="on", choices=["on", "off"], help="start each turn from the model's previous one (debate.reuse_kv)")
    parser.add_argument("--refill", default="off", choices=["on", "off"],
                        help="a turn takes in the next problems wherever debates ended, or each group's rounds run to the end (debate.refill)")
    parser.add_argument("--batch-invariant", default="on", choices=["on", "off"], help="rows independent of their batch (debate.batch_invariant)")
    parser.add_argument("--devices", choices=["shared", "split"], default="shared",
                        help="debate.devices: both models on the first GPU, or one GPU each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=["both", "seed", "batched", "phases"], default="both",
                        help="which way(s) to time, or (phases) one shard with its baselines, phase by phase")
    parser.add_argument("--sampler", choices=["fused", "torch"], default="fused",
                        help="the static decoder's sampler on a GPU: the fused Triton kernel, or PyTorch's ops")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    devices = pick_devices(args.devices)
    device = devices["a"]
    models = load_pair(args.models, args.dtype, devices, args.model_dir)
    baselines = [] if args.mode == "phases" else ["debate.baselines.solo=false", "debate.baselines.vote_models=[]"]
    cfg = checked_config([f"debate.max_rounds={args.rounds}", f"debate.max_new_tokens={args.max_new_tokens}", f"debate.batch_size={args.batch_size}",
                          f"debate.kernels={args.kernels}", f"debate.reuse_kv={args.reuse_kv == 'on'}", f"debate.refill={args.refill == 'on'}", f"debate.batch_invariant={args.batch_invariant == 'on'}", *baselines])
    settings = build(DebateSettings, cfg.debate)
    problems = load_problems(PROJECT_ROOT / "pipeline/assets/gsm8k/test.jsonl", args.questions)
    warm = [[{"role": "user", "content": problems[0].question}]] * 2
    # One set of decoders for the warm-up and every way measured: each starts from the caches and graphs before it.
    decoders = Decoders(settings.decoder_options)
    for chat in models.values():  # warm-up: kernels, allocator, caches
        for engine in {args.engine, args.seed_engine}:
            generate_chat(chat, warm, max_new_tokens=8, engine=engine, decoders=decoders)
    for decoder in decoders:  # graphs captured so far are greedy ones: no sampler in them
        decoder.fused_sampling = decoder.fused_sampling and args.sampler == "fused"
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{args.threads} threads"
    print(f"models={args.models} device={gpu} devices={args.devices} dtype={pick_dtype(args.dtype, device)} rounds={args.rounds} "
          f"max_new_tokens={args.max_new_tokens} batch_size={args.batch_size} refill={args.refill} kernels={args.kernels} reuse_kv={args.reuse_kv} sampler={args.sampler} "
          f"batch_invariant={args.batch_invariant}")
    if args.mode == "phases":
        phases, seconds = measure_phases(debate_engine(models, settings, decoders), problems)
        print_phases(phases)
        result = {"args": {k: str(v) for k, v in vars(args).items()}, "device": gpu, "models": {k: m.name for k, m in models.items()},
                  "questions": len(problems), "seconds": round(seconds, 2), "phases": phases}
        print(f"{len(problems)} questions in {seconds:.1f} s")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))
        return
    print(f"{'engine':<40}{'questions':>10}{'seconds':>10}{'questions/s':>13}{'tokens/s':>11}{'prefill s':>11}{'prompt tokens reused':>22}{'prefill padding':>17}", flush=True)
    results: dict[str, dict[str, float]] = {}
    ways = []
    if args.mode in ("both", "seed"):
        ways.append((f"one at a time (seed, {args.seed_engine})", replace(settings, engine=args.seed_engine, batch_size=1), args.seed_questions))
    if args.mode in ("both", "batched"):
        ways.append((f"batched shard ({args.engine}, {args.devices})", replace(settings, engine=args.engine), args.questions))
    for label, way, count in ways:
        m = results[label] = measure(debate_engine(models, way, decoders), problems[:count])
        print(f"{label:<40}{m['questions']:>10}{m['seconds']:>10.1f}{m['q_per_s']:>13.3f}{m['tok_per_s']:>11.1f}{m['prefill_s']:>11.1f}"
              f"{m['reused_tokens'] / max(1, m['reused_tokens'] + m['prefilled_tokens']):>22.0%}{m['prefill_padding']:>17.0%}", flush=True)
    peaks = [torch.cuda.max_memory_allocated(i) / 2**30 for i in range(torch.cuda.device_count())] if device.type == "cuda" else []
    peak = max(peaks, default=float("nan"))
    if len(results) == 2:
        seed, batched = results.values()
        print(f"speed-up: {batched['q_per_s'] / seed['q_per_s']:.1f}x questions/s, {batched['tok_per_s'] / seed['tok_per_s']:.1f}x tokens/s")
    if device.type == "cuda":
        print(f"peak GPU memory {' / '.join(f'{p:.1f}' for p in peaks)} GiB")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "device": gpu, "peak_gib": peak, "peak_gib_per_gpu": peaks, "results": results}, indent=2))


if __name__ == "__main__":
    main()
