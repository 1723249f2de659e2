"""int8 linear layers whose rows do not depend on each other (``models.dtype=int8``, a CPU mode).

torch's dynamic int8 layers quantize a whole input with one scale, so a row's numbers depend on its batch
mates' outliers, and a question's answer on how its shard was batched (measured: 8 of 12 answers changed
between ``shards=1`` and ``shards=3``). Here each row has its own activation scale and the products are
summed in integers, which is exact in any order: a row's output is a function of that row alone, whatever
the batch, its size or the kernel's blocking.

The integer product runs in oneDNN with the weight packed once at load (``onednn::qlinear_pointwise``: about
twice ``torch._int_mm``'s speed at a decode step's 4-16 rows, measured; prefills run as fast either way). It
takes unsigned activations, so a row's int8 values enter shifted by 128 with 128 as their zero point; the sums
are the same integers. Where oneDNN's product is not exact (CPUs without VNNI may saturate pairs of products in
16 bits) or absent, a probe at the first layer finds it and every layer keeps ``torch._int_mm``.
"""

from __future__ import annotations

import functools

import torch

# The largest int8 magnitude used: symmetric, so that zero is exact and no zero point enters the sums.
_LEVELS = 127
# oneDNN's activations are unsigned: a row's int8 value v enters as v + _SHIFT, with _SHIFT as its zero point.
_SHIFT = 128
# Output channels quantized at a time: the temporaries of a whole weight (the 1.5B's head is 0.9 GB in float32)
# cost more in fresh memory than in arithmetic; blocks of this many rows stay in cache and give the same bits.
_BLOCK_ROWS = 256
# oneDNN's scales and the weights' zero point, all neutral: it returns the integer sums as float32, and the
# layer applies its own scales in its own order.
_ONE = torch.ones(1)
_ZERO = torch.zeros(1, dtype=torch.int64)


def unsigned(values: torch.Tensor) -> torch.Tensor:
    """int8 values as oneDNN takes them: shifted by ``_SHIFT`` into uint8."""
    return (values.to(torch.int16) + _SHIFT).to(torch.uint8)


def _onednn_product(activations: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """The int32 sums of ``activations`` (int8 values shifted to uint8) times a packed int8 weight, as float32."""
    return torch.ops.onednn.qlinear_pointwise(activations, 1.0, _SHIFT, packed, _ONE, _ZERO, None, 1.0, 0, torch.float32, "none", [], "")


@functools.cache
def onednn_is_exact() -> bool:
    """Whether this CPU's oneDNN int8 product gives ``torch._int_mm``'s sums on a worst case: every product at
    +-127 x 127 (where 16-bit pair sums would saturate) and a random mix, at 1 and 17 rows."""
    if not hasattr(torch.ops.onednn, "qlinear_prepack"):
        return False
    generator = torch.Generator().manual_seed(0)
    weight = torch.randint(-_LEVELS, _LEVELS + 1, (48, 256), dtype=torch.int8, generator=generator)
    weight[:8] = _LEVELS
    weight[8:16] = -_LEVELS
    values = torch.randint(-_LEVELS, _LEVELS + 1, (17, 256), dtype=torch.int8, generator=generator)
    values[:4] = _LEVELS
    values[4:8] = -_LEVELS
    try:
        packed = torch.ops.onednn.qlinear_prepack(weight, None)
        for rows in (values[:1], values):
            if not torch.equal(_onednn_product(unsigned(rows), packed), torch._int_mm(rows, weight.t()).float()):
                return False
    except RuntimeError:
        return False
    return True


class RowInt8Linear(torch.nn.Module):
    """A linear layer with int8 weights (one scale per output channel) and int8 activations (one scale per
    row), multiplied in int32 (exact: K x 127 x 127 < 2^31 for any layer width below 133,000) and scaled back
    to the input's float dtype. ``weight_int8`` is the [in, out] matrix, packed for oneDNN where
    ``onednn_is_exact()`` (``matrix()`` gives it plain either way)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        scale = torch.empty(linear.out_features)
        quantized = torch.empty(linear.out_features, linear.in_features, dtype=torch.int8)
        for start in range(0, linear.out_features, _BLOCK_ROWS):
            rows = weight[start : start + _BLOCK_ROWS].float()
            block_scale = rows.abs().amax(1).clamp(min=torch.finfo(torch.float32).tiny) / _LEVELS
            scale[start : start + _BLOCK_ROWS] = block_scale
            quantized[start : start + _BLOCK_ROWS] = torch.round(rows / block_scale[:, None])
        self.packed = onednn_is_exact()
        # oneDNN's packed layout, or [in, out] with the input dimension contiguous per output column (the layout
        # torch._int_mm reads fastest).
        self.register_buffer("weight_int8", torch.ops.onednn.qlinear_prepack(quantized, None) if self.packed else quantized.t())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def matrix(self) -> torch.Tensor:
        """The int8 weight as a plain [in, out] tensor, whichever way it is stored."""
        return self.weight_int8.to_dense() if self.packed else self.weight_int8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        scale = rows.abs().amax(1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny) / _LEVELS
        # In place after the first temporary of each side: the same arithmetic in the same order, without a fresh
        # tensor per step (at a prefill's thousands of rows, faulting those in cost a quarter of the layer's time).
        quantized = torch.div(rows, scale).round_().clamp_(-_LEVELS, _LEVELS)
        if self.packed:
            out = _onednn_product(quantized.add_(_SHIFT).to(torch.uint8), self.weight_int8)
        else:
            # The int32 sums become float32 in their own memory (same size, each element read before it is written).
            sums = torch._int_mm(quantized.to(torch.int8), self.weight_int8)
            out = sums.view(torch.float32).copy_(sums)
        out.mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, per-row int8" + (", oneDNN" if self.packed else "")


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Every ``nn.Linear`` of ``model`` replaced, in place, by a ``RowInt8Linear`` (tied weights stay tied in
    float where they are also the embedding: only the linear layer's copy is quantized)."""
    for name, child in list(model.named_children()):
        if isinstance(child, torch.nn.Linear):
            setattr(model, name, RowInt8Linear(child))
        else:
            quantize_int8(child)
    return model
