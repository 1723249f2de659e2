"""The debate stage's own keys, checked before anything is submitted (the stage table runs it)."""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.config import ConfigError, require_bool, require_choice, require_int, require_number
from pipeline.engine import ENGINES, KERNELS

FINAL_ANSWER_RULES = ("last", "a", "b")
DEBATE_DEVICES = ("auto", "shared", "split")


def check_debate(cfg: DictConfig) -> None:
    """The debate stage's keys (``debate.*``): types, ranges, choices, the prompts' placeholders."""
    require_int(cfg, "debate.max_rounds", 1)
    require_int(cfg, "debate.max_new_tokens", 1)
    require_int(cfg, "debate.batch_size", 1)
    require_int(cfg, "debate.prefill_tokens", 1)
    require_choice(cfg, "debate.engine", ENGINES)
    require_choice(cfg, "debate.kernels", KERNELS)
    for key in ("debate.cuda_graphs", "debate.reuse_kv"):
        require_bool(cfg, key)
    require_choice(cfg, "debate.devices", DEBATE_DEVICES)
    require_int(cfg, "debate.baselines.vote_k", 1, nullable=True)
    require_choice(cfg, "debate.final_answer", FINAL_ANSWER_RULES)
    for key in ("debate.temperature", "debate.baselines.vote_temperature"):
        require_number(cfg, key, 0.0)
    for name, placeholder in (("solve", "{question}"), ("review", "{other}")):
        if placeholder not in cfg.debate.prompts[name]:
            raise ConfigError(f"debate.prompts.{name} must contain the placeholder {placeholder}")
    bad = [m for m in cfg.debate.baselines.vote_models if m not in ("a", "b")]
    if bad:
        raise ConfigError(f"debate.baselines.vote_models has '{bad[0]}'; valid entries: a, b")
