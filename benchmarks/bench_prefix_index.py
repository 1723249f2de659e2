"""Benchmark: the host time of turn-to-turn KV reuse's lookup (``pipeline.engine.prefix_cache.PrefixIndex``), at
the shapes of a default run's group of 256 questions. No GPU and no model: the index sees only token ids.

Before each generation the static decoder remembers what its cache rows hold (``remember``) and looks up, for every
new prompt, the row sharing its longest prefix (``match``); the GPU waits meanwhile. Rows here are built as a run's:
one system prompt shared by every row, a question (``--question-min`` to ``--question-max`` tokens) and a reply (up
to ``--reply`` tokens) after it. The cases are the calls of a group where the lookup is largest:

- **vote after solo**: the 256 rows of a model's solo turn remembered, the group's vote of 6 looked up (1,536
  prompts, six per question, each one's own question in the cache);
- **turn after vote**: the vote's 1,536 rows remembered, the debate's first turn looked up (256 prompts);
- **vote after another group**: 40 rows of other questions remembered (a small last turn of the group before), a
  vote looked up: no prompt shares more than the system prompt;
- **six batches**: the vote in batches of 256 (``debate.batch_size``), each batch looked up against the last.

The script uses only the index's interface, so the same command times any version of it (``git stash`` between
two runs for a before and after):

    python benchmarks/bench_prefix_index.py --json benchmarks/results/prefix-index-cpu.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.engine.prefix_cache import PrefixIndex  # noqa: E402
from report import emit  # noqa: E402  (benchmarks/, the script's own folder)


def _rows(prompts: list[np.ndarray], rng: np.random.Generator, reply: int) -> list[tuple[np.ndarray, int]]:
    """What a call leaves in the cache: each prompt and the reply generated after it."""
    return [(np.concatenate([p, rng.integers(0, 151_000, rng.integers(1, reply))]), 0) for p in prompts]


def _time(index: PrefixIndex, remembered: list[tuple[np.ndarray, int]], prompts: list[np.ndarray]) -> dict[str, float]:
    started = time.perf_counter()
    index.remember(remembered)
    stored = time.perf_counter()
    found = sum(index.match(p) is not None for p in prompts)
    return {"remember_s": round(stored - started, 4), "match_s": round(time.perf_counter() - stored, 4),
            "rows": len(remembered), "prompts": len(prompts), "found": found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=256, help="a group (debate.batch_size)")
    parser.add_argument("--samples", type=int, default=6, help="a vote's samples a question (2 x debate.max_rounds)")
    parser.add_argument("--system", type=int, default=40, help="tokens every prompt starts with")
    parser.add_argument("--question-min", type=int, default=80)
    parser.add_argument("--question-max", type=int, default=280)
    parser.add_argument("--reply", type=int, default=512, help="new tokens at most (debate.max_new_tokens)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    system = rng.integers(0, 151_000, args.system)
    prompts = [np.concatenate([system, rng.integers(0, 151_000, rng.integers(args.question_min, args.question_max))])
               for _ in range(args.questions)]
    vote = [p for p in prompts for _ in range(args.samples)]
    others = [np.concatenate([system, rng.integers(0, 151_000, args.question_max)]) for _ in range(40)]
    index = PrefixIndex()
    cases = {
        "vote after solo": _time(index, _rows(prompts, rng, args.reply), vote),
        "turn after vote": _time(index, _rows(vote, rng, args.reply), prompts),
        "vote after another group": _time(index, _rows(others, rng, args.reply), vote),
    }
    batch, last, six = len(prompts), _rows(prompts, rng, args.reply), []
    for start in range(0, len(vote), batch):
        six.append(_time(index, last, vote[start : start + batch]))
        last = _rows(vote[start : start + batch], rng, args.reply)
    cases["six batches"] = {key: round(sum(c[key] for c in six), 4) for key in six[0]}
    print(f"| case | rows remembered | prompts | found | remember, s | match, s |\n|---|---|---|---|---|---|")
    for name, c in cases.items():
        print(f"| {name} | {c['rows']:,} | {c['prompts']:,} | {c['found']:,} | {c['remember_s']:.3f} | {c['match_s']:.3f} |")
    emit({"args": {k: v for k, v in vars(args).items() if k != "json"}, "cases": cases}, args.json)


if __name__ == "__main__":
    main()
