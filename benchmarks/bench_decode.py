"""Benchmark: decode speed of each engine against the memory-bandwidth roofline.

One model, random weights of a real shape, ``--batch`` rows of ``--prompt`` random tokens, exactly
``--new`` new tokens per row (no stop token, so every engine does the same work). For every
(engine, batch) row it prints generated tokens/s end to end (prefill included) and in the decode phase
alone, the roofline, both ratios and the peak GPU memory.

The roofline is the time to read, once per generated token, the weights a step reads (every parameter
but the input embedding table, of which a step reads one row per sequence) plus the batch's KV cache up
to that token, at the card's memory bandwidth (``--bandwidth``, default the card's data-sheet figure).

    python benchmarks/bench_decode.py --shape llama-3.1-8b --dtype bfloat16 --batch 1 64 128 256 --engines static generate
    python benchmarks/bench_decode.py --shape qwen2.5-1.5b --batch 1 64 256 --engines static static-fast --json cost.json

Engines: ``static`` (the suite's decoder as a debate runs it: static KV cache, CUDA graphs, its fused Triton
kernels where they can run, batch-invariant: fixed-tile matmuls, attention in fixed pieces for prefill and
decode), ``static-fast`` (the same without batch invariance: cuBLAS, SDPA's prefill, attention split for
occupancy: ``debate.batch_invariant=false``), ``static-torch`` (PyTorch's kernels), ``static-eager``
(PyTorch's kernels without graphs), ``generate`` (transformers' plain ``generate``), ``compile``
(transformers' static cache with ``torch.compile``, its own fast path). With both ``static`` and
``static-fast`` it ends with what invariance costs at each batch (tokens/s, end to end and decode).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.engine import DecoderOptions  # noqa: E402
from pipeline.engine.decode import StaticDecoder  # noqa: E402
from pipeline.engine import roofline  # noqa: E402
from pipeline.models.device import pick_dtype  # noqa: E402
from random_weights import REAL_SHAPES, random_causal_lm  # noqa: E402  (benchmarks/, the script's own folder)

def bandwidth_of(name: str) -> float:
    """The card's data-sheet bandwidth (``pipeline.engine.roofline``), bytes/s."""
    value = roofline.bandwidth(name)
    if value is None:
        raise SystemExit(f"no data-sheet bandwidth for {name!r}: give --bandwidth (bytes/s)")
    return value


def roofline_seconds(model: Any, batch: int, prompt: int, new: int, bandwidth: float, first: int = 0) -> float:
    """Seconds to read the weights once per token and the batch's KV cache up to that token, tokens ``first..new-1``."""
    cost = roofline.ModelCost.of(model)
    total = sum(cost.weight_bytes + batch * (prompt + s + 1) * cost.kv_bytes_per_token for s in range(first, new))
    return total / bandwidth


def engine_call(name: str, model: Any, new: int) -> Callable[[torch.Tensor], Any]:
    """A function that generates ``new`` tokens for a batch of prompts with one engine."""
    mask_of = lambda ids: torch.ones_like(ids)  # noqa: E731
    if name.startswith("static"):
        # Each call is a new batch: no reuse of the previous call's prompts (the debate benchmark measures that).
        decoder = StaticDecoder(model, DecoderOptions(cuda_graphs=name != "static-eager", kernels="auto" if name in ("static", "static-fast") else "torch",
                                                      reuse_kv=False, batch_invariant=name == "static"))
        call = lambda ids, n=new: decoder.generate(ids, mask_of(ids), max_new_tokens=n, stop_ids=[], pad_id=0)  # noqa: E731
        call.decoder = decoder  # type: ignore[attr-defined]
        return call
    kwargs: dict[str, Any] = {"do_sample": False, "eos_token_id": None, "pad_token_id": 0}
    if name == "compile":  # transformers compiles the forward itself when the cache is static
        kwargs["cache_implementation"] = "static"
    return lambda ids, n=new: model.generate(ids, attention_mask=mask_of(ids), max_new_tokens=n, min_new_tokens=n, **kwargs)


def timed(fn: Callable[[], Any]) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def measure(engine: str, model: Any, batch: int, prompt: int, new: int, bandwidth: float) -> dict[str, float]:
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), device="cuda")
    call = engine_call(engine, model, new)
    warm = timed(lambda: call(ids))  # graphs captured / compiled here
    decoder = getattr(call, "decoder", None)
    graphs = (len(decoder.graphs.captured), decoder.graphs.seconds) if decoder is not None else (0, 0.0)
    torch.cuda.reset_peak_memory_stats()
    total = timed(lambda: call(ids))
    prefill = timed(lambda: call(ids, 1))
    peak = torch.cuda.max_memory_allocated() / 2**30
    roof_all = roofline_seconds(model, batch, prompt, new, bandwidth)
    roof_decode = roofline_seconds(model, batch, prompt, new, bandwidth, first=1)
    decode = total - prefill
    return {
        "engine": engine, "batch": batch, "first_call_s": warm, "seconds": total, "prefill_s": prefill,
        "tok_per_s": batch * new / total, "decode_tok_per_s": batch * (new - 1) / decode,
        "roofline_tok_per_s": batch * new / roof_all, "ratio": roof_all / total, "decode_ratio": roof_decode / decode,
        "peak_gib": peak, "graphs": graphs[0], "capture_s": graphs[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(REAL_SHAPES), default="llama-3.1-8b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64, 128, 256])
    parser.add_argument("--engines", nargs="+", default=["static", "generate"], choices=["static", "static-fast", "static-torch", "static-eager", "generate", "compile"])
    parser.add_argument("--prompt", type=int, default=200)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--bandwidth", type=float, help="bytes/s (default: the card's data sheet)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a GPU")
    torch.manual_seed(0)
    device = torch.device("cuda")
    gpu = torch.cuda.get_device_name()
    bandwidth = args.bandwidth or bandwidth_of(gpu)
    dtype = pick_dtype(args.dtype, device)
    model = random_causal_lm(args.shape, dtype, device)
    print(f"{args.shape} {dtype} on {gpu} ({bandwidth / 1e12:.2f} TB/s), prompt {args.prompt}, {args.new} new tokens; "
          f"torch {torch.__version__}", flush=True)
    header = f"{'engine':<13}{'batch':>6}{'tok/s':>9}{'roofline':>10}{'ratio':>7}{'decode tok/s':>14}{'decode ratio':>13}{'prefill s':>10}{'1st call s':>11}{'peak GiB':>9}{'graphs (capture s)':>20}"
    print(header, flush=True)
    rows = []
    for engine in args.engines:
        for batch in args.batch:
            try:
                r = measure(engine, model, batch, args.prompt, args.new, bandwidth)
            except torch.OutOfMemoryError:
                print(f"{engine:<13}{batch:>6}  out of memory", flush=True)
                torch.cuda.empty_cache()
                continue
            rows.append(r)
            print(f"{engine:<13}{batch:>6}{r['tok_per_s']:>9.0f}{r['roofline_tok_per_s']:>10.0f}{r['ratio']:>7.0%}{r['decode_tok_per_s']:>14.0f}"
                  f"{r['decode_ratio']:>13.0%}{r['prefill_s']:>10.3f}{r['first_call_s']:>11.1f}{r['peak_gib']:>9.1f}"
                  f"{r['graphs']:>12} ({r['capture_s']:.1f})", flush=True)
            torch.cuda.empty_cache()
    costs = invariance_costs(rows)
    for c in costs:
        print(f"batch invariance at batch {c['batch']}: {c['tok_per_s_ratio']:.0%} of static-fast's tokens/s end to end, "
              f"{c['decode_tok_per_s_ratio']:.0%} in the decode phase (roofline share {c['ratio']:.0%} vs {c['fast_ratio']:.0%})", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "device": gpu, "bandwidth": bandwidth, "rows": rows,
                                         "invariance_cost": costs}, indent=2))


def invariance_costs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per batch measured with both: the batch-invariant decoder's tokens/s as a share of static-fast's."""
    by = {(r["engine"], r["batch"]): r for r in rows}
    out = []
    for (engine, batch), r in sorted(by.items(), key=lambda item: item[0][1]):
        fast = by.get(("static-fast", batch))
        if engine == "static" and fast is not None:
            out.append({"batch": batch, "tok_per_s_ratio": r["tok_per_s"] / fast["tok_per_s"],
                        "decode_tok_per_s_ratio": r["decode_tok_per_s"] / fast["decode_tok_per_s"], "ratio": r["ratio"], "fast_ratio": fast["ratio"]})
    return out


if __name__ == "__main__":
    main()
