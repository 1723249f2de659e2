"""Benchmark: how much of one model's vote hides behind the other's when the two calls run at once on two CUDA
streams, on random weights of the default pair's shapes (no model files to carry).

A shard runs the 0.5B's and the 1.5B's votes one after the other, though nothing of one feeds the other: each
call's steps are CUDA graphs whose kernels fill the GPU only in part (the 1.5B's vote decodes at 28-30% of its
limit on an H200, the 0.5B's at 18-19%: docs/performance.md). Run at once on two streams, each call replays its
own graphs on its own inputs, the same kernels as alone, so the same tokens; the question is how much time it
saves. This measures it before the engine is built for it:

- **alone**: model a's call, then model b's, on the default stream (twice: the first pass compiles the kernels
  and captures every graph the calls need; the second is the one timed);
- **together**: the same two calls at once, one host thread each, each on its own stream. No graph is captured
  in this pass (a capture and another thread's launches do not mix): the calls are the alone pass's, so they
  need the graphs it captured.

The tokens of the two passes are compared row by row. Rows are ``--rows`` random prompts of ``--prompt-min`` to
``--prompt-max`` tokens, sampled at ``--temperature`` with a seed a row, up to ``--new`` tokens, stopping at any
of every ``--stop-every``-th id (random weights never write a real stop token), as in ``bench_graphs.py``. A run's
vote goes in calls of ``debate.batch_size`` rows, one after the other, each with its own tail of few rows
(docs/performance.md, "A vote is six batches"): ``--batch 256`` does the same, and the tails are what two streams
could fill.

    python benchmarks/bench_overlap.py --batch 256 --json benchmarks/results/overlap-h100-batch256.json
    python benchmarks/bench_overlap.py --json benchmarks/results/overlap-h100.json
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.engine import DecoderOptions  # noqa: E402
from pipeline.engine.decode import StaticDecoder  # noqa: E402
from pipeline.engine.sampling import row_seed  # noqa: E402
from pipeline.models.device import pick_dtype  # noqa: E402
from random_weights import REAL_SHAPES, random_causal_lm  # noqa: E402  (benchmarks/, the script's own folder)
from report import emit  # noqa: E402  (benchmarks/, the script's own folder)
import vote_like  # noqa: E402  (benchmarks/, the script's own folder)


class Call:
    """One model's vote-like call, on its own decoder (kept between passes: its cache and graphs)."""

    def __init__(self, shape: str, args: argparse.Namespace, device: torch.device, ids: torch.Tensor, mask: torch.Tensor) -> None:
        self.shape = shape
        self.model = random_causal_lm(shape, pick_dtype(args.dtype, device), device)
        self.decoder = StaticDecoder(self.model, DecoderOptions(batch_invariant=False, reuse_kv=False))
        self.ids, self.mask, self.args = ids, mask, args
        vocab = self.model.config.vocab_size
        self.stops = vote_like.stop_ids(args, vocab)
        self.seeds = [row_seed(0, i, "vote", shape) for i in range(len(ids))]
        self.stream = torch.cuda.Stream(device)

    def run(self, stream: torch.cuda.Stream) -> tuple[torch.Tensor, float]:
        """The vote's new tokens and its seconds, its work queued on ``stream``: one call of all its rows, or (``--batch``)
        calls of that many rows one after the other, as a run's vote goes in batches of ``debate.batch_size``."""
        started = time.perf_counter()
        batch = self.args.batch or len(self.ids)
        outs = []
        with torch.cuda.stream(stream):
            for first in range(0, len(self.ids), batch):
                part = slice(first, first + batch)
                outs.append(self.decoder.generate(self.ids[part], self.mask[part], max_new_tokens=self.args.new, stop_ids=self.stops,
                                                  pad_id=0, temperature=self.args.temperature, seeds=self.seeds[part]))
        return torch.cat(outs), time.perf_counter() - started


def alone(calls: list[Call]) -> tuple[list[torch.Tensor], list[float], float]:
    """Each call in turn on the default stream: tokens, each call's seconds, the pass's seconds."""
    started = time.perf_counter()
    outs, seconds = zip(*(call.run(torch.cuda.current_stream()) for call in calls))
    return list(outs), list(seconds), time.perf_counter() - started


def together(calls: list[Call]) -> tuple[list[torch.Tensor], list[float], float]:
    """The calls at once, one thread and one stream each: tokens, each call's seconds, the pass's seconds."""
    results: list[tuple[torch.Tensor, float] | BaseException | None] = [None] * len(calls)
    captured = [len(call.decoder.graphs.captured) for call in calls]

    def work(n: int) -> None:
        try:
            results[n] = calls[n].run(calls[n].stream)
        except BaseException as err:  # reported by the main thread
            results[n] = err

    threads = [threading.Thread(target=work, args=(n,)) for n in range(len(calls))]
    torch.cuda.synchronize()
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    torch.cuda.synchronize()
    wall = time.perf_counter() - started
    for call, before, result in zip(calls, captured, results):
        if isinstance(result, BaseException):
            raise RuntimeError(f"{call.shape}'s call failed on its stream") from result
        if len(call.decoder.graphs.captured) != before:
            raise RuntimeError(f"{call.shape}'s call captured a graph with the other call running: the passes differ")
    outs, seconds = zip(*results)  # type: ignore[misc]
    return list(outs), list(seconds), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs=2, choices=sorted(REAL_SHAPES), default=["qwen2.5-1.5b", "qwen2.5-0.5b"])
    vote_like.add_arguments(parser)
    parser.add_argument("--batch", type=int, help="rows of one call (a run's vote: debate.batch_size, 256); default: all rows at once")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("two calls at once on two CUDA streams need a GPU; this machine has none")
    device = torch.device("cuda")
    vocab = min(REAL_SHAPES[s]["vocab_size"] for s in args.shapes)
    ids, mask = vote_like.prompts(args, vocab, device)
    calls = [Call(shape, args, device, ids, mask) for shape in args.shapes]
    alone(calls)  # kernels compiled, every graph captured
    passes = {"alone": alone(calls), "together": together(calls)}
    reference = passes["alone"][0]
    report = {"device": torch.cuda.get_device_name(device), "shapes": args.shapes, "dtype": args.dtype, "rows": args.rows, "batch": args.batch,
              "new": args.new, "temperature": args.temperature, "stop_every": args.stop_every}
    for name, (outs, seconds, wall) in passes.items():
        differ = [int((out != ref).any(1).sum()) for out, ref in zip(outs, reference)]
        report[name] = {"seconds": round(wall, 2), "call_seconds": [round(s, 2) for s in seconds], "rows_that_differ": differ,
                        "mean_new_tokens": [round(float((out != 0).sum(1).float().mean()), 1) for out in outs]}
        calls_text = ", ".join(f"{s}: {t:.1f} s" for s, t in zip(args.shapes, seconds))
        print(f"{name}: {wall:.1f} s ({calls_text}); rows that differ from alone: {differ}", flush=True)
    a, b = passes["alone"][1]
    saved = passes["alone"][2] - passes["together"][2]
    report["saved_seconds"] = round(saved, 2)
    report["hidden_share_of_shorter"] = round(saved / min(a, b), 3)
    print(f"together saves {saved:.1f} s: {saved / min(a, b):.0%} of the shorter call's {min(a, b):.1f} s", flush=True)
    emit(report, args.json)


if __name__ == "__main__":
    main()
