"""Which rows of a decoder's KV cache a new prompt can start from: turn-to-turn reuse.

A debate turn's conversation is the model's previous one plus its own reply and the other model's new
message, so most of its tokens already have keys and values in the cache of the model's last call. This
index remembers, for every cache row, the tokens whose keys and values it holds (the prompt, then the
generated tokens the decoder fed back), and finds for a new prompt the row sharing its longest prefix.
Matching is by tokens, never by which debate a row belongs to: a reply that re-tokenises differently
in the next prompt simply ends the shared prefix there, and a row whose prefix nobody shares is
prefilled whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Rows are looked up by their first tokens; a shared prefix shorter than this is not worth a lookup.
KEY_TOKENS = 16


@dataclass(frozen=True)
class Reuse:
    """A new row's start: ``tokens`` leading tokens of its prompt are in cache row ``row``, from column ``column``."""

    row: int
    column: int
    tokens: int


def _key(tokens: np.ndarray) -> bytes | None:
    return tokens[:KEY_TOKENS].tobytes() if len(tokens) >= KEY_TOKENS else None


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """The number of leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class PrefixIndex:
    """The tokens held by each cache row after a call, and the lookup of a new prompt's longest match."""

    def __init__(self) -> None:
        self.rows: list[tuple[np.ndarray, int]] = []  # per cache row: its tokens, the column of the first
        self._by_key: dict[bytes, list[int]] = {}

    def clear(self) -> None:
        self.rows = []
        self._by_key = {}

    def remember(self, rows: list[tuple[np.ndarray, int]]) -> None:
        """What the cache holds now: row i has keys and values for ``rows[i][0]`` from column ``rows[i][1]``."""
        self.rows = rows
        self._by_key = {}
        for i, (tokens, _) in enumerate(rows):
            key = _key(tokens)
            if key is not None:
                self._by_key.setdefault(key, []).append(i)

    def match(self, prompt: np.ndarray) -> Reuse | None:
        """The cache row sharing the longest prefix with ``prompt``, up to all but its last token (whose
        logits the prefill must compute); None when no row shares the first ``KEY_TOKENS``."""
        key = _key(prompt)
        best: Reuse | None = None
        for i in self._by_key.get(key, []) if key is not None else []:
            tokens, column = self.rows[i]
            shared = min(common_prefix(tokens, prompt), len(prompt) - 1)
            if shared >= KEY_TOKENS and (best is None or shared > best.tokens):
                best = Reuse(i, column, shared)
        return best
