"""The eval stage's own keys, checked before anything is submitted (the stage table runs it)."""

from __future__ import annotations

import re

from omegaconf import DictConfig, ListConfig, OmegaConf

from pipeline.config import ConfigError, project_path
from pipeline.harness.settings import EvalSettings
from pipeline.harness.tasks import RUN_OPTIONS, is_vendored, run_options, task_names
from pipeline.harness.units import questions
from pipeline.settings import check


def check_eval(cfg: DictConfig) -> None:
    """The eval stage's keys (``tasks``, ``eval.*``): known tasks, each once, each setting against its field
    in :class:`EvalSettings`, the batch size's forms, the lm-eval run options each task allows and the
    generation settings."""
    tasks = list(cfg.tasks) if isinstance(cfg.tasks, ListConfig) else [cfg.tasks]
    if not tasks:
        raise ConfigError(f"tasks=[]: give at least one task; vendored tasks: {', '.join(task_names())}")
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"tasks={tasks}: a task is listed twice")
    check(cfg, "eval", EvalSettings)
    batch = cfg.eval.batch_size
    if not ((isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1) or re.fullmatch(r"auto(:[1-9][0-9]*)?", str(batch))):
        raise ConfigError(f"eval.batch_size={batch}: must be a whole number >= 1, auto, or auto:N")
    instruction = cfg.eval.system_instruction
    if instruction is not None and (not isinstance(instruction, str) or not instruction.strip()):
        raise ConfigError(f"eval.system_instruction={instruction}: must be a text (quote it: eval.system_instruction='...') or null")
    folder = cfg.eval.include_path
    if folder is not None and not (isinstance(folder, str) and project_path(folder).is_dir()):
        raise ConfigError(f"eval.include_path={folder}: no such folder (give a folder of lm-eval task YAMLs, or null)")
    for task in tasks:
        run_options(task, {k: cfg.eval[k] for k in RUN_OPTIONS})
    others = [task for task in tasks if not is_vendored(task)]
    if others:
        from pipeline.harness.other_tasks import check_task  # lm-eval: only for tasks that need it

        try:
            documents = len(questions(OmegaConf.to_container(cfg, resolve=True)))
        except (OSError, ValueError) as err:
            raise ConfigError(str(err)) from None
        for task in others:
            check_task(task, folder, cfg.limit if cfg.limit is not None else documents, cfg.limit)
