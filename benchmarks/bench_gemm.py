"""Benchmark: the decode step's matmuls alone, per projection, against the card's bandwidth and peak.

At 64-256 rows a decode step is mostly its matmuls: each reads a whole weight matrix for a few hundred rows
of activations. This prints, for each projection of a real shape (q/k/v and gate/up fused, as the static
decoder runs them), the time of cuBLAS (``F.linear``, what the decoder calls), the weight bytes it moved per
second and its TFLOP/s, and the sum over a step (every layer and the lm_head) against the step's
weight-read roofline. Each call reads another copy of the weights, so the 50 MB L2 cache holds none of them.

``--triton`` adds a split-K Triton matmul swept over tile shapes, split counts and pipeline depths (its
best configuration per shape): the experiment that asked whether cuBLAS leaves a skinny matmul's
bandwidth on the table (it did not: docs/performance.md).

    python benchmarks/bench_gemm.py --dtype bfloat16 --batch 128 256 --triton --json benchmarks/results/gemm-h200-bf16.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_decode import bandwidth_of  # noqa: E402  (benchmarks/, the script's own folder)
from bench_train import peak_tflops  # noqa: E402
from pipeline.models.device import pick_dtype  # noqa: E402
from random_weights import REAL_SHAPES  # noqa: E402

# Weight copies a timing loop cycles through: more bytes than any GPU's L2 cache for every projection.
COPIES = 6


def projections(shape: str) -> dict[str, tuple[int, int, int]]:
    """name -> (input features, output features, times per step) of the decode step's matmuls."""
    spec = REAL_SHAPES[shape]
    hidden, inter, layers = spec["hidden_size"], spec["intermediate_size"], spec["num_hidden_layers"]
    head_dim = hidden // spec["num_attention_heads"]
    qkv = hidden + 2 * spec["num_key_value_heads"] * head_dim
    return {"qkv": (hidden, qkv, layers), "o": (hidden, hidden, layers), "gate_up": (hidden, 2 * inter, layers),
            "down": (inter, hidden, layers), "lm_head": (hidden, spec["vocab_size"], 1)}


def microseconds(fn: Callable[[torch.Tensor], object], weights: list[torch.Tensor], iters: int = 50) -> float:
    """Mean time of ``fn(weight)`` over ``iters`` calls cycling through ``weights``, after a warm-up."""
    for weight in weights[:3]:
        fn(weight)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for i in range(iters):
        fn(weights[i % len(weights)])
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters * 1e3


def triton_best(x: torch.Tensor, weights: list[torch.Tensor]) -> tuple[float, str]:
    """The fastest split-K Triton configuration for ``x @ weight.T`` and its time (us); each checked
    against cuBLAS first."""
    import split_k  # noqa: PLC0415  (benchmarks/: needs Triton and a GPU)

    rows, features = x.shape
    reference = F.linear(x, weights[0]).float()
    best = (float("inf"), "none")
    for config in itertools.product((64, 128), (64, 128, 256), (64, 128), (1, 2, 4, 8), (3, 5)):
        block_m, _, block_k, splits, _ = config
        if block_m > rows or features % (splits * block_k):
            continue
        out = torch.empty(rows, weights[0].shape[0], device=x.device, dtype=x.dtype)
        partial = torch.empty(splits, *out.shape, device=x.device, dtype=torch.float32) if splits > 1 else None
        try:
            split_k.matmul(x, weights[0], config, out, partial)
        except Exception:  # noqa: BLE001  a tile that does not fit the multiprocessor's shared memory
            continue
        if (out.float() - reference).abs().max() > 0.02 * reference.abs().max():
            raise AssertionError(f"split-K matmul {config} disagrees with cuBLAS")
        best = min(best, (microseconds(lambda w: split_k.matmul(x, w, config, out, partial), weights), str(config)))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(REAL_SHAPES), default="llama-3.1-8b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--triton", action="store_true", help="also sweep the split-K Triton matmul")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda")
    dtype = pick_dtype(args.dtype, device)
    name = torch.cuda.get_device_name(device)
    bandwidth = bandwidth_of(name)
    peak = peak_tflops(name, None)
    print(f"{name}: {bandwidth / 1e12:.2f} TB/s, {f'{peak:.0f}' if peak else 'unknown'} TFLOP/s peak; {args.shape}, {dtype}")
    rows_out = []
    for batch in args.batch:
        step = {"cublas": 0.0, "triton": 0.0, "roofline": 0.0}
        for proj, (features, outputs, per_step) in projections(args.shape).items():
            weights = [torch.randn(outputs, features, device=device, dtype=dtype) for _ in range(2 if proj == "lm_head" else COPIES)]
            x = torch.randn(batch, features, device=device, dtype=dtype)
            moved = (features * outputs + batch * (features + outputs)) * x.element_size()
            flop = 2 * batch * features * outputs
            row = {"batch": batch, "projection": proj, "shape": [batch, features, outputs],
                   "cublas_us": microseconds(lambda w: F.linear(x, w), weights), "roofline_us": moved / bandwidth * 1e6}
            if args.triton:
                row["triton_us"], row["triton_config"] = triton_best(x, weights)
            for engine in ("cublas", "triton"):
                if f"{engine}_us" in row:
                    step[engine] += per_step * row[f"{engine}_us"]
            step["roofline"] += per_step * row["roofline_us"]
            line = (f"batch {batch:4d} {proj:8s} cuBLAS {row['cublas_us']:7.1f} us  {moved / row['cublas_us'] / 1e6:5.2f} TB/s "
                    f"{flop / row['cublas_us'] / 1e6:6.1f} TFLOP/s")
            if args.triton:
                line += f" | split-K Triton {row['triton_us']:7.1f} us {row['triton_config']}"
            print(line, flush=True)
            rows_out.append(row)
            del weights
            torch.cuda.empty_cache()
        summary = f"batch {batch:4d} step: cuBLAS {step['cublas'] / 1e3:.2f} ms, weight-read roofline {step['roofline'] / 1e3:.2f} ms"
        if args.triton:
            summary += f", split-K Triton {step['triton'] / 1e3:.2f} ms"
        print(summary)
        rows_out.append({"batch": batch, "projection": "step", **{f"{k}_us": v for k, v in step.items() if v}})
    if args.json:
        args.json.write_text(json.dumps({"device": name, "shape": args.shape, "dtype": str(dtype), "rows": rows_out}, indent=1))


if __name__ == "__main__":
    main()
