"""Probe: at which row counts does a cuBLAS matmul give a row the same bits as at another row count?

Without batch invariance a decode step's linear layers are cuBLAS's (``F.linear``), which picks its kernel by
the row count: a row's bits can follow the number of rows beside it. The static decoder runs its steps at
power-of-two row buckets; a finer bucket (fewer finished rows waiting in the batch) keeps a run's records only
where cuBLAS gives every row the bits it gets at the power-of-two bucket. For each linear layer shape of a
model (random weights, ``--dtype``), this compares ``F.linear(x[:m])`` with the first ``m`` rows of
``F.linear(x[:bucket])`` for every ``m`` in steps of ``--step`` rows, ``bucket`` the power of two at or above
``m`` (capped at ``--rows``, as the decoder caps its bucket at its cache's rows), and prints the row counts where
some row differs. Prints the JSON of all (``--json``: also to a file).

    python benchmarks/row_stability.py --shape qwen2.5-1.5b --rows 1536
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report import emit  # noqa: E402  (benchmarks/, the script's own folder)
from random_weights import REAL_SHAPES  # noqa: E402  (benchmarks/, the script's own folder)


def layer_shapes(shape: str) -> dict[str, tuple[int, int]]:
    """(out, in) of each linear layer of a decode step, as the static decoder fuses them (q/k/v, gate/up)."""
    s = REAL_SHAPES[shape]
    hidden, heads, kv_heads = s["hidden_size"], s["num_attention_heads"], s["num_key_value_heads"]
    head_dim = hidden // heads
    return {"qkv": ((heads + 2 * kv_heads) * head_dim, hidden), "o": (hidden, heads * head_dim),
            "gate_up": (2 * s["intermediate_size"], hidden), "down": (hidden, s["intermediate_size"]),
            "lm_head": (s["vocab_size"], hidden)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(REAL_SHAPES), default="qwen2.5-1.5b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--rows", type=int, default=1536, help="the most rows of a call (a vote of 6 over 256 questions)")
    parser.add_argument("--step", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("this probes cuBLAS: it needs a CUDA GPU")
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    differing: dict[str, list[int]] = {}
    for name, (out, inner) in layer_shapes(args.shape).items():
        weight = torch.randn(out, inner, dtype=dtype, device="cuda") / inner**0.5
        x = torch.randn(args.rows, inner, dtype=dtype, device="cuda")
        at_bucket: dict[int, torch.Tensor] = {}
        differing[name] = []
        for m in range(args.step, args.rows + 1, args.step):
            bucket = min(1 << (m - 1).bit_length(), args.rows)
            if bucket not in at_bucket:
                at_bucket[bucket] = F.linear(x[:bucket], weight)
            if not torch.equal(F.linear(x[:m], weight), at_bucket[bucket][:m]):
                differing[name].append(m)
        print(f"{args.shape} {name} {out}x{inner}: {len(differing[name])} of {args.rows // args.step} row counts differ from "
              f"their power-of-two bucket: {differing[name]}", flush=True)
    emit({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": args.shape, "dtype": args.dtype,
          "rows": args.rows, "step": args.step, "differing": differing}, args.json)


if __name__ == "__main__":
    main()
