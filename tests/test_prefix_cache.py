"""The prefix index finds, for a new prompt, the cache row sharing its longest prefix, and never all of
the prompt (its last token must be prefilled for the first new token's logits)."""

from __future__ import annotations

import numpy as np

from pipeline.engine.decode import _chunks
from pipeline.engine.prefix_cache import KEY_TOKENS, PrefixIndex, Reuse


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """The number of leading tokens ``a`` and ``b`` share: the brute-force reference's comparison."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


def _tokens(*parts: range) -> np.ndarray:
    return np.concatenate([np.arange(p.start, p.stop) for p in parts]).astype(np.int64)


def test_the_longest_shared_prefix_wins() -> None:
    index = PrefixIndex()
    question = range(100, 140)
    index.remember([(_tokens(question, range(500, 520)), 7), (_tokens(question, range(500, 510), range(900, 950)), 3), (_tokens(range(0, 40)), 0)])
    assert index.match(_tokens(question, range(500, 530))) == Reuse(row=0, column=7, tokens=60)
    assert index.match(_tokens(question, range(500, 510), range(900, 960))) == Reuse(row=1, column=3, tokens=100)


def test_a_prompt_never_reuses_its_last_token() -> None:
    index = PrefixIndex()
    prompt = _tokens(range(0, 50))
    index.remember([(prompt, 0)])
    assert index.match(prompt) == Reuse(row=0, column=0, tokens=49)


def test_short_or_foreign_prompts_are_prefilled_whole() -> None:
    index = PrefixIndex()
    index.remember([(_tokens(range(0, 50)), 0)])
    assert index.match(_tokens(range(0, KEY_TOKENS - 1))) is None
    assert index.match(_tokens(range(1, 60))) is None
    index.clear()
    assert index.match(_tokens(range(0, 60))) is None


def _longest_by_comparing_every_row(rows: list[tuple[np.ndarray, int]], prompt: np.ndarray) -> Reuse | None:
    """What the index must find, by brute force: of the rows sharing the prompt's first KEY_TOKENS, the first
    with the longest shared prefix, up to all but the prompt's last token, if that is KEY_TOKENS or more."""
    best = None
    for i, (tokens, column) in enumerate(rows):
        shared = min(common_prefix(tokens, prompt), len(prompt) - 1)
        if shared >= KEY_TOKENS and (best is None or shared > best.tokens):
            best = Reuse(i, column, shared)
    return best


def test_the_trie_finds_the_row_a_comparison_with_every_row_finds() -> None:
    """Rows as a run makes them (one system prompt, questions, each question's samples, replies), prompts that
    extend them, cut them at and around block boundaries, or share nothing past the system prompt: the same
    row and length as comparing with every row, ties to the first row."""
    rng = np.random.default_rng(0)
    system = rng.integers(0, 50, 2 * KEY_TOKENS + 3)
    questions = [np.concatenate([system, rng.integers(0, 50, rng.integers(0, 3 * KEY_TOKENS))]) for _ in range(12)]
    rows = []
    for q in questions:
        for _ in range(3):  # a question's samples: replies that often share their first tokens (a small vocabulary)
            rows.append((np.concatenate([q, rng.integers(0, 3, rng.integers(0, 2 * KEY_TOKENS))]), int(rng.integers(0, 9))))
    rows.append((system[: KEY_TOKENS - 2], 0))  # a row shorter than a block
    index = PrefixIndex()
    index.remember(rows)
    prompts = [system[:n] for n in range(0, len(system) + 1)]
    for tokens, _ in rows:
        for cut in {len(tokens) - 1, len(tokens), len(tokens) + 1, KEY_TOKENS, KEY_TOKENS + 1, 2 * KEY_TOKENS, 2 * KEY_TOKENS + 1}:
            prompts.append(np.concatenate([tokens, rng.integers(0, 3, 20)])[:cut])
        prompts.append(np.concatenate([tokens[: len(tokens) // 2], rng.integers(0, 50, 30)]))
    for prompt in prompts:
        assert index.match(prompt) == _longest_by_comparing_every_row(rows, prompt), len(prompt)
        assert index.match(prompt.astype(np.int32)) == index.match(prompt)  # tokens are tokens, whatever the dtype
    assert sum(index.match(p) is not None for p in prompts) > len(prompts) // 2


def test_common_prefix() -> None:
    assert common_prefix(np.array([1, 2, 3]), np.array([1, 2, 4, 5])) == 2
    assert common_prefix(np.array([1, 2]), np.array([1, 2, 3])) == 2
    assert common_prefix(np.array([9]), np.array([1])) == 0


def test_prefill_chunks_stay_within_the_token_budget() -> None:
    widths = np.array([10, 10, 30, 5, 100, 7])
    chunks = _chunks(widths, 40)
    assert [(c.start, c.stop) for c in chunks] == [(0, 2), (2, 3), (3, 4), (4, 5), (5, 6)]
    for c in chunks:
        assert (c.stop - c.start) * widths[c].max() <= 40 or c.stop - c.start == 1
    assert [(c.start, c.stop) for c in _chunks(np.array([4, 4, 4]), 100)] == [(0, 3)]
