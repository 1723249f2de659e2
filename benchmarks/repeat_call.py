"""Does one static-decoder call repeat itself on one machine? The call a one-batch run (``debate.vote_batch_rows=1536``)
does not repeat: model b's vote of 1,536 rows, after model b alone on the same 256 questions (whose rows the vote's
prompts reuse) and model a's vote (``benchmarks/same_calls.py`` on two runs' debug logs: same inputs, layout and
cache before it, other tokens and cache). This runs that sequence on random weights of the pair's shapes, twice per
variant in fresh decoders, and compares the vote's tokens and its cache's checksum (none for ``generate``'s variants)
run against run; a variant that repeats where the default does not names the part that does not:

- ``default``: as a run decodes (graphs, Triton kernels, fused sampler, reuse);
- ``no-graphs``: ``cuda_graphs=False``; ``torch-kernels``: ``kernels=torch`` (PyTorch's ops, PyTorch's sampler);
- ``no-reuse``: ``reuse_kv=False`` (the vote prefills its prompts whole); ``no-other``: without model a's call;
- ``cudnn-prefill``: the engine's attention (``scaled_dot_product_attention``: the prefills') free to take cuDNN's
  backend first, as PyTorch prefers on an H100 (the engine before ``forward.SDPA_BACKENDS``), with the kv heads
  grouped in the kernel as it then ran; ``math-prefill``: on PyTorch's math backend only;
- ``grouped-heads``: the prefill's kv heads grouped in the kernel (``enable_gqa``) instead of copied, which within
  ``forward.SDPA_BACKENDS`` runs on the math backend (the engine between those two changes);
- ``generate``: model b alone's rows through transformers' ``generate`` (greedy, left-padded: what lm-eval's stock
  model runs in the eval stage), on PyTorch's own choice of attention backend (the eval stage before
  ``forward.repeatable_attention``); ``generate-no-cudnn``: the same within ``forward.SDPA_BACKENDS``, as it runs now.

Each engine run also gives the vote call's prefill seconds and the device's peak memory over the sequence (what
grouping the heads or copying them costs). Prompts are ``vote_like.py``'s (random, left-padded, stopping at every
``--stop-every``-th id); one line per variant goes out as soon as it is measured.

    python benchmarks/repeat_call.py --json benchmarks/results/repeat-call-h100.json
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.engine import DecoderOptions, forward  # noqa: E402
from pipeline.engine.decode import StaticDecoder  # noqa: E402
from pipeline.engine.sampling import row_seed  # noqa: E402
from random_weights import REAL_SHAPES, random_causal_lm  # noqa: E402  (benchmarks/, the script's own folder)
from report import emit  # noqa: E402
import vote_like  # noqa: E402

class Variant(NamedTuple):
    """A variant of the engine's sequence: the decoder's options, whether model a's vote runs between b's calls, the
    attention backends the engine's SDPA calls may take (None: the engine's own, ``forward.SDPA_BACKENDS``), and
    whether the prefill groups the kv heads in the kernel (None: the engine's own choice)."""

    knobs: dict[str, Any]
    other: bool = True
    backends: list[SDPBackend] | None = None
    grouped: bool | None = None


CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
VARIANTS: dict[str, Variant] = {
    "default": Variant({}),
    "cudnn-prefill": Variant({}, backends=CUDNN_FIRST, grouped=True),
    "math-prefill": Variant({}, backends=[SDPBackend.MATH]),
    "grouped-heads": Variant({}, grouped=True),
    "no-other": Variant({}, other=False),
    "no-reuse": Variant({"reuse_kv": False}),
    "no-graphs": Variant({"cuda_graphs": False}),
    "torch-kernels": Variant({"kernels": "torch"}),
}
# transformers' generate: the attention backends it runs within (None: PyTorch's own choice, as the eval stage runs).
GENERATE_VARIANTS: dict[str, list[SDPBackend] | None] = {"generate": None, "generate-no-cudnn": forward.SDPA_BACKENDS}


def sequence(models: dict[str, Any], variant: Variant, args: argparse.Namespace) -> tuple[torch.Tensor, str, dict[str, float]]:
    """Model b alone (greedy, ``--questions`` rows), model a's vote, model b's vote (``--k`` samples a question, each
    with its own seed), in fresh decoders: b's vote tokens, b's cache checksum after it, and the vote's prefill
    seconds and the peak memory (GiB) of the sequence."""
    ids, mask, stops = solo_prompts(models["b"], args)
    votes = {"ids": ids.repeat_interleave(args.k, 0), "mask": mask.repeat_interleave(args.k, 0)}
    seeds = [row_seed(args.seed, q, n) for q in range(args.questions) for n in range(args.k)]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    b = decoder(models["b"], variant)
    b.generate(ids, mask, max_new_tokens=args.new, stop_ids=stops, pad_id=0)
    if variant.other:
        decoder(models["a"], variant).generate(votes["ids"], votes["mask"], max_new_tokens=args.new, stop_ids=stops, pad_id=0,
                                               temperature=args.temperature, seeds=seeds)
    out = b.generate(votes["ids"], votes["mask"], max_new_tokens=args.new, stop_ids=stops, pad_id=0, temperature=args.temperature,
                     seeds=seeds)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return out, b.cache.checksum(), {"vote_prefill_seconds": round(b.last.prefill.seconds, 4), "peak_gib": round(peak, 2)}


def decoder(model: Any, variant: Variant) -> StaticDecoder:
    """A fresh decoder with the variant's options, its prefill grouping the kv heads as the variant says."""
    made = StaticDecoder(model, DecoderOptions(**variant.knobs))
    if variant.grouped is not None:
        made.forward.gqa_in_kernel = variant.grouped
    return made


def generate_sequence(models: dict[str, Any], args: argparse.Namespace, backends: list[SDPBackend] | None) -> torch.Tensor:
    """Model b alone's rows through ``generate``, greedy: its new tokens, padded to ``--new`` columns (a batch
    whose rows all stop early is shorter)."""
    model = models["b"]
    ids, mask, stops = solo_prompts(model, args)
    with sdpa_kernel(backends) if backends else contextlib.nullcontext():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new, do_sample=False,
                             eos_token_id=stops, pad_token_id=0)
    new = out[:, ids.shape[1]:]
    return torch.nn.functional.pad(new, (0, args.new - new.shape[1]))


def solo_prompts(model: Any, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Model b alone's ``--questions`` prompts (ids, mask) and the stop ids, on ``model``'s device: ``vote_like``
    makes ``args.rows`` prompts, so it is handed a copy of ``args`` with ``--questions`` as its rows."""
    solo = argparse.Namespace(**{**vars(args), "rows": args.questions})
    vocab = model.config.vocab_size
    return (*vote_like.prompts(solo, vocab, model.device), vote_like.stop_ids(args, vocab))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    vote_like.add_arguments(parser)
    parser.add_argument("--questions", type=int, default=256, help="model b alone's rows; the vote has --k times as many")
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=[*VARIANTS, *GENERATE_VARIANTS], choices=[*VARIANTS, *GENERATE_VARIANTS])
    parser.add_argument("--shapes", nargs=2, default=["qwen2.5-1.5b", "qwen2.5-0.5b"], choices=sorted(REAL_SHAPES),
                        metavar="SHAPE", help="model a's and model b's (the default pair's)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    models = {name: random_causal_lm(shape, dtype, device) for name, shape in zip("ab", args.shapes)}
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "new": args.new, "variants": {}}
    engines = forward.SDPA_BACKENDS
    for name in args.variants:
        if name in GENERATE_VARIANTS:
            runs = [(generate_sequence(models, args, GENERATE_VARIANTS[name]), None, {}) for _ in range(args.repeats)]
        else:
            variant = VARIANTS[name]
            forward.SDPA_BACKENDS = variant.backends or engines
            try:
                runs = [sequence(models, variant, args) for _ in range(args.repeats)]
            finally:
                forward.SDPA_BACKENDS = engines
        first, checksum, _ = runs[0]
        rows_differ = [int((out != first).any(1).sum()) for out, _, _ in runs[1:]]
        report["variants"][name] = {"rows": len(first), "rows_differ": rows_differ, "checksums": [c for _, c, _ in runs],
                                    "repeats": all(n == 0 for n in rows_differ) and all(c == checksum for _, c, _ in runs),
                                    "costs": [cost for *_, cost in runs]}
        print(f"{name}: {report['variants'][name]}", flush=True)
    emit(report, args.json)


if __name__ == "__main__":
    main()
