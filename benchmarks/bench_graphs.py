"""Benchmark: a vote-like call's CUDA graphs: how many the static decoder captures, the seconds it spends capturing
them, and the call's decode tokens/s, on random weights of a real shape (no model files to carry).

``--rows`` rows of random prompts of ``--prompt-min`` to ``--prompt-max`` tokens (left-padded, as a call's rows
are), sampled at ``--temperature`` with a seed a row, up to ``--new`` tokens. Random weights never write a real
stop token, so a row stops at any token of a fixed share of the vocabulary (every ``--stop-every``-th id): rows
end at spread lengths and the batch shrinks through its row buckets as a real vote's does. Each of ``--calls``
calls runs on a fresh decoder (its own cache and graphs; the kernels compiled by the first call, which is the
cold one). Prints a line a call and the JSON of all (``--json``: also to a file).

``--steps`` also times every decode step on the GPU (CUDA events around each replay) and sums them by the step's
row bucket: where a call's decode time goes, and how much of its wall time the GPU spent in steps at all (the
rest: prefill, compaction, the host's checks for finished rows).

    python benchmarks/bench_graphs.py --shape qwen2.5-1.5b --rows 1536 --new 512 --json benchmarks/results/graphs-h100.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.engine import DecoderOptions  # noqa: E402
from pipeline.engine.decode import StaticDecoder  # noqa: E402
from pipeline.engine.sampling import row_seed  # noqa: E402
from report import emit  # noqa: E402  (benchmarks/, the script's own folder)
from pipeline.models.device import pick_dtype  # noqa: E402
from random_weights import REAL_SHAPES, random_causal_lm  # noqa: E402  (benchmarks/, the script's own folder)
import vote_like  # noqa: E402  (benchmarks/, the script's own folder)


def time_steps(decoder: StaticDecoder) -> list[tuple[int, torch.cuda.Event, torch.cuda.Event]]:
    """Wraps ``decoder``'s step replay in CUDA events: (rows, start, end) per step, read after the call."""
    timed: list[tuple[int, torch.cuda.Event, torch.cuda.Event]] = []
    replay = decoder._replay

    def timed_replay(rows: int, columns: int, temperature: float) -> None:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        replay(rows, columns, temperature)
        end.record()
        timed.append((rows, start, end))

    decoder._replay = timed_replay
    return timed


def step_table(timed: list[tuple[int, torch.cuda.Event, torch.cuda.Event]]) -> list[dict[str, float]]:
    """GPU seconds of the timed steps by row bucket, the widest first (the first step of a bucket, which may
    capture its graph, left out of the per-step mean but not of the sum)."""
    torch.cuda.synchronize()
    by_rows: dict[int, list[float]] = {}
    for rows, start, end in timed:
        by_rows.setdefault(rows, []).append(start.elapsed_time(end) / 1e3)
    return [{"rows": rows, "steps": len(s), "gpu_seconds": round(sum(s), 3),
             "ms_per_step": round(1e3 * sum(s[1:]) / max(1, len(s) - 1), 3)} for rows, s in sorted(by_rows.items(), reverse=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(REAL_SHAPES), default="qwen2.5-1.5b")
    parser.add_argument("--device", default="cuda")
    vote_like.add_arguments(parser)
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--steps", action="store_true", help="time each decode step on the GPU, summed by row bucket")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.steps and device.type != "cuda":
        parser.error("--steps times the steps with CUDA events: it needs --device cuda")
    model = random_causal_lm(args.shape, pick_dtype(args.dtype, device), device)
    vocab = model.config.vocab_size
    ids, mask = vote_like.prompts(args, vocab, device)
    stops = vote_like.stop_ids(args, vocab)
    seeds = [row_seed(0, i, "vote") for i in range(args.rows)]
    calls = []
    for call in range(args.calls):
        decoder = StaticDecoder(model, DecoderOptions(batch_invariant=False, reuse_kv=False))
        timed = time_steps(decoder) if args.steps else None
        started = time.perf_counter()
        out = decoder.generate(ids, mask, max_new_tokens=args.new, stop_ids=stops, pad_id=0, temperature=args.temperature, seeds=seeds)
        seconds = time.perf_counter() - started
        last = decoder.last
        result = {"call": call + 1, "seconds": round(seconds, 2), "graphs": len(decoder.graphs.captured),
                  "capture_seconds": round(last.capture_seconds, 2), "decode_seconds": round(last.decode.seconds, 2),
                  "decode_tokens": last.decode.tokens, "decode_tokens_per_s": round(last.decode.tokens / max(last.decode.seconds, 1e-9)),
                  "decode_share": None if last.decode.limit_seconds is None else round(last.decode.limit_seconds / last.decode.seconds, 3),
                  "prefill_seconds": round(last.prefill.seconds, 2), "mean_new_tokens": round(float((out != 0).sum(1).float().mean()), 1)}
        if timed is not None:
            result["steps"] = step_table(timed)
            for line in result["steps"]:
                print(f"  {line['rows']:>5} rows: {line['steps']:>4} steps, {line['gpu_seconds']:6.2f} s on the GPU, {line['ms_per_step']:.2f} ms a step")
            print(f"  steps on the GPU: {sum(line['gpu_seconds'] for line in result['steps']):.2f} s of the decode's {last.decode.seconds:.2f} s")
        calls.append(result)
        print(f"call {call + 1}: {seconds:.1f} s; {result['graphs']} graphs captured in {last.capture_seconds:.1f} s; decode "
              f"{last.decode.seconds:.1f} s, {result['decode_tokens_per_s']:,} tok/s; prefill {last.prefill.seconds:.1f} s; "
              f"{result['mean_new_tokens']} new tokens a row", flush=True)
        del decoder
        if device.type == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {"device": name, "shape": args.shape, "dtype": args.dtype, "rows": args.rows, "new": args.new,
              "temperature": args.temperature, "stop_every": args.stop_every, "calls": calls}
    emit(report, args.json)


if __name__ == "__main__":
    main()
