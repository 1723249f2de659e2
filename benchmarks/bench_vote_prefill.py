"""Benchmark: a vote's prefill with each recurring prompt prefilled once and copied, against every row prefilled.

A vote samples ``--k`` rows of each of ``--questions`` GSM8K questions: k rows of one prompt. With batch
invariance (the CPU's default) the static decoder prefills such a prompt once and its other rows copy its keys,
values and last logits (``pipeline.engine.decode``); the baseline is the same decoder with every row its own
source, as every call ran before. For each way it prints the call's seconds, its prefill's seconds and prompt
tokens, its decode's seconds, and whether both ways gave the same texts. The last line is the JSON of both
(``--json``: also to a file).

    python benchmarks/bench_vote_prefill.py --model qwen2.5-coder-0.5b-instruct --dtype int8
    python benchmarks/bench_vote_prefill.py --model qwen2.5-coder-1.5b-instruct --dtype int8 --json benchmarks/results/vote-prefill-cpu.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.data import load_problems  # noqa: E402
from pipeline.engine import DecoderOptions, decode  # noqa: E402
from pipeline.engine.generation import generate_chat  # noqa: E402
from pipeline.engine.memory import Decoders  # noqa: E402
from pipeline.engine.sampling import row_seed  # noqa: E402
from pipeline.models.loading import load_chat_model  # noqa: E402
from pipeline.models.registry import load_registry  # noqa: E402
from report import emit  # noqa: E402  (benchmarks/, the script's own folder)

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="a registry name")
    parser.add_argument("--model-dir", default="~/.cache/gsm8k-slurm/models", help="converted models (paths.model_cache)")
    parser.add_argument("--dtype", default="int8")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--k", type=int, default=6, help="rows per question (debate.baselines.vote_k)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    chat = load_chat_model(load_registry()[args.model], Path(args.model_dir).expanduser(), args.dtype, torch.device(args.device))
    problems = load_problems(ROOT / "pipeline/assets/gsm8k/test.jsonl", limit=args.questions)
    rows = [[{"role": "user", "content": p.question}] for p in problems for _ in range(args.k)]
    seeds = [row_seed(0, i, "vote") for i in range(len(rows))]
    # One call first, untimed: the first call pays one-off costs (allocations, the int8 layers' first products).
    generate_chat(chat, rows[:1], max_new_tokens=2, engine="static", decoders=Decoders(DecoderOptions(reuse_kv=False)))
    copying = decode._sources
    results, texts = [], {}
    for way in ("copied", "each row"):
        decode._sources = copying if way == "copied" else (lambda prompts, matches: np.arange(len(prompts)))
        decoders = Decoders(DecoderOptions(reuse_kv=False))
        started = time.perf_counter()
        texts[way] = [c.text for c in generate_chat(chat, rows, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                                    seeds=seeds, engine="static", decoders=decoders)]
        seconds = time.perf_counter() - started
        last = decoders.of(chat.model).last
        results.append({"way": way, "rows": len(rows), "seconds": round(seconds, 2), "prefill_seconds": round(last.prefill.seconds, 2),
                        "prefill_tokens": last.prefill.tokens, "decode_seconds": round(last.decode.seconds, 2)})
        print(f"{way:>9}: {seconds:6.1f} s, prefill {last.prefill.seconds:6.1f} s ({last.prefill.tokens} prompt tokens), "
              f"decode {last.decode.seconds:6.1f} s", flush=True)
    decode._sources = copying
    same = texts["copied"] == texts["each row"]
    print(f"same texts: {same}")
    report = {"model": args.model, "dtype": args.dtype, "device": args.device, "questions": args.questions, "k": args.k,
              "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(), "same_texts": same, "results": results}
    emit(report, args.json)


if __name__ == "__main__":
    main()
