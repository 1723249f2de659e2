"""Triton kernels for the static decoder's decode step: what PyTorch runs as many small kernels, fused.

A decode step at 64-256 rows is no longer bound by the weights alone: the batch's keys and values and
some twenty element-wise kernels per layer (norms, rotary embedding, cache writes, residuals,
activation) cost about as much as the matmuls. Four kernels replace them (and a fifth, the matmul, makes a
row's numbers independent of its batch):

- ``decode_attention``: grouped-query attention of one new token per row over that row's own cache
  columns (from its first prompt token to the column just written, not the graph's whole bucket), the
  query heads of a group reading each key/value once; long rows are split across programs and merged
  (flash-decoding), so batch 1 still fills the GPU; with batch invariance the prefill runs each of its
  positions through it too, so a position's keys and values are the same bits however they were made;
- ``matmul``: the linear layers with batch invariance: fixed tiles, no split of K;
- ``rope_and_store``: rotary embedding of q and k and the store of k and v into the cache column;
- ``add_rms_norm``: residual add and RMSNorm in one pass;
- ``silu_and_mul``: the gated MLP's activation.

The prefill runs the last two as well, and ``rotate`` (the rotary embedding in place): in a prefill of
tens of thousands of tokens PyTorch's element-wise kernels took 30% of the GPU time.

Each element-wise kernel rounds where the model's PyTorch ops round (normalise in float32, cast, then
scale; every product and sum in the model's dtype, none fused into one multiply-add, as separate kernels
cannot), so it gives the same values as the ops it replaces.
Triton needs compute capability 8.0 or newer: a V100 keeps the PyTorch path. The step reads the column
it writes from a device tensor, so the kernels replay inside a CUDA graph.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

HAVE_TRITON = importlib.util.find_spec("triton") is not None
# Key/value columns an attention program reads per loop step.
BLOCK_COLUMNS = 64
# Batch-invariant attention splits a row's columns in pieces of this many from its own first column,
# whatever batch it shares, so its attention is the same bits in a batch of 5 or of 24, in a decode step or
# a prefill.
INVARIANT_SPLIT = 256
# The batch-invariant matmul's row tile and K step: the same for every batch (decode steps of 1-256 rows
# and prefills of thousands), so a row's sums run in one order.
MATMUL_BLOCK_M = 64
MATMUL_BLOCK_K = 64

if HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _attention_partial(Q, K, V, Start, End, Rows, Out, Lse, Final, stride_end, stride_qr, stride_qh, stride_kr, stride_kh, stride_kc,
                           stride_vr, stride_vh, stride_vc, scale, SPLITS: tl.constexpr, SPLIT_SIZE: tl.constexpr, GROUP: tl.constexpr,
                           BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
                           ROW_MAP: tl.constexpr):
        """One (query, key/value head, split): softmax-weighted values of the split's ``SPLIT_SIZE`` columns,
        counted from the query's first column, with the log-sum-exp that merges the splits; with one split,
        the output itself into ``Final``. A query reads cache row ``Rows[query]`` (``ROW_MAP``; else its own
        index) from ``Start`` to ``End`` inclusive. The loop stops at the query's last column: a block past it
        would be masked out whole and change no bit (its weights exact zeros, its rescale 1), so skipping it
        changes none either, and a short or finished row (``End`` = ``Start``) costs its own columns, not
        the split's; so with one split the result does not depend on ``SPLIT_SIZE`` at all."""
        row, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        first = tl.load(Start + row)
        end = tl.load(End + row * stride_end) + 1
        lo = first + split * SPLIT_SIZE
        hi = tl.minimum(lo + SPLIT_SIZE, end)
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, HEAD_DIM)
        heads = kv_head * GROUP + g
        q = tl.load(Q + row * stride_qr + heads[:, None] * stride_qh + d[None, :], mask=g[:, None] < GROUP, other=0.0)
        if ROW_MAP:
            cache_row = tl.load(Rows + row).to(tl.int64)
        else:
            cache_row = row
        k_base = K + cache_row * stride_kr + kv_head * stride_kh
        v_base = V + cache_row * stride_vr + kv_head * stride_vh
        m = tl.full([BLOCK_G], float("-inf"), tl.float32)
        total = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
        for offset in range(0, (hi - lo).to(tl.int32), BLOCK_N):
            c = lo + offset + tl.arange(0, BLOCK_N)
            ok = c < hi
            k = tl.load(k_base + c[:, None] * stride_kc + d[None, :], mask=ok[:, None], other=0.0)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            else:
                s = tl.dot(q, tl.trans(k)) * scale
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # no column yet: weights 0, not exp(nan)
            p = tl.exp(s - shift[:, None])
            alpha = tl.exp(m - shift)
            v = tl.load(v_base + c[:, None] * stride_vc + d[None, :], mask=ok[:, None], other=0.0)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            total = total * alpha + tl.sum(p, 1)
            m = m_new
        empty = total == 0.0
        out = acc / tl.where(empty, 1.0, total)[:, None]
        slot = (row * GROUP * tl.num_programs(1) + heads) * SPLITS + split
        if SPLITS == 1:
            tl.store(Final + slot[:, None] * HEAD_DIM + d[None, :], out.to(Final.dtype.element_ty), mask=g[:, None] < GROUP)
        else:
            tl.store(Out + slot[:, None] * HEAD_DIM + d[None, :], out, mask=g[:, None] < GROUP)
            tl.store(Lse + slot, tl.where(empty, float("-inf"), m + tl.log(total)), mask=g < GROUP)

    @triton.jit
    def _attention_merge(Part, Lse, Out, SPLITS: tl.constexpr, HEAD_DIM: tl.constexpr):
        """One (row, query head): the splits' partial outputs weighted by their share of the softmax,
        merged in split order, so that empty splits (log-sum-exp -inf) change no bit."""
        head = tl.program_id(0)
        d = tl.arange(0, HEAD_DIM)
        m = float("-inf")
        total = 0.0
        acc = tl.zeros([HEAD_DIM], tl.float32)
        for split in range(SPLITS):
            lse = tl.load(Lse + head * SPLITS + split)
            m_new = tl.maximum(m, lse)
            alpha = tl.exp(m - m_new)
            weight = tl.exp(lse - m_new)
            acc = acc * alpha + weight * tl.load(Part + (head * SPLITS + split) * HEAD_DIM + d)
            total = total * alpha + weight
            m = m_new
        tl.store(Out + head * HEAD_DIM + d, (acc / total).to(Out.dtype.element_ty))

    @triton.jit
    def _rounded_rotation(x, partner, cos, sin):
        """``x * cos + rotate_half(x) * sin`` (``partner``: x's halves swapped, sin's first half negated), each
        product and the sum rounded to x's dtype as the model's separate PyTorch ops round them."""
        a = (x.to(tl.float32) * cos.to(tl.float32)).to(x.dtype)
        b = (partner.to(tl.float32) * sin.to(tl.float32)).to(x.dtype)
        return (a.to(tl.float32) + b.to(tl.float32)).to(x.dtype)

    @triton.jit
    def _rope_and_store(QKV, Cos, Sin, Q, Cache, Column, stride_qkv, stride_cache_row, stride_cache_head,
                        stride_cache_kv, HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                        BLOCK_H: tl.constexpr):
        """One row, ``BLOCK_H`` of its q/k/v heads: q rotated into Q, k rotated and v as is into the cache
        column. The rotation rounds as ``x * cos + rotate_half(x) * sin`` does in the model's dtype."""
        row = tl.program_id(0)
        half: tl.constexpr = HEAD_DIM // 2
        h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, HEAD_DIM)[None, :]
        x = tl.load(QKV + row * stride_qkv + h * HEAD_DIM + d, mask=h < HEADS + 2 * KV_HEADS, other=0.0)
        partner = tl.load(QKV + row * stride_qkv + h * HEAD_DIM + (d + half) % HEAD_DIM, mask=h < HEADS + KV_HEADS, other=0.0)
        cos = tl.load(Cos + row * HEAD_DIM + d)
        sin = tl.load(Sin + row * HEAD_DIM + d)
        rotated = _rounded_rotation(x, partner, cos, sin)
        column = tl.load(Column)
        tl.store(Q + (row * HEADS + h) * HEAD_DIM + d, rotated, mask=h < HEADS)
        is_k = (h >= HEADS) & (h < HEADS + KV_HEADS)
        tl.store(Cache + row * stride_cache_row + (h - HEADS) * stride_cache_head + column * HEAD_DIM + d, rotated, mask=is_k)
        is_v = (h >= HEADS + KV_HEADS) & (h < HEADS + 2 * KV_HEADS)
        tl.store(Cache + stride_cache_kv + row * stride_cache_row + (h - HEADS - KV_HEADS) * stride_cache_head
                 + column * HEAD_DIM + d, x, mask=is_v)

    @triton.jit
    def _rotate(QKV, Cos, Sin, stride_token, QK_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr):
        """One token, ``BLOCK_H`` of its q/k heads rotated in place. A program loads whole heads before it stores them, and no two programs share a head."""
        token = tl.program_id(0)
        half: tl.constexpr = HEAD_DIM // 2
        h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, HEAD_DIM)[None, :]
        ok = h < QK_HEADS
        x = tl.load(QKV + token * stride_token + h * HEAD_DIM + d, mask=ok, other=0.0)
        partner = tl.load(QKV + token * stride_token + h * HEAD_DIM + (d + half) % HEAD_DIM, mask=ok, other=0.0)
        cos = tl.load(Cos + token * HEAD_DIM + d)
        sin = tl.load(Sin + token * HEAD_DIM + d)
        tl.store(QKV + token * stride_token + h * HEAD_DIM + d, _rounded_rotation(x, partner, cos, sin), mask=ok)

    @triton.jit
    def _add_rms_norm(Hidden, Delta, Weight, Normed, eps, WIDTH: tl.constexpr, BLOCK: tl.constexpr, ADD: tl.constexpr):
        """One row: ``hidden += delta`` (in place, rounded to the dtype), then the weighted RMSNorm of it,
        normalised in float32, cast, then scaled, as the model's norm rounds."""
        row = tl.program_id(0)
        i = tl.arange(0, BLOCK)
        ok = i < WIDTH
        x = tl.load(Hidden + row * WIDTH + i, mask=ok, other=0.0)
        if ADD:
            delta = tl.load(Delta + row * WIDTH + i, mask=ok, other=0.0)
            x = (x.to(tl.float32) + delta.to(tl.float32)).to(x.dtype)
            tl.store(Hidden + row * WIDTH + i, x, mask=ok)
        xf = x.to(tl.float32)
        rms = tl.rsqrt(tl.sum(xf * xf, 0) / WIDTH + eps)
        w = tl.load(Weight + i, mask=ok, other=0.0)
        normed = (xf * rms).to(x.dtype).to(tl.float32)
        tl.store(Normed + row * WIDTH + i, (w.to(tl.float32) * normed).to(x.dtype), mask=ok)

    @triton.jit
    def _silu_and_mul(GateUp, Out, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
        """One block of one row: ``silu(gate) * up``, each op rounded to the dtype as PyTorch rounds it."""
        row, block = tl.program_id(0), tl.program_id(1)
        i = block * BLOCK + tl.arange(0, BLOCK)
        ok = i < WIDTH
        gate = tl.load(GateUp + row * 2 * WIDTH + i, mask=ok, other=0.0)
        up = tl.load(GateUp + row * 2 * WIDTH + WIDTH + i, mask=ok, other=0.0)
        g = gate.to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
        tl.store(Out + row * WIDTH + i, (act.to(tl.float32) * up.to(tl.float32)).to(gate.dtype), mask=ok)


    @triton.jit
    def _matmul(A, W, Bias, C, M, stride_am, stride_wn, stride_cm, N: tl.constexpr, K: tl.constexpr, HAS_BIAS: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr):
        """One ``BLOCK_M`` x ``BLOCK_N`` tile of ``A @ W.T (+ bias)``: the whole K in ``BLOCK_K`` steps, in order,
        into one float32 accumulator, rounded once. No split of K and tiles that depend on the layer, not on
        M: an output row is the same bits whatever the other rows and their count."""
        pid_m, pid_n = tl.program_id(0), tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            a = tl.load(A + rm[:, None].to(tl.int64) * stride_am + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
            w = tl.load(W + rn[None, :].to(tl.int64) * stride_wn + kk[:, None], mask=(rn[None, :] < N) & (kk[:, None] < K), other=0.0)
            if IEEE:
                acc += tl.dot(a, w, input_precision="ieee")
            else:
                acc += tl.dot(a, w)
        if HAS_BIAS:
            acc += tl.load(Bias + rn, mask=rn < N, other=0.0).to(tl.float32)
        tl.store(C + rm[:, None].to(tl.int64) * stride_cm + rn[None, :], acc.to(C.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def usable(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device``, or None when they can."""
    if not HAVE_TRITON:
        return "triton is not installed"
    if device.type != "cuda":
        return "not a CUDA device"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"compute capability {major}.{minor} (Triton needs 8.0 or newer)"
    return None


def attention_plan(rows: int, kv_heads: int, columns: int, processors: int, invariant: bool) -> tuple[int, int]:
    """(splits, split size) for a step over ``columns``: each query's columns, from its own first, in
    ``splits`` pieces of ``split size``. ``invariant``: pieces of ``INVARIANT_SPLIT`` columns, whatever the
    batch, so that a row's attention is the same bits in any batch. Otherwise as many pieces as give every
    processor two programs (rows x kv heads x splits), each a power of two of at least ``BLOCK_COLUMNS``
    columns (few compiled variants)."""
    if invariant:
        return -(-columns // INVARIANT_SPLIT), INVARIANT_SPLIT
    want = max(1, min(-(-2 * processors // (rows * kv_heads)), columns // BLOCK_COLUMNS))
    size = max(BLOCK_COLUMNS, triton.next_power_of_2(-(-columns // want)))
    return -(-columns // size), size


@functools.lru_cache(maxsize=4096)
def widest_same_pieces(rows: int, kv_heads: int, columns: int, capacity: int, processors: int, invariant: bool) -> int:
    """The widest multiple of ``BLOCK_COLUMNS`` up to ``capacity`` whose ``attention_plan`` cuts every row of at
    most ``columns`` columns into the pieces that ``columns``' own plan cuts it into: the same split size, or one
    piece at least ``columns`` wide where ``columns``' plan is one piece. A step run there is the same
    computation, bit for bit, as one run at ``columns``: the pieces past a row's end are empty (the loop stops at
    its last column) and merge away (weight exactly 0, rescale exactly 1), and one non-empty piece merged is
    that piece's output. A decode step is run (and its CUDA graph keyed) at this width, so one graph serves
    every column bucket with the same pieces: a few per row bucket instead of one per 64 columns. Cached: the
    decoder asks at every step."""
    splits, size = attention_plan(rows, kv_heads, columns, processors, invariant)
    for wider in range(capacity - capacity % BLOCK_COLUMNS, columns, -BLOCK_COLUMNS):
        other = attention_plan(rows, kv_heads, wider, processors, invariant)[1]
        if other == size or (splits == 1 and other >= columns):
            return wider
    return columns


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                     scale: float, splits: int, split_size: int, rows: torch.Tensor | None = None, block: int = BLOCK_COLUMNS) -> torch.Tensor:
    """Attention of one query per entry of ``q`` [queries, heads, dim] over ``keys``/``values`` [cache rows,
    kv_heads, columns, dim], from column ``start[query]`` to ``end`` (inclusive: a 0-d device tensor for a
    decode step, one column for all, or one per query), in ``splits`` pieces of ``split_size`` columns
    (``attention_plan``). Query i reads cache row ``rows[i]`` (default: row i): a prefill runs each of its
    positions as one such query, the very computation of a decode step. Returns [queries, heads, dim] in
    q's dtype."""
    queries, heads, dim = q.shape
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    out = torch.empty_like(q)
    part = torch.empty((queries, heads, splits, dim) if splits > 1 else (), dtype=torch.float32, device=q.device)
    lse = torch.empty((queries, heads, splits) if splits > 1 else (), dtype=torch.float32, device=q.device)
    _attention_partial[(queries, kv_heads, splits)](
        q, keys, values, start, end, start if rows is None else rows, part, lse, out, 0 if end.dim() == 0 else end.stride(0),
        q.stride(0), q.stride(1), keys.stride(0), keys.stride(1), keys.stride(2), values.stride(0), values.stride(1), values.stride(2),
        scale, SPLITS=splits, SPLIT_SIZE=split_size, GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=dim,
        BLOCK_N=block, IEEE=q.dtype == torch.float32, ROW_MAP=rows is not None)
    if splits > 1:
        _attention_merge[(queries * heads,)](part, lse, out, SPLITS=splits, HEAD_DIM=dim)
    return out


def matmul_tiles(n: int, processors: int) -> int:
    """``BLOCK_N`` of a layer with ``n`` outputs: the widest tile that still gives every processor a program
    at one row tile (decode steps are a row tile or a few), down to 16. A function of the layer and the
    GPU, never of the batch."""
    for block in (128, 64, 32):
        if -(-n // block) >= processors:
            return block
    return 16


def matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, processors: int) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x`` [rows, in] with fixed tiles (``_matmul``): a row's output does
    not depend on the others. Returns [rows, out] in x's dtype."""
    rows, k = x.shape
    n = weight.shape[0]
    x = x.contiguous()
    out = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    block_m, block_n, block_k = MATMUL_BLOCK_M, matmul_tiles(n, processors), MATMUL_BLOCK_K
    _matmul[(triton.cdiv(rows, block_m), triton.cdiv(n, block_n))](
        x, weight, weight if bias is None else bias, out, rows, x.stride(0), weight.stride(0), out.stride(0), N=n, K=k,
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, IEEE=x.dtype == torch.float32)
    return out


def rope_and_store(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: torch.Tensor, column: torch.Tensor,
                   heads: int, kv_heads: int) -> torch.Tensor:
    """Rotates q and k of ``qkv`` [rows, (heads + 2 kv_heads) * dim] by ``cos``/``sin`` [rows, dim] (sin
    with its first half negated: ``rotate_half(x) * sin`` is then the swapped halves of x times it);
    stores k and v in ``cache`` [2, rows, kv_heads, columns, dim] at ``column``. Returns the rotated q,
    [rows, heads, dim]."""
    rows = qkv.shape[0]
    dim = cache.shape[-1]
    q = torch.empty((rows, heads, dim), dtype=qkv.dtype, device=qkv.device)
    block = 16
    _rope_and_store[(rows, triton.cdiv(heads + 2 * kv_heads, block))](
        qkv, cos, sin, q, cache, column, qkv.stride(0), cache.stride(1), cache.stride(2), cache.stride(0),
        HEADS=heads, KV_HEADS=kv_heads, HEAD_DIM=dim, BLOCK_H=block, enable_fp_fusion=False)
    return q


def rotate(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, qk_heads: int) -> torch.Tensor:
    """Rotates the first ``qk_heads`` heads (q, then k) of ``qkv`` [tokens, heads, dim] in place by ``cos``/``sin``
    [tokens, dim] (sin with its first half negated, as for ``rope_and_store``): the prefill's rotary
    embedding in one kernel. Returns ``qkv``."""
    tokens, _, dim = qkv.shape
    block = 16
    _rotate[(tokens, triton.cdiv(qk_heads, block))](qkv, cos, sin, qkv.stride(0), QK_HEADS=qk_heads, HEAD_DIM=dim, BLOCK_H=block,
                                                     enable_fp_fusion=False)
    return qkv


def add_rms_norm(hidden: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``hidden += delta`` in place (when given), and returns ``weight * rms_norm(hidden)``; [rows, width]."""
    rows, width = hidden.shape
    normed = torch.empty_like(hidden)
    _add_rms_norm[(rows,)](hidden, hidden if delta is None else delta, weight, normed, eps, WIDTH=width,
                           BLOCK=triton.next_power_of_2(width), ADD=delta is not None, num_warps=8,
                           enable_fp_fusion=False)
    return normed


def silu_and_mul(gate_up: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up`` [rows, 2 * width] holding gate then up; [rows, width]."""
    rows, width = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((rows, width), dtype=gate_up.dtype, device=gate_up.device)
    _silu_and_mul[(rows, triton.cdiv(width, block))](gate_up, out, WIDTH=width, BLOCK=block, enable_fp_fusion=False)
    return out
