"""Seeded sampling that does not depend on the batch: every row draws from its own counter-based stream.

A row's noise for step s and token v is a hash of (row seed, s, v), so a question's sample is the same
whichever questions share its batch, whichever engine decodes it, and whether the shard was resumed.
The hash is plain integer tensor arithmetic: it runs on any device, inside a CUDA graph, with no
per-row generator objects.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import torch
from transformers import LogitsProcessor

_MASK32 = 0xFFFFFFFF


def row_seed(*parts: object) -> int:
    """A stable 63-bit seed from any identifying parts (Python's ``hash`` is salted per process)."""
    return zlib.crc32(":".join(map(str, parts)).encode()) * 2654435761 % (2**63 - 1)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """The 'lowbias32' integer hash (a bijection on 32-bit values), on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def gumbel_noise(seeds: torch.Tensor, step: torch.Tensor | int, vocab: int) -> torch.Tensor:
    """Standard Gumbel noise of shape (rows, vocab), float32, a pure function of (seed, step, token).

    ``seeds`` is an int64 tensor of 63-bit row seeds; ``step`` the generation step (an int, or a 0-d
    tensor so that a captured graph can advance it).
    """
    step_bits = torch.as_tensor(step, dtype=torch.int64, device=seeds.device)
    key = _mix32(_mix32(seeds & _MASK32) ^ (seeds >> 32))
    key = _mix32(key ^ _mix32((step_bits * 0x9E3779B9 + 1) & _MASK32))
    tokens = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    bits = _mix32(_mix32((key[:, None] + tokens) & _MASK32))
    uniform = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / 2**24)  # in (0, 1), never 0 or 1
    return -torch.log(-torch.log(uniform))


def sampling_scores(scores: torch.Tensor, temperature: float, seeds: torch.Tensor, step: torch.Tensor | int) -> torch.Tensor:
    """logits / T + each row's Gumbel noise for this step: their argmax is an exact sample of
    softmax(logits / T). Both engines sample through this."""
    return scores.float() / temperature + gumbel_noise(seeds, step, scores.shape[-1])


def sample_tokens(scores: torch.Tensor, temperature: float, seeds: torch.Tensor, step: torch.Tensor | int) -> torch.Tensor:
    """The next token of every row: argmax (temperature 0) or a seeded sample."""
    return (sampling_scores(scores, temperature, seeds, step) if temperature > 0 else scores.float()).argmax(-1)


class SeededGumbelSampler(LogitsProcessor):
    """The same per-row sampling inside transformers' ``generate``: greedy decoding of the returned scores
    samples."""

    def __init__(self, seeds: Sequence[int], temperature: float) -> None:
        self.seeds = list(seeds)
        self.temperature = temperature
        self.step = 0
        self._seeds: torch.Tensor | None = None  # on the scores' device, made at the first step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._seeds is None:
            self._seeds = torch.tensor(self.seeds, dtype=torch.int64, device=scores.device)
        out = sampling_scores(scores, self.temperature, self._seeds, self.step)
        self.step += 1
        return out
