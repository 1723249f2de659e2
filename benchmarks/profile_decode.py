"""Profile: where the static decoder spends its GPU time, kernel by kernel, in a decode step or a prefill.

Random weights of a real shape, ``--batch`` rows of ``--prompt`` random tokens prefilled, then one decode
step reading ``--columns`` cache columns run under ``torch.profiler`` (kernels launched one by one: each
kernel takes the time it takes inside the step's CUDA graph). ``--phase prefill`` profiles the prefill
of those prompts instead (a debate's later turns prefill ~1,500-token conversations), and ``--reused N``
prefills only their tokens after the first N, attending to those N from the cache, as a turn that starts
from the previous one does. A decode step can look like a real run's: ``--temperature`` samples (a vote's 0.7),
``--done`` leaves a share of the rows stopped and waiting in the batch, ``--spread`` starts the rows at random
columns (left-padded prompts of different lengths). Prints the kernels grouped by kind, with the total, and the
top kernels.

    python benchmarks/profile_decode.py --shape llama-3.1-8b --dtype bfloat16 --batch 256 --kernels auto
    python benchmarks/profile_decode.py --shape qwen2.5-1.5b --batch 1536 --prompt 256 --columns 448 --temperature 0.7 --done 0.3 --spread 150
    python benchmarks/profile_decode.py --phase prefill --batch 10 --prompt 1500
    python benchmarks/profile_decode.py --phase prefill --batch 54 --prompt 1800 --reused 1500
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.engine import DecoderOptions  # noqa: E402
from pipeline.engine.decode import StaticDecoder  # noqa: E402
from pipeline.models.device import pick_dtype  # noqa: E402
from random_weights import REAL_SHAPES, random_causal_lm  # noqa: E402  (benchmarks/, the script's own folder)

# Kernel kinds by a word of the kernel's name, first match wins.
KINDS = (("attention", ("attention", "fmha", "flash", "sdpa", "cudnn")), ("matmul", ("gemm", "nvjet", "cutlass", "sm90_", "sm80_")),
         ("fused element-wise", ("_rope", "_add_rms", "_silu")), ("sampling", ("argmax", "topk", "sort", "multinomial", "gumbel")))


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, words in KINDS:
        if any(word in lowered for word in words):
            return kind
    return "other element-wise / copies"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(REAL_SHAPES), default="llama-3.1-8b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=200)
    parser.add_argument("--columns", type=int, default=320, help="cache columns the step reads (a multiple of 64)")
    parser.add_argument("--kernels", default="auto", choices=["auto", "triton", "torch"])
    parser.add_argument("--phase", default="decode", choices=["decode", "prefill"])
    parser.add_argument("--reused", type=int, default=0, help="prefill: prompt tokens whose keys and values come from the cache")
    parser.add_argument("--temperature", type=float, default=0.0, help="decode: sample at this temperature (a vote's 0.7), 0: greedy")
    parser.add_argument("--done", type=float, default=0.0, help="decode: this share of the rows has stopped (waits in the batch)")
    parser.add_argument("--spread", type=int, default=0, help="decode: rows start at random columns below this (left padding: "
                        "prompts of different lengths), 0: every row at column 0")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    device = torch.device("cuda")
    model = random_causal_lm(args.shape, pick_dtype(args.dtype, device), device)
    decoder = StaticDecoder(model, DecoderOptions(cuda_graphs=False, kernels=args.kernels, reuse_kv=False))
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.prompt), device=device)
    decoder.generate(ids, torch.ones_like(ids), max_new_tokens=max(1, args.columns - args.prompt), stop_ids=[], pad_id=0)

    state = decoder.cache.state
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():  # the decoder's buffers are inference tensors
        state.start[: args.batch] = torch.randint(0, max(1, args.spread), (args.batch,), generator=generator)
        state.seeds[: args.batch] = torch.arange(args.batch)
    finished = torch.rand(args.batch, generator=generator) < args.done

    def step() -> None:
        """The step that writes the last of ``--columns`` columns (the state is rewound each time)."""
        state.column.fill_(args.columns - 1)
        state.step.fill_(1)
        state.done[: args.batch] = finished
        decoder._step(args.batch, args.columns, args.temperature)

    def prefill() -> None:
        start = torch.zeros(args.batch, dtype=torch.long, device=device)
        decoder.forward.prefill(decoder.cache.layers, ids[:, args.reused :], start, start + args.reused, slice(0, args.batch), args.prompt)

    run = step if args.phase == "decode" else prefill

    with torch.inference_mode():
        for _ in range(3):  # warm-up: Triton compiles, cuBLAS picks its kernels
            run()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
    by_kind: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type.name != "CUDA":
            continue
        for table in (by_kind[kind_of(event.name)], by_name[event.name]):
            table[0] += event.device_time_total / 1e3
            table[1] += 1
    total = sum(ms for ms, _ in by_kind.values())
    what = f"one step over {args.columns} columns (T={args.temperature}, {finished.float().mean():.0%} of rows done, starts below {args.spread})" if args.phase == "decode" else \
        f"the prefill of {args.prompt}-token prompts" + (f", {args.reused} tokens of each from the cache" if args.reused else "")
    print(f"{args.shape} {args.dtype}, batch {args.batch}, kernels={args.kernels} ({'fused' if decoder.forward.use_kernels else 'PyTorch'}): "
          f"{total:.2f} ms of kernels in {what}")
    for kind, (ms, count) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        print(f"  {kind:<30}{ms:>8.2f} ms {ms / total:>5.0%} {int(count):>6} kernels")
    print("top kernels:")
    for name, (ms, count) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"  {ms:>8.3f} ms {int(count):>5}x  {name[:110]}")


if __name__ == "__main__":
    main()
