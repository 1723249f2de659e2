"""One model alone on the first N test questions with the debate's solve prompt: accuracy, tokens and speed.

Used to choose the prompts and the precision of the default pair (docs/results.md, "Choosing the prompts"):

    python benchmarks/probe_solo.py qwen2.5-coder-1.5b-instruct --questions 30 --tokens 384 --dtype int8

It runs the suite's own path (registry, GGUF cache, loader, ``generate_chat`` with the static decoder), greedy,
one batch of all the questions, and prints each answer's tail with its verdict. ``--caps 320``: also what a
lower token cap would have scored. Greedy rows are batch-invariant, so a run capped at N tokens writes the
first N tokens of this run; the capped answer is read off those (re-tokenized text cut at N tokens).
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.answers import read_answer, same_answer  # noqa: E402
from pipeline.config import project_path  # noqa: E402
from pipeline.stages import load_config  # noqa: E402
from pipeline.data import load_problems  # noqa: E402
from pipeline.engine.generation import generate_chat  # noqa: E402
from pipeline.models.loading import load_chat_model  # noqa: E402
from pipeline.models.registry import load_registry  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a registered model name")
    parser.add_argument("--questions", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=320)
    parser.add_argument("--dtype", default="int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--caps", type=int, nargs="*", default=[], help="lower token caps to score from the same run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config([])
    chat = load_chat_model(load_registry()[args.model], project_path(cfg.paths.model_cache), args.dtype, torch.device("cpu"))
    problems = load_problems(project_path(cfg.data.path) / "test.jsonl", args.questions)
    convs = [[{"role": "user", "content": cfg.debate.prompts.solve.format(question=p.question)}] for p in problems]
    started = time.perf_counter()
    outs = generate_chat(chat, convs, max_new_tokens=args.tokens)
    seconds = time.perf_counter() - started
    right = 0
    for p, out in zip(problems, outs):
        answer = read_answer(out.text, out.stopped).strict
        ok = same_answer(answer, p.gold)
        right += ok
        print(f"--- {p.index} gold {p.gold} answer {answer} {'right' if ok else 'wrong'}, {out.tokens} tokens, stopped {out.stopped}")
        print(out.text[-300:])
    tokens = sum(o.tokens for o in outs)
    print(f"{args.model} ({args.dtype}): {right} / {len(problems)} right; {tokens} new tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s")
    for cap in args.caps:
        capped = [chat.tokenizer.decode(chat.tokenizer(o.text, add_special_tokens=False)["input_ids"][:cap]) for o in outs]
        right_at = sum(same_answer(read_answer(t, o.stopped and o.tokens <= cap).strict, p.gold)
                       for t, o, p in zip(capped, outs, problems))
        print(f"  capped at {cap} tokens: {right_at} / {len(problems)} right ({sum(o.tokens > cap for o in outs)} replies longer than {cap})")


if __name__ == "__main__":
    main()
