"""int8 linear layers whose rows do not depend on each other (``models.dtype=int8``, a CPU mode).

torch's dynamic int8 layers quantize a whole input with one scale, so a row's numbers depend on its batch
mates' outliers, and a question's answer on how its shard was batched (measured: 8 of 12 answers changed
between ``shards=1`` and ``shards=3``). Here each row has its own activation scale and the products are
summed in integers, which is exact in any order: a row's output is a function of that row alone, whatever
the batch, its size or the kernel's blocking.
"""

from __future__ import annotations

import torch

# The largest int8 magnitude used: symmetric, so that zero is exact and no zero point enters the sums.
_LEVELS = 127
# Output channels quantized at a time: the temporaries of a whole weight (the 1.5B's head is 0.9 GB in float32)
# cost more in fresh memory than in arithmetic; blocks of this many rows stay in cache and give the same bits.
_BLOCK_ROWS = 256


class RowInt8Linear(torch.nn.Module):
    """A linear layer with int8 weights (one scale per output channel) and int8 activations (one scale per
    row), multiplied in int32 (``torch._int_mm``: exact, K x 127 x 127 < 2^31 for any layer width below
    133,000) and scaled back to the input's float dtype."""

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
        # [in, out] with the input dimension contiguous per output column: the layout the int8 matmul reads fastest.
        self.register_buffer("weight_int8", quantized.t())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        scale = rows.abs().amax(1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny) / _LEVELS
        # In place after the first temporary of each side: the same arithmetic in the same order, without a fresh
        # tensor per step (at a prefill's thousands of rows, faulting those in cost a quarter of the layer's time).
        # The int32 sums become float32 in their own memory (same size, each element read before it is written).
        quantized = torch.div(rows, scale).round_().clamp_(-_LEVELS, _LEVELS).to(torch.int8)
        sums = torch._int_mm(quantized, self.weight_int8)
        out = sums.view(torch.float32).copy_(sums).mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, per-row int8"


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Every ``nn.Linear`` of ``model`` replaced, in place, by a ``RowInt8Linear`` (tied weights stay tied in
    float where they are also the embedding: only the linear layer's copy is quantized)."""
    for name, child in list(model.named_children()):
        if isinstance(child, torch.nn.Linear):
            setattr(model, name, RowInt8Linear(child))
        else:
            quantize_int8(child)
    return model
