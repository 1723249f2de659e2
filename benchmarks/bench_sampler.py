"""Benchmark: one sampling step, PyTorch's ops (``sampling_scores(...).argmax``) against the fused Triton kernel.

Random bf16 logits of ``--rows`` x ``--vocab`` (default: a vote's 1,536 rows and a debate turn's 256, Qwen2.5's
151,936 entries), temperature ``--temperature``, seeds as the debate makes them. For each row count it prints the
milliseconds of a step of each path (CUDA events, the mean of ``--repeat`` steps after a warm-up), the greedy
argmax beside them for scale, the fused kernel's read rate (bytes of logits over its time) and whether both paths
gave the same tokens over ``--check-steps`` steps. The last line is the JSON of all rows (``--json``: also to a file).

    python benchmarks/bench_sampler.py
    python benchmarks/bench_sampler.py --rows 1 64 256 1536 --json benchmarks/results/sampler-h100.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.engine.sampling import fused_sample, row_seed, sample_plan, sampling_scores  # noqa: E402


def milliseconds(fn: Callable[[int], torch.Tensor], repeat: int) -> float:
    """Mean time of ``fn(step)`` over ``repeat`` steps, after three warm-up steps."""
    for step in range(3):
        fn(step)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for step in range(repeat):
        fn(step)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeat


def measure(rows: int, vocab: int, temperature: float, repeat: int, check_steps: int) -> dict[str, float | int | bool]:
    logits = (torch.randn(rows, vocab, device="cuda") * 4).to(torch.bfloat16)
    seeds = torch.tensor([row_seed(0, i // 6, "vote", "a", i % 6) for i in range(rows)], device="cuda")
    step = torch.zeros((), dtype=torch.long, device="cuda")  # a device step, as the decoder's captured graph passes it

    def torch_path(s: int) -> torch.Tensor:
        step.fill_(s)
        return sampling_scores(logits, temperature, seeds, step).argmax(-1)

    def fused_path(s: int) -> torch.Tensor:
        step.fill_(s)
        return fused_sample(logits, temperature, seeds, step)

    mismatched = sum(int((torch_path(s) != fused_path(s)).sum()) for s in range(check_steps))
    torch_ms = milliseconds(torch_path, repeat)
    fused_ms = milliseconds(fused_path, repeat)
    greedy_ms = milliseconds(lambda s: logits.float().argmax(-1), repeat)
    processors = torch.cuda.get_device_properties(0).multi_processor_count
    return {"rows": rows, "vocab": vocab, "temperature": temperature, "torch_ms": round(torch_ms, 4), "fused_ms": round(fused_ms, 4),
            "speedup": round(torch_ms / fused_ms, 1), "greedy_argmax_ms": round(greedy_ms, 4),
            "fused_read_gb_per_s": round(logits.numel() * logits.element_size() / fused_ms / 1e6, 1),
            "split": sample_plan(rows, vocab, processors), "tokens_checked": rows * check_steps,
            "tokens_differing": mismatched, "identical": mismatched == 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[256, 1536])
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--check-steps", type=int, default=16, help="steps whose tokens are compared between the paths")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a GPU")
    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name()
    print(f"{gpu}, torch {torch.__version__}, bf16 logits x {args.vocab}, T={args.temperature}", flush=True)
    print(f"{'rows':>6}{'torch ms':>10}{'fused ms':>10}{'speed-up':>10}{'argmax ms':>11}{'fused GB/s':>12}{'identical':>11}", flush=True)
    rows = []
    for count in args.rows:
        r = measure(count, args.vocab, args.temperature, args.repeat, args.check_steps)
        rows.append(r)
        print(f"{count:>6}{r['torch_ms']:>10.3f}{r['fused_ms']:>10.3f}{r['speedup']:>9.1f}x{r['greedy_argmax_ms']:>11.3f}"
              f"{r['fused_read_gb_per_s']:>12.0f}{str(r['identical']):>11}", flush=True)
        torch.cuda.empty_cache()
    result = {"device": gpu, "torch": torch.__version__, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
