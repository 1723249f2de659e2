"""Random-weight models of real shapes, for benchmarks: speed depends on shapes, not on values."""

from __future__ import annotations

from typing import Any

import torch


def build_on_device(model_cls: Any, config: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """``model_cls(config)`` created directly on ``device`` in ``dtype``: an 8B model never passes through a
    full-precision copy in host memory."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return model_cls(config)
    finally:
        torch.set_default_dtype(default)
