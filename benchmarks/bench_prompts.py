"""Benchmark: the host time of a call's prompts before its first batch reaches the decoder (``generate_chat``):
the chat template, tokenizing, and each batch's padded ids, for a group's vote (256 questions x 6 samples in batches
of 256, as a default run makes it). No model and no GPU: the tokenizer alone.

Two ways to make the prompts' ids, timed side by side, the ids compared: **every row** (each row's conversation
rendered and tokenized, as calls did until the eleventh session) and **distinct** (each distinct conversation once,
``pipeline.engine.generation.chat_prompts``: a vote's samples of a question share one). Then two ways to make the
batches, their tensors compared: **tokenizer** (the batch's texts tokenized again with the tokenizer's own left
padding, as calls did until the tenth session) and **ids** (each batch padded from the ids the call tokenized once,
``pipeline.engine.generation.left_padded``). ``--tokenizer`` is a model folder
(a converted model under ``paths.model_cache``, e.g. ``~/.cache/gsm8k-slurm/models/qwen2.5-coder-1.5b-instruct``);
the default is the tiny Qwen2 the tests use, whose tokenizer is not the real one's size.

    python benchmarks/bench_prompts.py --tokenizer ~/.cache/gsm8k-slurm/models/qwen2.5-coder-1.5b-instruct
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.data import load_problems  # noqa: E402
from pipeline.debate.engine import Debate, conversation  # noqa: E402
from pipeline.debate.settings import DebateSettings  # noqa: E402
from pipeline.engine.generation import chat_prompts, left_padded  # noqa: E402
from report import emit  # noqa: E402  (benchmarks/, the script's own folder)

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "pipeline/assets/tiny/tiny-qwen2")
    parser.add_argument("--questions", type=int, default=256)
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--batch", type=int, default=256, help="rows of a batch (debate.batch_size)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    tokenizer.padding_side = "left"
    settings = DebateSettings()
    problems = load_problems(ROOT / "pipeline/assets/gsm8k/test.jsonl", args.questions)
    convs = [conversation("a", Debate(p), settings) for p in problems for _ in range(args.samples)]

    started = time.perf_counter()
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in convs]
    templated = time.perf_counter()
    prompts = tokenizer(texts, add_special_tokens=False)["input_ids"]
    tokenized = time.perf_counter()
    distinct = chat_prompts(tokenizer, convs)
    distinct_done = time.perf_counter()
    order = sorted(range(len(texts)), key=lambda i: len(prompts[i]))
    chunks = [order[start : start + args.batch] for start in range(0, len(order), args.batch)]
    t0 = time.perf_counter()
    again = [tokenizer([texts[i] for i in chunk], add_special_tokens=False, padding=True, return_tensors="pt") for chunk in chunks]
    t1 = time.perf_counter()
    padded = [left_padded([prompts[i] for i in chunk], tokenizer.pad_token_id, "cpu") for chunk in chunks]
    t2 = time.perf_counter()
    same = all(torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["attention_mask"], b["attention_mask"])
               for a, b in zip(again, padded))
    report = {"tokenizer": str(args.tokenizer), "rows": len(texts), "batches": len(chunks), "chat_template_s": round(templated - started, 4),
              "tokenize_once_s": round(tokenized - templated, 4), "batches_by_tokenizer_s": round(t1 - t0, 4),
              "batches_from_ids_s": round(t2 - t1, 4), "same_tensors": same,
              "distinct_conversations": len({tuple(p) for p in distinct}), "distinct_template_and_tokenize_s": round(distinct_done - tokenized, 4),
              "same_ids": distinct == prompts}
    print(f"{len(texts):,} prompts, {len(chunks)} batches: chat template {report['chat_template_s']:.3f} s, tokenizing once "
          f"{report['tokenize_once_s']:.3f} s; each distinct conversation once ({report['distinct_conversations']:,}): "
          f"{report['distinct_template_and_tokenize_s']:.3f} s for both, the same ids: {report['same_ids']}; the batches "
          f"tokenized again {report['batches_by_tokenizer_s']:.3f} s, padded from the ids {report['batches_from_ids_s']:.3f} s; "
          f"the same tensors: {same}")
    emit(report, args.json)


if __name__ == "__main__":
    main()
