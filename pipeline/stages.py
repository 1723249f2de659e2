"""The stages of the suite, by name (each stage package exports its own ``STAGE``), and the chain of
``stage=all``.

The submitter, the status command and ``stage=all`` see a stage only through this table, so a stage is
added in one place. A stage runs in a folder of the run (``where``): its own name, except in a
``stage=all`` chain, where the eval stage runs twice (``eval`` and ``eval_finetuned``).
"""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline import config, debate, harness, train
from pipeline.settings import defaults, loose_keys
from pipeline.stage import Stage

STAGES: dict[str, Stage] = {s.name: s for s in (debate.STAGE, harness.STAGE, train.STAGE)}
# Each stage's section of the config (``debate.*``, ``eval.*``, ``train.*``): its settings' defaults.
SECTIONS = {name: defaults(stage.settings) for name, stage in STAGES.items() if stage.settings is not None}
LOOSE = frozenset(key for name, stage in STAGES.items() if stage.settings is not None for key in loose_keys(stage.settings, name))

# stage=all: (folder, stage) in order; each step starts after the one before it has ended.
CHAIN = (("eval", "eval"), ("train", "train"), ("eval_finetuned", "eval"), ("debate", "debate"))


def load_config(overrides: list[str]) -> DictConfig:
    """``configs/`` and the stages' sections composed with the overrides; the common keys checked."""
    return config.load_config(overrides, SECTIONS, LOOSE)


def load_defaults() -> DictConfig:
    """The config with no override (what ``--help`` lists)."""
    return config.load_defaults(SECTIONS)


def checked_config(overrides: list[str]) -> DictConfig:
    """The config with the overrides, its common keys checked (``load_config``) and then the keys of every
    stage it runs (``stage=all``: all three), each by its own stage."""
    cfg = load_config(overrides)
    names = dict.fromkeys(name for _, name in CHAIN) if cfg.stage == "all" else (cfg.stage,)
    for name in names:
        STAGES[name].check(cfg)
    return cfg
