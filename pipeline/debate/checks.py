"""The debate stage's own keys, checked before anything is submitted (the stage table runs it): each
setting against its field in :class:`DebateSettings`, then what no single field can say."""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.debate.settings import DebateSettings
from pipeline.settings import check


def check_debate(cfg: DictConfig) -> None:
    """The debate stage's keys (``debate.*``): types, ranges, choices, the prompts' placeholders (each
    declared on its field)."""
    check(cfg, "debate", DebateSettings)
