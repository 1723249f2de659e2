"""The static decoder's forward math: a Llama- or Qwen2-style model's logits over a KV cache it is handed.

This runs the model's own parts (embeddings, norm weights, projection weights, rotary embedding,
activation, head) around its own attention, in fewer kernels than the model's ``forward``:

- on a GPU, q/k/v and gate/up are each one matmul (the model's weights become views of the fused ones);
- grouped-query attention reads each key/value head once (the query heads of a group ride as a short
  query sequence, no copies);
- on a GPU Triton can run (compute capability 8.0+), a decode step's attention, rotary embedding, cache
  write, norms, residuals and activation are ``pipeline.engine.kernels``' fused kernels (``kernels=auto``), and so
  are the prefill's rotary embedding, norms, residuals and activation.

With batch invariance (``invariant``, ``debate.batch_invariant``) a row's logits are the same bits whatever
its batch, its place and padding, the prefill chunk, or whether its keys and values came from a prefill or
from decode steps: on a GPU every linear layer is the fixed-tile matmul kernel and every prefill position a
query of the decode step's attention kernel; on a CPU the matmuls get at least ``MIN_ROWS`` rows and the
attention runs one query at a time (tests/test_invariance.py).

The cache is the caller's (``pipeline.engine.decode`` allocates, moves and reuses it): a
``[k/v, rows, kv_heads, columns, head_dim]`` tensor per layer, rows left-padded into shared columns. A
forward writes the keys and values of the positions it computes and reads the columns it is told to;
it keeps no state between calls.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import PreTrainedModel

from pipeline.engine import KERNELS, kernels
from pipeline.models.int8 import RowInt8Linear

SUPPORTED_TYPES = ("llama", "qwen2")
# On a CPU, PyTorch's float matmuls of fewer rows than this take other kernels, which sum in another order
# (measured, torch 2.13: 1-3, 5-7 and 9-11 rows differ from 12 or more in float32, 1 row in bfloat16 on one
# thread); from 12 rows on, a row's output is the same bits whatever the other rows and their count. So a
# CPU forward pads smaller inputs to this many rows: a row's numbers then depend on that row alone.
MIN_ROWS = 16

# The backends PyTorch's attention (``scaled_dot_product_attention``) may pick for the suite's forwards: those whose
# forward repeats itself, bit for bit, run to run. Not cuDNN's, which PyTorch prefers on sm90 (H100, H200) with
# cuDNN 9.15.1 or newer and itself excludes under ``torch.use_deterministic_algorithms``: measured on an H100, a
# vote's prefill of one token a row over 1,536 reused prompts gave other keys and values from the same inputs run
# to run, and transformers' ``generate`` other tokens in 228 of 256 greedy rows (benchmarks/repeat_call.py;
# docs/performance.md, "One batch a vote, twice on one machine"). Flash attention takes no mask, so the prefill runs
# on the memory-efficient kernel. Every forward that attends through it runs within ``repeatable_attention``: the
# engine's (``Forward.prefill``, ``Forward._torch_step``, set once for all layers), ``generate`` where the engine
# does not run, and lm-eval's own model in the eval stage.
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def repeatable_attention() -> AbstractContextManager[None]:
    """PyTorch's attention restricted to ``SDPA_BACKENDS`` for the block, the list read at each call, so that a benchmark
    can swap the list (benchmarks/repeat_call.py)."""
    return sdpa_kernel(SDPA_BACKENDS)


# A layer's attention: (layer, q/k/v [tokens, heads + 2 kv heads, dim], cos, sin) -> [tokens, heads * dim].
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def unsupported(model: PreTrainedModel) -> str | None:
    """Why the static decoder cannot run this model, or None when it can."""
    config = model.config
    if config.model_type not in SUPPORTED_TYPES:
        return f"architecture {config.model_type!r} (supported: {', '.join(SUPPORTED_TYPES)})"
    if getattr(model, "quantization_method", None) or getattr(model, "is_loaded_in_4bit", False):
        return "quantised weights"
    if not hasattr(model, "model") or not hasattr(model.model, "layers"):
        return f"{type(model).__name__} is not a plain causal LM (an unmerged adapter?)"
    if getattr(config, "use_sliding_window", False):
        return "sliding-window attention"
    return None


def _rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's RMSNorm with the normalisation in PyTorch's fused kernel: four kernels instead of
    eight, and the same roundings as the model's own (normalise in float32, cast, then scale), so that
    half-precision outputs match ``generate`` too. Passing the weight to the fused kernel would save two
    more kernels but round once instead of twice."""
    return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=norm.variance_epsilon).to(x.dtype)


def _fused(module: torch.nn.Module, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The concatenated weight (and bias) of ``module``'s linear layers ``names``; the layers' parameters
    are replaced by views of it. A module fused before is recognised and its matrix reused."""
    linears = [getattr(module, name) for name in names]
    fused = getattr(module, "_static_decoder_fused", None)
    if fused is not None and fused[0].data_ptr() == linears[0].weight.data_ptr():
        return fused
    weight = torch.cat([linear.weight for linear in linears])
    bias = torch.cat([linear.bias for linear in linears]) if linears[0].bias is not None else None
    offset = 0
    for linear in linears:
        rows = linear.weight.shape[0]
        linear.weight = torch.nn.Parameter(weight[offset : offset + rows], requires_grad=False)
        if bias is not None:
            linear.bias = torch.nn.Parameter(bias[offset : offset + rows], requires_grad=False)
        offset += rows
    module._static_decoder_fused = (weight, bias)
    return weight, bias


class Forward:
    """One model's prefill and decode-step forwards over a cache the caller holds."""

    def __init__(self, model: PreTrainedModel, kernels: str = "auto", invariant: bool | None = None) -> None:
        reason = unsupported(model)
        if reason:
            raise ValueError(f"the static decoder cannot run {model.name_or_path}: {reason}")
        if kernels not in KERNELS:
            raise ValueError(f"unknown decode kernels {kernels!r}; choose one of {', '.join(KERNELS)}")
        config = model.config
        self.model = model
        self.layers = list(model.model.layers)
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.layers[0].self_attn.scaling
        self.device = model.device
        self.dtype = model.model.embed_tokens.weight.dtype
        self.use_kernels = self._pick_kernels(kernels)
        # None: on a CPU; off on a GPU, where it costs 38-55% of the tokens/s (docs/performance.md, measured on an H100).
        if invariant:
            self._check_invariance_possible()
        self.invariant = self.device.type != "cuda" if invariant is None else invariant
        # Rows a CPU matmul gets at least; int8 layers sum in integers, exact at any row count.
        self.min_rows = MIN_ROWS if self.invariant and not self.use_kernels and not isinstance(model.lm_head, RowInt8Linear) else 0
        self.processors = torch.cuda.get_device_properties(self.device).multi_processor_count if self.use_kernels else 0
        self.gqa_in_kernel = self._gqa_in_kernel()
        self._fuse_weights()

    def _pick_kernels(self, choice: str) -> bool:
        """Whether the forwards run ``pipeline.engine.kernels``: ``triton`` insists (an error where they cannot
        run), ``torch`` declines, ``auto`` takes them wherever they can run."""
        if choice == "torch":
            return False
        reason = kernels.usable(self.device)
        if reason is None and self.model.config.hidden_act != "silu":
            reason = f"activation {self.model.config.hidden_act!r} (the fused MLP kernel is SiLU's)"
        if reason is not None and choice == "triton":
            raise ValueError(f"kernels=triton cannot run {self.model.name_or_path} on {self.device}: {reason}")
        return reason is None

    def _check_invariance_possible(self) -> None:
        """Refuses batch invariance where it cannot hold, so that a run that asked for it (and whose record
        fingerprint therefore leaves the batching settings out) never silently gets batch-dependent tokens. It
        holds on a CPU (PyTorch's ops, rows padded to ``MIN_ROWS``, attention one query at a time) and with the
        Triton kernels (fixed-tile matmuls, attention in fixed pieces for prefill and decode alike;
        tests/test_invariance.py, and benchmarks/invariance.py on an H100). cuBLAS and SDPA pick their kernels by
        shape, so ``kernels=torch`` on a GPU (and a V100, which the kernels do not run on) cannot be."""
        if self.device.type != "cpu" and not self.use_kernels:
            raise ValueError(f"debate.batch_invariant=true cannot hold for {self.model.name_or_path} on {self.device}: it needs "
                             "the Triton kernels, which do not run here (kernels=torch, or a GPU before compute capability 8.0); use "
                             "kernels=auto on a GPU of compute capability 8.0+, or batch_invariant=null")

    def _gqa_in_kernel(self) -> bool:
        """Whether the prefill's attention takes the kv heads as they are (``enable_gqa``) rather than each
        copied to its group of query heads: on a CPU, as ``generate`` does, and where the batch-invariant
        Triton kernel attends. On a GPU the heads are copied: with a mask, of the backends in ``SDPA_BACKENDS``
        only the math kernel serves grouped heads, with its [queries x columns] scores in float32 (11 GiB more
        for one 16k-token chunk, measured on an H200), which neither a chunk's bound (tokens prefilled, where the
        heads are not copied) nor the memory kept free beside the caches counts; the memory-efficient kernel needs
        equal head counts. (cuDNN's kernel served grouped heads in half precision on compute capability 9.0+ until
        the engine stopped taking it; on an H100 the prefills then ran on the math kernel: benchmarks/repeat_call.py,
        the same cache bits with only math allowed.)"""
        return self.device.type != "cuda" or (self.invariant and self.use_kernels)

    def _fuse_weights(self) -> None:
        """On a GPU, one matrix for q/k/v and one for gate/up per layer: one matmul instead of three and
        two. The model's own projections become views into them, so memory does not grow and ``generate``
        still runs the same weights. On a CPU the projections stay apart: a fused matmul sums in another
        order, and there it buys little, while separate ones give ``generate``'s tokens bit for bit in
        every precision."""
        self.qkv, self.gate_up = [], []
        if self.device.type != "cuda":
            return
        with torch.no_grad():
            for layer in self.layers:
                self.qkv.append(_fused(layer.self_attn, ("q_proj", "k_proj", "v_proj")))
                self.gate_up.append(_fused(layer.mlp, ("gate_proj", "up_proj")))

    # ---- the two forwards -----------------------------------------------------------------------------
    def prefill(self, cache: list[torch.Tensor], ids: torch.Tensor, start: torch.Tensor, fresh: torch.Tensor, rows: slice,
                end: int) -> torch.Tensor:
        """Logits of the last prompt token of cache ``rows``, whose prompts end at column ``end``. ``ids`` are the
        prompts' last columns (all of them, or a window when prefixes were reused); a row's keys and
        values are written from column ``fresh`` on, and its queries attend to its columns from ``start``."""
        count, width = ids.shape
        queries = torch.arange(end - width, end, device=self.device)
        keys = torch.arange(end, device=self.device)
        positions = (queries[None] - start[:, None]).clamp(min=0)
        visible = (keys[None, None, :] >= start[:, None, None]) & (keys[None, None, :] <= queries[None, :, None])
        # A padding query sees only itself: every softmax row stays finite.
        mask = (visible | (keys[None, None, :] == queries[None, :, None]))[:, None]
        new = (queries[None] >= fresh[:, None])[:, None, :, None]
        copies = 1 if self.gqa_in_kernel else self.heads // self.kv_heads

        if self.invariant and self.use_kernels:  # every position a query of the decode step's attention kernel
            per_token = {"start": start.repeat_interleave(width), "end": queries.repeat(count),
                         "rows": torch.arange(rows.start, rows.stop, device=self.device).repeat_interleave(width)}
            splits, split_size = kernels.attention_plan(count * width, self.kv_heads, end, self.processors, True)

        def attend(layer: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
            rotated = self._rotate(qkv, cos, sin)
            q, k, v = (t.view(count, width, -1, self.head_dim).transpose(1, 2) for t in rotated)
            rows_cache = cache[layer][:, rows]
            window = rows_cache[:, :, :, end - width : end]
            window.copy_(torch.where(new, torch.stack((k, v)), window))
            if self.invariant and self.use_kernels:
                return kernels.decode_attention(rotated[0], cache[layer][0], cache[layer][1], per_token["start"], per_token["end"],
                                                self.scale, splits, split_size, rows=per_token["rows"]).view(count * width, -1)
            if self.invariant:
                return self._each_query(q, rows_cache, start, fresh, end)
            keys, values = rows_cache[0, :, :, :end], rows_cache[1, :, :, :end]
            if copies > 1:  # each kv head copied to its group of query heads, for kernels that need equal counts
                keys, values = keys.repeat_interleave(copies, dim=1), values.repeat_interleave(copies, dim=1)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scale, enable_gqa=self.gqa_in_kernel)
            return out.transpose(1, 2).reshape(count * width, -1)

        with repeatable_attention():
            return self._logits(ids, positions, attend)

    def step(self, cache: list[torch.Tensor], token: torch.Tensor, position: torch.Tensor, start: torch.Tensor,
             column: torch.Tensor, columns: int, done: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of one decode step for the first ``len(token)`` cache rows: each row's last token at its
        rotary ``position``, its keys and values written at ``column`` (a 0-d tensor, so that a captured
        graph replays at the next column), attending to its columns from ``start`` to ``column``, of the
        first ``columns`` read. Rows marked ``done`` (stopped, waiting in the batch until the open rows fit a
        smaller one) have their tokens discarded: the attention kernel reads only their first column, so that
        they cost no cache reads; every other row's numbers are unchanged."""
        if self.use_kernels:
            return self._fused_step(cache, token, position, start, column, columns, done)
        return self._torch_step(cache, token, position, start, column, columns)

    def step_columns(self, rows: int, columns: int, capacity: int) -> int:
        """The columns to run (and key the graph of) a decode step of ``rows`` rows with, when its rows hold at most
        ``columns`` of a cache of ``capacity``: with the fused attention, the widest that cuts each row into the
        same pieces (``kernels.widest_same_pieces``: the same bits at fewer distinct widths, so fewer CUDA graphs
        to capture; the whole ``capacity`` where a row is one piece at any width, as with many rows, or where the
        pieces have a fixed size, as with batch invariance); else ``columns``."""
        if self.use_kernels:
            return kernels.widest_same_pieces(rows, self.kv_heads, columns, capacity, self.processors, self.invariant)
        return columns

    def _fused_step(self, cache: list[torch.Tensor], token: torch.Tensor, position: torch.Tensor, start: torch.Tensor,
                    column: torch.Tensor, columns: int, done: torch.Tensor | None) -> torch.Tensor:
        """The decode step through ``pipeline.engine.kernels``: rotary embedding and cache write in one
        kernel, and attention reading each row's own columns, from its first prompt token to the one
        written now (a done row: its first column only)."""
        rows = len(token)
        splits, split_size = kernels.attention_plan(rows, self.kv_heads, columns, self.processors, self.invariant)
        end = column if done is None else torch.where(done, start, column)

        def attend(layer: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
            q = kernels.rope_and_store(qkv.view(rows, -1), cos, sin, cache[layer], column, self.heads, self.kv_heads)
            return kernels.decode_attention(q, cache[layer][0], cache[layer][1], start, end, self.scale, splits, split_size).view(rows, -1)

        return self._logits(token[:, None], position[:, None], attend)

    def _torch_step(self, cache: list[torch.Tensor], token: torch.Tensor, position: torch.Tensor, start: torch.Tensor,
                    column: torch.Tensor, columns: int) -> torch.Tensor:
        """The decode step through PyTorch ops: an additive mask over the ``columns`` read."""
        rows = len(token)
        cols = torch.arange(columns, device=self.device)
        valid = (cols[None] >= start[:, None]) & (cols[None] <= column)
        mask = torch.zeros(valid.shape, dtype=self.dtype, device=self.device).masked_fill_(~valid, float("-inf"))[:, None, None, :]
        index = column.view(1)

        def attend(layer: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
            q, k, v = self._rotate(qkv, cos, sin)
            keys, values = cache[layer][0, :rows], cache[layer][1, :rows]
            keys.index_copy_(2, index, k[:, :, None])
            values.index_copy_(2, index, v[:, :, None])
            if self.invariant:
                return self._each_query(q[:, :, None], cache[layer][:, :rows], start, column.view(1).expand(rows), int(column) + 1)
            # The query heads of a group are a short query sequence over their one kv head.
            grouped = q.reshape(rows, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
            out = F.scaled_dot_product_attention(grouped, keys[:, :, :columns], values[:, :, :columns], attn_mask=mask, scale=self.scale)
            return out.reshape(rows, -1)

        with repeatable_attention():
            return self._logits(token[:, None], position[:, None], attend)

    def _each_query(self, q: torch.Tensor, cache: torch.Tensor, start: torch.Tensor, fresh: torch.Tensor, end: int) -> torch.Tensor:
        """Attention of each row's queries from column ``fresh`` to ``end`` (exclusive; ``q`` [rows, heads, width,
        dim] holds the last ``width`` columns) over that row's own columns from ``start`` to the query's, one
        query at a time: every query is then the same computation of the same shapes, whatever its batch, its
        neighbours' padding, its prefill chunk, or whether it is a prefill position or a decode step (so a
        turn that reuses the cache equals a fresh prefill). Other queries (padding, reused) give zeros.
        Returns [rows * width, heads * dim].

        On one thread: PyTorch's CPU attention splits one query's columns across its threads, so the same query
        gave other bits at 1 and 2 threads (measured: the 0.5B's first layer), and a record depended on the
        machine's cores (``cluster.cpus_per_task``, or cores / ``array_parallelism``)."""
        rows, heads, width, dim = q.shape
        out = q.new_zeros(rows, width, heads * dim)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for r, (first, own) in enumerate(zip(start.tolist(), fresh.tolist())):
                for column in range(max(own, end - width), end):
                    query = q[r : r + 1, :, column - end + width, None].contiguous()
                    keys, values = cache[0, r : r + 1, :, first : column + 1], cache[1, r : r + 1, :, first : column + 1]
                    attended = F.scaled_dot_product_attention(query, keys, values, scale=self.scale, enable_gqa=True)
                    out[r, column - end + width] = attended.reshape(-1)
        finally:
            torch.set_num_threads(threads)
        return out.view(rows * width, -1)

    # ---- the layers -----------------------------------------------------------------------------------
    def _logits(self, ids: torch.Tensor, positions: torch.Tensor, attend: Attend) -> torch.Tensor:
        """Logits of the last position of every row of ``ids`` [rows, length]. ``attend(layer, qkv, cos, sin)``
        rotates q and k of the layer's projections [tokens, heads + 2 kv heads, dim], stores the keys and
        values and returns the attention output [tokens, heads * dim]. The rest is the model's own arithmetic
        in fewer kernels: residual adds, norms and activation in PyTorch's ops, or in ``pipeline.engine.kernels``
        where they run (prefill and decode steps alike)."""
        base = self.model.model
        rows, length = ids.shape
        tokens = rows * length
        hidden = self._padded(base.embed_tokens(ids.reshape(-1)))  # [tokens, hidden]: the fused kernels take rows of one width
        cos, sin = base.rotary_emb(hidden[None], positions.reshape(1, -1))
        half = self.head_dim // 2
        # rotate_half(x) * sin == cat(x2, x1) * cat(-sin1, sin2), bit for bit: the kernels' form too
        cos, sin = cos[0], torch.cat((-sin[0, :, :half], sin[0, :, half:]), -1)
        delta = None
        for i, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            hidden, x = self._add_norm(layer.input_layernorm, hidden, delta)
            qkv = self._linear(x, *self.qkv[i]) if self.qkv else torch.cat((attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)), -1)
            out = self._padded(attend(i, qkv[:tokens].view(tokens, -1, self.head_dim), cos, sin))
            hidden, x = self._add_norm(layer.post_attention_layernorm, hidden, self._layer(attn.o_proj, out))
            if self.use_kernels:
                delta = self._layer(mlp.down_proj, kernels.silu_and_mul(self._linear(x, *self.gate_up[i])))
            else:
                gate, up = F.linear(x, *self.gate_up[i]).chunk(2, -1) if self.gate_up else (mlp.gate_proj(x), mlp.up_proj(x))
                delta = mlp.down_proj(mlp.act_fn(gate).mul_(up))  # in place: a prefill's [tokens, intermediate] temporary less
        last = slice(length - 1, tokens, length)  # each row's last position
        return self._layer(self.model.lm_head, self._padded(self._add_norm(base.norm, hidden[last], delta[last])[1]))[:rows]

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``F.linear``, or with batch invariance on a GPU the fixed-tile matmul kernel."""
        if self.invariant and self.use_kernels:
            return kernels.matmul(x, weight, bias, self.processors)
        return F.linear(x, weight, bias)

    def _layer(self, linear: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A linear layer of the model: its own ``forward`` (a float or an int8 layer), or its weights through
        ``_linear`` where that is the batch-invariant kernel."""
        if self.invariant and self.use_kernels:
            return self._linear(x, linear.weight, linear.bias)
        return linear(x)

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [tokens, ...] with zero rows after it up to ``min_rows`` (a CPU's float matmuls, batch-invariant)."""
        if len(x) >= self.min_rows:
            return x
        return torch.cat((x, x.new_zeros(self.min_rows - len(x), *x.shape[1:])))

    def _add_norm(self, norm: torch.nn.Module, hidden: torch.Tensor, delta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden + delta`` (in place with the kernels) and its norm: the residual add and the next norm."""
        if self.use_kernels:
            hidden = hidden.contiguous()
            return hidden, kernels.add_rms_norm(hidden, None if delta is None else delta.contiguous(), norm.weight, norm.variance_epsilon)
        hidden = hidden if delta is None else hidden + delta
        return hidden, _rms_norm(norm, hidden)

    def _rotate(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q and k of ``qkv`` [tokens, heads + 2 kv heads, dim] rotated (in place with the kernels), and v."""
        qk_heads = self.heads + self.kv_heads
        if self.use_kernels:
            qk = kernels.rotate(qkv, cos, sin, qk_heads)[:, :qk_heads]
        else:
            qk, half = qkv[:, :qk_heads], self.head_dim // 2
            qk = qk * cos[:, None] + torch.cat((qk[..., half:], qk[..., :half]), -1) * sin[:, None]
        return qk[:, : self.heads], qk[:, self.heads :], qkv[:, qk_heads:]
