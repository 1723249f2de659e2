"""The inference engine: batched chat generation (``generation``) over the static decoder (``decode``: KV
cache, CUDA graphs, rows leaving as they stop), which schedules the model's forward math (``forward``: fused
projections, attention over its cache) and its Triton kernels (``kernels``), turn-to-turn prefix reuse
(``prefix_cache``), per-row seeded sampling (``sampling``) and the limits its phases are timed against
(``roofline``). It knows models and tokens, not runs, stages or configs; the debate stage drives it.

This module is light on purpose (no torch): the choices below are what a config may name, and the config
checks read them here without loading the engine.
"""

# debate.engine: the static decoder where it supports the model (auto), always (static), or transformers' generate.
ENGINES = ("auto", "static", "generate")
# debate.kernels: the decoder's Triton kernels where the GPU runs them (auto), always (triton), or PyTorch's (torch).
KERNELS = ("auto", "triton", "torch")
