"""The eval stage's own keys, checked before anything is submitted (the stage table runs it)."""

from __future__ import annotations

import re

from omegaconf import DictConfig, ListConfig

from pipeline.config import ConfigError, require_int
from pipeline.harness.tasks import run_options, task_names


def check_eval(cfg: DictConfig) -> None:
    """The eval stage's keys (``tasks``, ``eval.*``): known tasks, each once, the models, batch sizes, and
    the run options each task allows."""
    valid = task_names()
    tasks = list(cfg.tasks) if isinstance(cfg.tasks, ListConfig) else [cfg.tasks]
    if not tasks:
        raise ConfigError(f"tasks=[]: give at least one task; valid tasks: {', '.join(valid)}")
    for task in tasks:
        if task not in valid:
            raise ConfigError(f"unknown task '{task}'; valid tasks: {', '.join(valid)}")
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"tasks={tasks}: a task is listed twice")
    models = list(cfg.eval.models)
    if not models or any(m not in ("a", "b") for m in models) or len(set(models)) != len(models):
        raise ConfigError(f"eval.models={models}: list a and/or b (the models of the pair), each once")
    batch = cfg.eval.batch_size
    if not ((isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1) or re.fullmatch(r"auto(:[1-9][0-9]*)?", str(batch))):
        raise ConfigError(f"eval.batch_size={batch}: must be a whole number >= 1, auto, or auto:N")
    require_int(cfg, "eval.max_batch_size", 1)
    require_int(cfg, "eval.cpu_batch_size", 1)
    require_int(cfg, "eval.chunk_size", 1)
    require_int(cfg, "eval.max_gen_toks", 1, nullable=True)
    for key in ("apply_chat_template", "fewshot_as_multiturn"):
        if cfg.eval[key] is not None and not isinstance(cfg.eval[key], bool):
            raise ConfigError(f"eval.{key}={cfg.eval[key]}: must be true, false or null (null: the task's own)")
    for task in tasks:
        run_options(task, {k: cfg.eval[k] for k in ("apply_chat_template", "fewshot_as_multiturn")})
