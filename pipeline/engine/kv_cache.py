"""The static decoder's KV cache: one model's keys and values, allocated once and grown only when a call needs
more, and the per-row buffers a decode step reads and writes in place.

A ``[k/v, rows, kv_heads, columns, head_dim]`` tensor per layer; rows are left-padded into shared columns, so
a step writes one column for every row. Columns come in multiples of ``COLUMN_BUCKET`` (the CUDA graphs'
buckets). Turn to turn, reused prefixes move to their new rows and columns in place; a bigger need is met a
layer at a time, each old layer freed once its prefixes are copied out, so two caches never coexist. How
much of the device a cache may take is its owner's question (``pipeline.engine.memory``), not the cache's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.engine.forward import Forward

# Graph buckets: the key/value columns a step reads are rounded up to this many, so a turn replays a
# handful of graphs instead of one per length.
COLUMN_BUCKET = 64
# The row buffers a decode step writes (the rest it only reads): what a graph capture must leave as it found them.
_WRITTEN = ("token", "position", "done", "out", "column", "step")


def round_columns(n: int) -> int:
    return -(-n // COLUMN_BUCKET) * COLUMN_BUCKET


def _move(dst: torch.Tensor, src: torch.Tensor, moves: tuple[torch.Tensor, ...]) -> None:
    """Copies one layer's reused prefixes, keys then values (half the scratch memory of both at once):
    ``moves`` = (new rows, new columns, old rows, old columns). The old entries are gathered before any is
    written, so ``dst`` may be ``src`` with rows trading places."""
    for kv in range(2):
        dst[kv][moves[0], :, moves[1]] = src[kv][moves[2], :, moves[3]]


@dataclass
class RowState:
    """The per-row buffers a decode step reads and writes in place (a captured graph holds their addresses)."""

    token: torch.Tensor  # [rows] the last token of each row
    position: torch.Tensor  # [rows] its rotary position
    start: torch.Tensor  # [rows] first non-padding column
    done: torch.Tensor  # [rows] bool, the row has written a stop token
    out: torch.Tensor  # [rows, max_new] generated tokens, padding after a stop
    seeds: torch.Tensor  # [rows] sampling seeds
    column: torch.Tensor  # [] the column this step writes
    step: torch.Tensor  # [] the index of the token this step produces
    stop: torch.Tensor  # the model's stop ids
    pad: int

    def permute(self, order: torch.Tensor) -> None:
        for name in ("token", "position", "start", "done", "out", "seeds"):
            buf = getattr(self, name)
            buf[: len(order)] = buf[order]

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Copies of the buffers a step writes, for ``restore``."""
        return {name: getattr(self, name).clone() for name in _WRITTEN}

    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        for name, value in saved.items():
            getattr(self, name).copy_(value)


class KVCache:
    """One model's cache and row buffers; empty until the first call, and after ``release``."""

    def __init__(self, forward: Forward, device: torch.device) -> None:
        self.forward = forward
        self.device = device
        self.layers: list[torch.Tensor] | None = None  # per layer: [k/v, rows, kv_heads, columns, head_dim]
        self.state: RowState | None = None

    def bytes_per_token(self) -> int:
        """Cache bytes for one token of one row (keys and values of every layer)."""
        f = self.forward
        return 2 * len(f.layers) * f.kv_heads * f.head_dim * torch.finfo(f.dtype).bits // 8

    def held_bytes(self) -> int:
        """Bytes of this cache now (what releasing it would free)."""
        return sum(layer.numel() * layer.element_size() for layer in self.layers) if self.layers is not None else 0

    def release(self) -> None:
        self.layers = self.state = None

    def checksum(self) -> str:
        """Every layer's keys and values summed as integers (their bits, not their values), in hex: equal in two
        runs when the caches are, but for a collision. Reads the whole cache: for debug lines only."""
        if self.layers is None:
            return "none"
        # Summed on the device and read once (int64 wraps modulo 2**64, which keeps the residue modulo 2**48).
        total = sum(layer.view(torch.int16).sum(dtype=torch.int64) * (i + 1) for i, layer in enumerate(self.layers))
        return format(int(total) % 2**48, "012x")

    def holds(self, rows: int, columns: int, max_new: int) -> bool:
        """Whether the cache (and its row buffers) already has room for ``rows`` x ``columns`` (rounded up to
        a bucket) and ``max_new`` tokens a row."""
        return (self.state is not None and self.layers[0].shape[1] >= rows and self.layers[0].shape[3] >= round_columns(columns)
                and self.state.out.shape[1] >= max_new)

    def ensure(self, rows: int, columns: int, max_new: int, stop_ids: list[int], pad: int,
               moves: tuple[torch.Tensor, ...] | None) -> None:
        """A cache of at least ``rows`` x ``columns`` with the reused prefixes moved into their new rows and
        columns: ``moves`` = (new rows, new columns, old rows, old columns), one entry per token. Whoever
        holds addresses into the cache (captured graphs) must drop them first when it does not ``hold`` that."""
        if self.holds(rows, columns, max_new):
            if moves is not None:
                self.move(moves)
            return
        columns = round_columns(columns)
        old = self.layers if moves is not None else None
        self.release()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.layers = []
        f = self.forward
        for i in range(len(f.layers)):
            layer = torch.zeros((2, rows, f.kv_heads, columns, f.head_dim), dtype=f.dtype, device=self.device)
            if old is not None:
                _move(layer, old[i], moves)
                old[i] = None
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            self.layers.append(layer)
        zeros = lambda *s, dtype=torch.long: torch.zeros(s, dtype=dtype, device=self.device)  # noqa: E731
        self.state = RowState(zeros(rows), zeros(rows), zeros(rows), zeros(rows, dtype=torch.bool), zeros(rows, max_new),
                              zeros(rows), zeros(), zeros(), torch.tensor(stop_ids, dtype=torch.long, device=self.device), pad)

    def move(self, moves: tuple[torch.Tensor, ...]) -> None:
        """Copies keys and values within the cache: ``moves`` = (new rows, new columns, old rows, old columns),
        one entry per token (a reused prefix to its new row; a prompt prefilled once to its other rows)."""
        for layer in self.layers:
            _move(layer, layer, moves)

    def compact(self, order: torch.Tensor, rows: int, columns: int) -> None:
        """Puts the first ``rows`` rows in ``order``, with their first ``columns`` cache columns and row state."""
        for layer in self.layers:  # finished rows keep their keys and values too: the next turn starts from them
            for kv in layer:
                kv[:rows, :, :columns] = kv[:rows, :, :columns].index_select(0, order)
        self.state.permute(order)
