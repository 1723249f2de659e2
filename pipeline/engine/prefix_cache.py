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

# Rows are indexed by blocks of this many tokens; a shared prefix shorter than one block is not worth a lookup.
KEY_TOKENS = 16
_BLOCK_BYTES = KEY_TOKENS * np.dtype(np.int64).itemsize


@dataclass(frozen=True)
class Reuse:
    """A new row's start: ``tokens`` leading tokens of its prompt are in cache row ``row``, from column ``column``."""

    row: int
    column: int
    tokens: int


def _blocks(tokens: np.ndarray) -> bytes:
    """The tokens as bytes of one width, so that equal tokens give equal blocks whatever the array's dtype."""
    return np.ascontiguousarray(tokens, dtype=np.int64).tobytes()


class PrefixIndex:
    """The tokens held by each cache row after a call, and the lookup of a new prompt's longest match.

    The rows are kept as a trie of ``KEY_TOKENS``-token blocks: a node stands for a run of whole blocks and
    lists, in row order, the rows that start with it. Every prompt of a model starts with the same system
    prompt, so keying rows by their first tokens alone put every row under one key, and a lookup compared the
    prompt with each of them: 256 prompts against a 1,536-row vote took about a second of host time, the GPU
    idle. The trie walks down to the deepest node whose blocks the prompt starts with (the last token left
    out); every row outside that node shares fewer tokens than every row in it, and the node's rows differ
    from the prompt within the next block, so one comparison of that block with all of them at once (the rows
    kept as one padded array) finds the row a comparison with every row would find, ties going to the first
    row as before."""

    def __init__(self) -> None:
        self._columns: list[int] = []  # per cache row: the column of its first token
        self._children: dict[tuple[int, bytes], int] = {}  # (node, next block) -> child node; node 0 is the root
        self._under: list[list[int]] = [[]]  # per node: the rows that start with its blocks, in row order
        self._tokens = np.empty((0, 0), dtype=np.int64)  # row i's tokens, then -1 (no token) to the widest row's end

    def clear(self) -> None:
        self.remember([])

    def remember(self, rows: list[tuple[np.ndarray, int]]) -> None:
        """What the cache holds now: row i has keys and values for ``rows[i][0]`` from column ``rows[i][1]``."""
        self._columns = [column for _, column in rows]
        self._children = {}
        self._under = [[]]
        self._tokens = np.full((len(rows), max((len(t) for t, _ in rows), default=0)), -1, dtype=np.int64)
        for i, (tokens, _) in enumerate(rows):
            self._tokens[i, : len(tokens)] = tokens
            data, node = self._tokens[i, : len(tokens)].tobytes(), 0
            for end in range(_BLOCK_BYTES, len(data) + 1, _BLOCK_BYTES):
                key = (node, data[end - _BLOCK_BYTES : end])
                node = self._children.get(key, 0)
                if not node:
                    node = self._children[key] = len(self._under)
                    self._under.append([])
                self._under[node].append(i)

    def match(self, prompt: np.ndarray) -> Reuse | None:
        """The cache row sharing the longest prefix with ``prompt``, up to all but its last token (whose
        logits the prefill must compute); None when no row shares its first ``KEY_TOKENS``."""
        data, node, depth = _blocks(prompt), 0, 0
        for end in range(_BLOCK_BYTES, _BLOCK_BYTES * ((len(prompt) - 1) // KEY_TOKENS) + 1, _BLOCK_BYTES):
            child = self._children.get((node, data[end - _BLOCK_BYTES : end]))
            if child is None:
                break
            node, depth = child, depth + KEY_TOKENS
        if not node:
            return None
        rows = np.asarray(self._under[node])
        window = np.asarray(prompt[depth : depth + KEY_TOKENS], dtype=np.int64)
        held = self._tokens[rows, depth : depth + len(window)]
        if held.shape[1] < len(window):  # no row reaches the window's end: the missing tokens never match
            held = np.pad(held, ((0, 0), (0, len(window) - held.shape[1])), constant_values=-1)
        differ = held != window
        shared = np.minimum(depth + np.where(differ.any(1), differ.argmax(1), len(window)), len(prompt) - 1)
        best = int(shared.argmax())  # the first of the longest
        row = int(rows[best])
        return Reuse(row, self._columns[row], int(shared[best]))
