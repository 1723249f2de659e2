"""The inference engine: batched chat generation (``generation``) over the static decoder (``decode``: rows
leaving as they stop), which schedules the model's forward math (``forward``: fused projections, attention
over its cache) and its Triton kernels (``kernels``) over its KV cache (``kv_cache``) and CUDA graphs
(``graphs``), turn-to-turn prefix reuse (``prefix_cache``), per-row seeded sampling (``sampling``) and the
limits its phases are timed against (``roofline``); a job's decoders and the memory they share have one
owner (``memory``). It knows models and tokens, not runs, stages or configs; the debate stage drives it.

This module is light on purpose (no torch): the choices below are what a config may name, and the config
checks read them here without loading the engine; ``DecoderOptions`` is what a stage's settings hand the
static decoder, built here for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass

# debate.engine, eval.engine: the static decoder where it supports the model (auto), always (static), or
# transformers' generate.
ENGINES = ("auto", "static", "generate")
# debate.kernels: the decoder's Triton kernels where the GPU runs them (auto), always (triton), or PyTorch's (torch).
KERNELS = ("auto", "triton", "torch")
# GenerationConfig fields that leave greedy tokens as they are: sampling's knobs (ignored while do_sample is
# off), the ids and lengths the static decoder takes as inputs, and what generate returns besides the tokens.
# Any other field set (repetition_penalty, num_beams, min_new_tokens, ...) changes tokens the static decoder
# would not change, so a request that sets one is not the static decoder's (lm-eval: eval.engine).
GREEDY_NEUTRAL = frozenset({
    "do_sample", "temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff",
    "bos_token_id", "eos_token_id", "pad_token_id", "max_length", "use_cache", "cache_implementation",
    "return_dict_in_generate", "output_scores", "output_logits", "output_attentions", "output_hidden_states",
    "transformers_version", "_from_model_config",
})


@dataclass(frozen=True)
class DecoderOptions:
    """The static decoder's knobs, one object from the stage that sets them (``DebateSettings.decoder_options``;
    the eval stage's fixed ones in ``harness.model``) down to the decoder, never loose arguments on the way.
    The defaults are ``debate.*``'s, for tests and benchmarks."""

    # Replay each decode step as a CUDA graph (a GPU only).
    cuda_graphs: bool = True
    # One of KERNELS: the Triton kernels where they run (auto), always (triton), or PyTorch's (torch).
    kernels: str = "auto"
    # A call starts each row from the cache row holding its longest prefix (the model's previous turn).
    reuse_kv: bool = True
    # Prompts are prefilled in groups of rows of at most this many tokens.
    prefill_tokens: int = 16384
    # Each row's numbers independent of its batch; None: on a CPU, off on a GPU.
    batch_invariant: bool | None = None
