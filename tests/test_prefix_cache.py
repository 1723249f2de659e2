"""The prefix index finds, for a new prompt, the cache row sharing its longest prefix, and never all of
the prompt (its last token must be prefilled for the first new token's logits)."""

from __future__ import annotations

import numpy as np

from pipeline.engine.decode import _chunks
from pipeline.engine.prefix_cache import KEY_TOKENS, PrefixIndex, Reuse, common_prefix


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
