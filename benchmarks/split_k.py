"""A split-K Triton matmul, ``x @ weight.T``, for ``bench_gemm.py --triton``: the experiment that asked
whether a skinny decode matmul (128-256 rows against a 4096 x 4096-28672 weight) can read its weight faster
than cuBLAS does by giving more programs a share of the inner dimension. Not used by the pipeline.

Each program multiplies a ``block_m x block_n`` tile over its ``1 / splits`` of the inner dimension; with
more than one split the float32 partial tiles are summed in split order by a second kernel (the same bits on
every run, unlike atomic adds).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Elements per program of the kernel that sums the splits.
REDUCE_BLOCK = 1024


@triton.jit
def _partial_matmul(X, W, Y, P, M, N, k_split, stride_x, stride_w, stride_y, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr, SPLITS: tl.constexpr, STAGES: tl.constexpr):
    """Tile (program 2, program 0) of split program 1: into ``Y`` with one split, else float32 into ``P``."""
    pid_n, split, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k = split * k_split + tl.arange(0, BLOCK_K)
    x_ptr = X + m[:, None] * stride_x + k[None, :]
    w_ptr = W + n[:, None] * stride_w + k[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for _ in tl.range(0, k_split, BLOCK_K, num_stages=STAGES):
        x = tl.load(x_ptr, mask=m[:, None] < M, other=0.0)
        w = tl.load(w_ptr, mask=n[:, None] < N, other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
        x_ptr += BLOCK_K
        w_ptr += BLOCK_K
    mask = (m[:, None] < M) & (n[None, :] < N)
    if SPLITS == 1:
        tl.store(Y + m[:, None] * stride_y + n[None, :], acc.to(Y.dtype.element_ty), mask=mask)
    else:
        tl.store(P + split * M * N + m[:, None] * N + n[None, :], acc, mask=mask)


@triton.jit
def _sum_splits(P, Y, size, SPLITS: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < size
    acc = tl.load(P + i, mask=mask, other=0.0)
    for s in tl.static_range(1, SPLITS):
        acc += tl.load(P + s * size + i, mask=mask, other=0.0)
    tl.store(Y + i, acc.to(Y.dtype.element_ty), mask=mask)


def matmul(x: torch.Tensor, weight: torch.Tensor, config: tuple[int, int, int, int, int], out: torch.Tensor,
           partial: torch.Tensor | None) -> torch.Tensor:
    """``out = x @ weight.T`` with ``config = (block_m, block_n, block_k, splits, stages)``; ``partial`` is a
    float32 [splits, rows, outputs] buffer when ``splits > 1``. The inner dimension must divide into
    ``splits * block_k``; ``out`` must be contiguous."""
    block_m, block_n, block_k, splits, stages = config
    rows, features = x.shape
    outputs = weight.shape[0]
    grid = (triton.cdiv(outputs, block_n), splits, triton.cdiv(rows, block_m))
    _partial_matmul[grid](x, weight, out, partial, rows, outputs, features // splits, x.stride(0), weight.stride(0), out.stride(0),
                          BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLITS=splits, STAGES=stages,
                          num_warps=8 if block_n == 256 else 4)
    if splits > 1:
        _sum_splits[(triton.cdiv(out.numel(), REDUCE_BLOCK),)](partial, out, out.numel(), SPLITS=splits, BLOCK=REDUCE_BLOCK)
    return out
