"""Random-weight models of real shapes, for benchmarks: speed depends on shapes, not on values."""

from __future__ import annotations

from typing import Any

import torch

# Shapes of the real pair (from their config.json files); the weights are random.
REAL_SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": dict(arch="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0, tie_word_embeddings=False,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 8192}),
    "qwen2-7b": dict(arch="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, rope_theta=1000000.0, tie_word_embeddings=False),
    # The default (small) pair: Qwen2.5-Coder-1.5B-Instruct and -0.5B-Instruct.
    "qwen2.5-1.5b": dict(arch="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=False),
    "qwen2.5-0.5b": dict(arch="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=True),
}


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


def random_causal_lm(shape: str, dtype: torch.dtype, device: torch.device) -> Any:
    """A random-weight causal LM of one of ``REAL_SHAPES``, in eval mode, with SDPA attention."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    spec = dict(REAL_SHAPES[shape])
    arch = spec.pop("arch")
    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    config = config_cls(**spec, max_position_embeddings=131072 if arch == "llama" else 32768, attn_implementation="sdpa")
    return build_on_device(model_cls, config, dtype, device).eval()
