"""The eval stage's own keys, checked before anything is submitted (the stage table runs it)."""

from __future__ import annotations

import re

from omegaconf import DictConfig, ListConfig

from pipeline.config import ConfigError
from pipeline.harness.settings import EvalSettings
from pipeline.harness.tasks import run_options, task_names
from pipeline.settings import check


def check_eval(cfg: DictConfig) -> None:
    """The eval stage's keys (``tasks``, ``eval.*``): known tasks, each once, each setting against its field
    in :class:`EvalSettings`, the batch size's forms, and the run options each task allows."""
    valid = task_names()
    tasks = list(cfg.tasks) if isinstance(cfg.tasks, ListConfig) else [cfg.tasks]
    if not tasks:
        raise ConfigError(f"tasks=[]: give at least one task; valid tasks: {', '.join(valid)}")
    for task in tasks:
        if task not in valid:
            raise ConfigError(f"unknown task '{task}'; valid tasks: {', '.join(valid)}")
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"tasks={tasks}: a task is listed twice")
    check(cfg, "eval", EvalSettings)
    batch = cfg.eval.batch_size
    if not ((isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1) or re.fullmatch(r"auto(:[1-9][0-9]*)?", str(batch))):
        raise ConfigError(f"eval.batch_size={batch}: must be a whole number >= 1, auto, or auto:N")
    for task in tasks:
        run_options(task, {k: cfg.eval[k] for k in ("apply_chat_template", "fewshot_as_multiturn")})
