"""Seeded sampling that does not depend on the batch: every row draws from its own counter-based stream.

A row's noise for step s and token v is a hash of (row seed, s, v), so a question's sample is the same
whichever questions share its batch, whichever engine decodes it, and whether the shard was resumed.
The hash is plain integer arithmetic: it runs on any device, inside a CUDA graph, with no per-row
generator objects.

Two implementations give the same tokens (``tests/test_sampling.py``):

- PyTorch's tensor ops (``sampling_scores``): any device, and the scores transformers' ``generate``
  samples from (``SeededGumbelSampler``). They materialise the noise: a dozen int64 kernels over
  (rows, vocabulary), 38.6 ms a step at 1,536 rows of 151,936 entries on an H100;
- one Triton kernel (``_gumbel_argmax``) for the static decoder on a GPU: it reads the logits once,
  hashes, makes the noise and keeps each row's running best in registers.

Where float rounding decides a token, the kernel rounds as PyTorch's CUDA ops do:

- the uniform is ``((bits >> 9) + 0.5) * 2**-23``: 23 bits, so ``+ 0.5`` is exact in float32 and the uniform
  lies strictly inside (0, 1). (It once took 24 bits, ``(bits >> 8) + 0.5``, whose largest value rounds up to
  2**24: a uniform of 1.0, noise +inf, and a token drawn from the whole vocabulary won the step, about once in
  110 steps of a row over 151,936 entries. The vote's samples derailed into tokens of other scripts; see
  docs/results.md.);
- ``log`` is CUDA's ``logf`` (libdevice's ``__nv_logf``, what PyTorch's ``torch.log`` compiles to);
- ``logits / T``: PyTorch's CUDA kernel multiplies by ``1 / T`` computed in float32 on the host (a CPU
  scalar divisor); its CPU kernel divides. The kernel does whichever the logits' device does;
- the scaled logit and the noise are added in a separate rounding (no fused multiply-add), as separate
  kernels add them;
- ties go to the lowest token id, as ``torch.argmax`` breaks them.
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

from pipeline.engine.kernels import HAVE_TRITON

_MASK32 = 0xFFFFFFFF
# The 'lowbias32' hash's multipliers, and the step's (2**32 over the golden ratio).
_MIX1, _MIX2, _GOLDEN = 0x7FEB352D, 0x846CA68B, 0x9E3779B9
# Vocabulary entries a kernel program reads per loop step.
BLOCK_VOCAB = 2048
# Kernel programs per multiprocessor the vocabulary is split for: a small batch still fills the GPU.
PROGRAMS_PER_PROCESSOR = 8


def row_seed(*parts: object) -> int:
    """A stable 63-bit seed from any identifying parts (Python's ``hash`` is salted per process)."""
    return zlib.crc32(":".join(map(str, parts)).encode()) * 2654435761 % (2**63 - 1)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """The 'lowbias32' integer hash (a bijection on 32-bit values), on int64 tensors holding 32-bit values.
    A product may pass 2**63 and wrap; its low 32 bits, all that is kept, are a uint32 product's."""
    x = x ^ (x >> 16)
    x = (x * _MIX1) & _MASK32
    x = x ^ (x >> 15)
    x = (x * _MIX2) & _MASK32
    return x ^ (x >> 16)


def uniform_noise(seeds: torch.Tensor, step: torch.Tensor | int, vocab: int) -> torch.Tensor:
    """The uniforms under ``gumbel_noise``, (rows, vocab) float32 strictly inside (0, 1) (module docstring).

    ``seeds`` is an int64 tensor of non-negative 63-bit row seeds (``row_seed``); ``step`` the generation
    step (an int, or a 0-d tensor so that a captured graph can advance it).
    """
    step_bits = torch.as_tensor(step, dtype=torch.int64, device=seeds.device)
    key = _mix32(_mix32(seeds & _MASK32) ^ (seeds >> 32))
    key = _mix32(key ^ _mix32((step_bits * _GOLDEN + 1) & _MASK32))
    tokens = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    bits = _mix32(_mix32((key[:, None] + tokens) & _MASK32))
    return ((bits >> 9).to(torch.float32) + 0.5) * (1.0 / 2**23)


def gumbel_noise(seeds: torch.Tensor, step: torch.Tensor | int, vocab: int) -> torch.Tensor:
    """Standard Gumbel noise of shape (rows, vocab), float32, a pure function of (seed, step, token)."""
    return -torch.log(-torch.log(uniform_noise(seeds, step, vocab)))


def sampling_scores(scores: torch.Tensor, temperature: float, seeds: torch.Tensor, step: torch.Tensor | int) -> torch.Tensor:
    """logits / T + each row's Gumbel noise for this step: their argmax is an exact sample of
    softmax(logits / T). Both engines sample through this (the static decoder on a GPU through the kernel)."""
    return scores.float() / temperature + gumbel_noise(seeds, step, scores.shape[-1])


def sample_tokens(scores: torch.Tensor, temperature: float, seeds: torch.Tensor, step: torch.Tensor | int,
                  fused: bool = False) -> torch.Tensor:
    """The next token of every row: argmax (temperature 0) or a seeded sample; ``fused``: the sample in
    one Triton kernel (the caller checked that Triton runs on the scores' device), the same tokens."""
    if temperature <= 0:
        return scores.float().argmax(-1)
    if fused:
        return fused_sample(scores, temperature, seeds, step)
    return sampling_scores(scores, temperature, seeds, step).argmax(-1)


if HAVE_TRITON:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice

    _C_MIX1, _C_MIX2, _C_GOLDEN = tl.constexpr(_MIX1), tl.constexpr(_MIX2), tl.constexpr(_GOLDEN)

    @triton.jit
    def _mix32_u32(x):
        """``_mix32`` on uint32 values (products wrap at 2**32, as the int64 ones are masked)."""
        x = x ^ (x >> 16)
        x = x * tl.full(x.shape, _C_MIX1, tl.uint32)
        x = x ^ (x >> 15)
        x = x * tl.full(x.shape, _C_MIX2, tl.uint32)
        return x ^ (x >> 16)

    @triton.jit
    def _log(x, LIBDEVICE: tl.constexpr):
        """CUDA's logf when compiled; numpy's in the interpreter (which runs no libdevice)."""
        if LIBDEVICE:
            return libdevice.log(x)
        else:
            return tl.log(x)

    @triton.jit
    def _gumbel_argmax(Logits, stride_row, Seeds, Step, Best, Index, vocab, scale, split_size, BLOCK: tl.constexpr,
                       DIVIDE: tl.constexpr, LIBDEVICE: tl.constexpr):
        """One (row, split): the best ``logit * scale`` (or ``logit / scale``, ``DIVIDE``) + Gumbel noise over
        the split's ``split_size`` vocabulary entries, and its lowest token id. Each lane keeps its own best (lanes
        see increasing ids, so a strict ``>`` keeps the first); the lanes are merged once at the end."""
        row, split = tl.program_id(0), tl.program_id(1)
        seed = tl.load(Seeds + row)
        step = tl.load(Step).to(tl.uint32)
        key = _mix32_u32(_mix32_u32(seed.to(tl.uint32)) ^ (seed >> 32).to(tl.uint32))
        key = _mix32_u32(key ^ _mix32_u32(step * tl.full(step.shape, _C_GOLDEN, tl.uint32) + 1))
        lanes = tl.arange(0, BLOCK)
        best = tl.full([BLOCK], float("-inf"), tl.float32)
        index = tl.full([BLOCK], 2147483647, tl.int32)
        lo = split * split_size
        hi = tl.minimum(lo + split_size, vocab)
        for start in range(lo, hi, BLOCK):
            token = start + lanes
            ok = token < hi
            logit = tl.load(Logits + row.to(tl.int64) * stride_row + token, mask=ok, other=0.0).to(tl.float32)
            bits = _mix32_u32(_mix32_u32(key + token.to(tl.uint32)))
            uniform = ((bits >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)
            noise = -_log(-_log(uniform, LIBDEVICE), LIBDEVICE)
            if DIVIDE:
                scaled = tl.math.div_rn(logit, scale)
            else:
                scaled = logit * scale
            score = tl.where(ok, scaled + noise, float("-inf"))
            better = score > best
            best = tl.where(better, score, best)
            index = tl.where(better, token, index)
        top = tl.max(best, 0)
        first = tl.min(tl.where(best == top, index, 2147483647), 0)
        # A split whose scores are all -inf (logits of -inf) names its first id, as argmax names a row's.
        tl.store(Best + row * tl.num_programs(1) + split, top)
        tl.store(Index + row * tl.num_programs(1) + split, tl.where(first == 2147483647, lo, first))


@lru_cache(maxsize=None)
def _processors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def sample_plan(rows: int, vocab: int, processors: int) -> int:
    """Vocabulary entries per program: the whole row, or a share (a multiple of ``BLOCK_VOCAB``) small
    enough that rows x splits gives every multiprocessor ``PROGRAMS_PER_PROCESSOR`` programs."""
    blocks = -(-vocab // BLOCK_VOCAB)
    splits = max(1, min(blocks, -(-PROGRAMS_PER_PROCESSOR * processors // rows)))
    return -(-blocks // splits) * BLOCK_VOCAB


def fused_partials(scores: torch.Tensor, temperature: float, seeds: torch.Tensor, step: torch.Tensor | int,
                   split: int | None = None, block: int = BLOCK_VOCAB) -> tuple[torch.Tensor, torch.Tensor]:
    """Each (row, split)'s best score and its token id, ``[rows, splits]`` each: the kernel's output
    before the splits are merged (tests read the scores). ``split``: entries per program (default
    ``sample_plan``'s), read ``block`` at a time (powers of two; tests make them small)."""
    rows, vocab = scores.shape
    if scores.stride(1) != 1:
        scores = scores.contiguous()
    split = split or sample_plan(rows, vocab, _processors(scores.device))
    splits = -(-vocab // split)
    step = torch.as_tensor(step, dtype=torch.int64, device=scores.device)
    best = torch.empty((rows, splits), dtype=torch.float32, device=scores.device)
    index = torch.empty((rows, splits), dtype=torch.int32, device=scores.device)
    divide = scores.device.type != "cuda"
    # CUDA's kernel multiplies by the float32 reciprocal of the float32 temperature, made on the host.
    scale = float(np.float32(temperature)) if divide else float(np.float32(1.0) / np.float32(temperature))
    interpreted = type(_gumbel_argmax).__name__ == "InterpretedFunction"  # TRITON_INTERPRET=1: no libdevice
    _gumbel_argmax[(rows, splits)](scores, scores.stride(0), seeds, step, best, index, vocab, scale, split, BLOCK=min(block, split),
                                   DIVIDE=divide, LIBDEVICE=not interpreted, enable_fp_fusion=False)
    return best, index


def fused_sample(scores: torch.Tensor, temperature: float, seeds: torch.Tensor, step: torch.Tensor | int,
                 split: int | None = None, block: int = BLOCK_VOCAB) -> torch.Tensor:
    """``sampling_scores(...).argmax(-1)`` in one pass over the logits: int64 tokens, ``[rows]``."""
    return merge_partials(*fused_partials(scores, temperature, seeds, step, split, block))


def merge_partials(best: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Each row's token from its splits' bests: the first split holding the row's best score, so the lowest id."""
    return index.gather(1, best.argmax(1, keepdim=True)).squeeze(1).long()


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
