"""The seeded sampler's tokens are pinned: the PyTorch path and the fused Triton kernel give, bit for bit, the
tokens of the implementation every earlier run sampled with (``_reference_tokens``, a copy kept here), over
rows, seeds, steps, temperatures, vocabulary sizes and splits of the vocabulary. On a CPU the kernel runs in
Triton's interpreter (a subprocess: the interpreter is chosen when a kernel is defined); on a GPU, compiled.

Beside the tokens, each program's best score is compared bit for bit: with PyTorch's own ``log`` on a GPU,
and in the interpreter (whose ``log`` is numpy's, a last-bit different function) with the reference's
arithmetic around numpy's ``log``, so that the order and rounding of every other operation is pinned too."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline.engine import kernels, sampling
from pipeline.engine.sampling import row_seed
from tests.conftest import run_interpreted

needs_triton = pytest.mark.skipif(not kernels.HAVE_TRITON, reason="triton is not installed")
GPU = torch.cuda.is_available() and kernels.usable(torch.device("cuda")) is None

# (seed parts, step, token) where the hash takes its top value: a uniform of 1.0 and noise +inf before the uniform
# took 23 bits (that token won whatever its logit); now the largest finite noise.
TOP_HASH = [(("inf", 2957), 5, 676), (("inf", 4), 6, 1777), (("inf", 3296), 8, 155)]
# (seed parts, tokens j < k) with the same noise at step 1: given the same logit, j must win. In a vocabulary read
# in splits of 1024 and blocks of 512 (or whole, in blocks of 2048): the same lane of one split, later block
# (538); the same lane (blocks of 2048), other splits (8798); other lanes of one split (1); other splits (1).
TIED = [(("tie", 538), 2252, 2764), (("tie", 8798), 6, 2054), (("tie", 1), 1443, 1609), (("tie", 1), 584, 1973)]


def _reference_tokens(scores: torch.Tensor, temperature: float, seeds: torch.Tensor, step: torch.Tensor | int) -> torch.Tensor:
    """The sampler as it was before the fused kernel, verbatim but for the uniform's 23 bits (module docstring of
    pipeline/engine/sampling.py)."""
    mask = 0xFFFFFFFF

    def mix32(x: torch.Tensor) -> torch.Tensor:
        x = x ^ (x >> 16)
        x = (x * 0x7FEB352D) & mask
        x = x ^ (x >> 15)
        x = (x * 0x846CA68B) & mask
        return x ^ (x >> 16)

    step_bits = torch.as_tensor(step, dtype=torch.int64, device=seeds.device)
    key = mix32(mix32(seeds & mask) ^ (seeds >> 32))
    key = mix32(key ^ mix32((step_bits * 0x9E3779B9 + 1) & mask))
    tokens = torch.arange(scores.shape[-1], device=seeds.device, dtype=torch.int64)
    bits = mix32(mix32((key[:, None] + tokens) & mask))
    uniform = ((bits >> 9).to(torch.float32) + 0.5) * (1.0 / 2**23)
    noise = -torch.log(-torch.log(uniform))
    return (scores.float() / temperature + noise).argmax(-1)


def _cases(device: str) -> list[tuple[str, torch.Tensor, float, torch.Tensor, torch.Tensor | int]]:
    """(name, logits, temperature, seeds, step): bf16 and float32 logits; rows whose logits are all equal (the
    noise alone decides), one very likely token, wide spreads; seeds 0, the largest and ordinary ones; steps
    0, later ones, one past 2**32 (it wraps) and a device tensor as a captured graph passes it; vocabularies
    of one entry, less than a block, not a multiple of a block."""
    torch.manual_seed(0)
    cases = []
    steps: list[torch.Tensor | int] = [0, 3, 511, 2**32 + 3, torch.tensor(9)]
    for n, (vocab, temperature, dtype) in enumerate([(1, 0.7, torch.bfloat16), (7, 1.0, torch.float32), (1000, 0.7, torch.bfloat16),
                                                     (2048 + 3, 0.3, torch.bfloat16), (3000, 1.7, torch.float32), (4096, 0.7, torch.bfloat16)]):
        rows = 8
        logits = torch.randn(rows, vocab) * (1 + n)
        logits[0] = 0.0
        logits[1, vocab // 2] += 30.0
        seeds = torch.tensor([0, 2**63 - 2] + [row_seed("test", n, r) for r in range(rows - 2)], dtype=torch.int64)
        for step in (steps[n % len(steps)], steps[(n + 2) % len(steps)]):
            step = step.to(device) if isinstance(step, torch.Tensor) else step
            cases.append((f"vocab {vocab} T={temperature} {dtype} step {step}", logits.to(dtype).to(device), temperature, seeds.to(device), step))
    for parts, step, token in TOP_HASH:
        logits = (torch.randn(3, 2048) * 3).to(torch.bfloat16).to(device)
        seeds = torch.tensor([row_seed(*parts), row_seed("x", 1), row_seed("x", 2)], device=device)
        cases.append((f"the top hash value at token {token}", logits, 0.7, seeds, step))
    logits = torch.zeros(len(TIED), 4096, dtype=torch.bfloat16)
    for row, (_, j, k) in enumerate(TIED):
        logits[row, [j, k]] = 40.0
    seeds = torch.tensor([row_seed(*parts) for parts, _, _ in TIED])
    assert sampling.uniform_noise(seeds, 1, 4096)[range(len(TIED)), [k for _, _, k in TIED]].tolist() == \
        sampling.uniform_noise(seeds, 1, 4096)[range(len(TIED)), [j for _, j, _ in TIED]].tolist(), "tied noise"
    assert _reference_tokens(logits, 0.7, seeds, 1).tolist() == [j for _, j, _ in TIED], "the lower of two tied ids wins"
    cases.append(("ties", logits.to(device), 0.7, seeds.to(device), 1))
    return cases


def _expected_best(scores: torch.Tensor, temperature: float, seeds: torch.Tensor, step: torch.Tensor | int, split: int,
                   numpy_log: bool) -> torch.Tensor:
    """Each split's best score as the reference computes it (``numpy_log``: with numpy's log, as the interpreter runs)."""
    uniform = sampling.uniform_noise(seeds, step, scores.shape[-1])
    if numpy_log:
        with np.errstate(divide="ignore"):
            noise = torch.from_numpy(-np.log(-np.log(uniform.cpu().numpy()))).to(scores.device)
    else:
        noise = -torch.log(-torch.log(uniform))
    total = scores.float() / temperature + noise
    padded = torch.nn.functional.pad(total, (0, -total.shape[1] % split), value=float("-inf"))
    return padded.view(total.shape[0], -1, split).amax(-1)


def check_sampler(device: str) -> None:
    """The kernel against the reference on every case, the vocabulary whole or in splits (the interpreter runs
    a loop step in tens of milliseconds: few, wide blocks); raises AssertionError on a mismatch."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    for n, (name, logits, temperature, seeds, step) in enumerate(_cases(device)):
        expected = _reference_tokens(logits, temperature, seeds, step)
        # Splits of 1024 read in blocks of 512 on some cases (split merging, several steps a split), whole rows on all.
        for split, block in ((4096, 2048), (1024, 512))[: 2 if n % 3 == 0 or name == "ties" else 1]:
            best, index = sampling.fused_partials(logits, temperature, seeds, step, split, block)
            got = sampling.merge_partials(best, index)
            assert torch.equal(got, expected), f"{name}, split {split}: {got.tolist()} != {expected.tolist()}"
            want = _expected_best(logits, temperature, seeds, step, split, numpy_log=interpreted)
            if device == "cuda":  # the kernel's log is libdevice's, the reference's PyTorch's: the last bit may differ (H100)
                torch.testing.assert_close(best, want, rtol=4e-7, atol=0, msg=f"{name}, split {split}: best scores")
            else:
                assert torch.equal(best, want), f"{name}, split {split}: best scores differ in {(best != want).sum()} places"
    name, logits, temperature, seeds, step = _cases(device)[-1]
    assert torch.equal(sampling.fused_sample(logits, temperature, seeds, step), _reference_tokens(logits, temperature, seeds, step)), "planned split"


def test_the_torch_path_gives_the_reference_tokens() -> None:
    for name, logits, temperature, seeds, step in _cases("cpu"):
        assert torch.equal(sampling.sample_tokens(logits, temperature, seeds, step), _reference_tokens(logits, temperature, seeds, step)), name
    logits = torch.randn(4, 50)
    assert torch.equal(sampling.sample_tokens(logits, 0.0, torch.zeros(4, dtype=torch.long), 0), logits.argmax(-1)), "greedy"


def test_a_rows_token_does_not_depend_on_its_batch() -> None:
    logits, seeds = torch.randn(6, 300), torch.tensor([row_seed("b", i) for i in range(6)])
    alone = torch.cat([sampling.sample_tokens(logits[i : i + 1], 0.8, seeds[i : i + 1], 4) for i in range(6)])
    assert torch.equal(alone, sampling.sample_tokens(logits, 0.8, seeds, 4))


def test_the_plan_splits_small_batches_and_keeps_big_ones_whole() -> None:
    vocab, processors = 151936, 132
    assert sampling.sample_plan(1536, vocab, processors) >= vocab, "1,536 rows fill the GPU whole"
    split = sampling.sample_plan(256, vocab, processors)
    assert split % sampling.BLOCK_VOCAB == 0 and 256 * -(-vocab // split) >= sampling.PROGRAMS_PER_PROCESSOR * processors
    assert sampling.sample_plan(1, 5, processors) == sampling.BLOCK_VOCAB


@needs_triton
def test_the_kernel_gives_the_reference_tokens_in_the_interpreter() -> None:
    run_interpreted("from tests.test_sampling import check_sampler; check_sampler('cpu')", timeout=600)


@pytest.mark.skipif(not GPU, reason="needs a GPU Triton can compile for")
def test_the_kernel_gives_the_reference_tokens_on_the_gpu() -> None:
    check_sampler("cuda")


def test_the_noise_is_finite_where_the_hash_takes_its_top_value() -> None:
    """A uniform of exactly 1.0 made the noise +inf: a token from anywhere in the vocabulary won the step. With 23
    bits the top hash value's uniform is 1 - 2**-24 and its noise finite, so a near-impossible token stays so."""
    from pipeline.engine.sampling import gumbel_noise, uniform_noise

    for parts, step, token in TOP_HASH:
        seeds = torch.tensor([row_seed(*parts)])
        uniform = uniform_noise(seeds, step, 2048)[0]
        assert float(uniform[token]) == 1 - 2**-24 and float(uniform.max()) < 1 and float(uniform.min()) > 0
        noise = gumbel_noise(seeds, step, 2048)[0]
        assert torch.isfinite(noise).all() and float(noise[token]) < 17
        logits = torch.full((1, 2048), -30.0)
        logits[0, (token + 1) % 2048] = 0.0  # one likely token; the top-hash one 30 below it
        assert int(_reference_tokens(logits, 0.7, seeds, step)[0]) == (token + 1) % 2048
