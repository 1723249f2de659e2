"""The eval stage's own keys, checked before anything is submitted (the stage table runs it)."""

from __future__ import annotations

import re

from omegaconf import DictConfig, ListConfig, OmegaConf

from pipeline.config import ConfigError, project_path
from pipeline.engine import GREEDY_NEUTRAL
from pipeline.harness.settings import EvalSettings
from pipeline.harness.tasks import RUN_OPTIONS, is_vendored, run_options, task_names
from pipeline.harness.units import questions
from pipeline.run_config import load
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
    _check_engine(cfg.eval.engine, cfg.eval.gen_kwargs)
    folder = cfg.eval.include_path
    if folder is not None and not (isinstance(folder, str) and project_path(folder).is_dir()):
        raise ConfigError(f"eval.include_path={folder}: no such folder (give a folder of lm-eval task YAMLs, or null)")
    for task in tasks:
        run_options(task, {k: cfg.eval[k] for k in RUN_OPTIONS})
    others = [task for task in tasks if not is_vendored(task)]
    if others:
        from pipeline.harness.other_tasks import check_task  # lm-eval: only for tasks that need it

        try:
            documents = len(questions(load(OmegaConf.to_container(cfg, resolve=True), {})))
        except (OSError, ValueError) as err:
            raise ConfigError(str(err)) from None
        for task in others:
            check_task(task, folder, cfg.limit if cfg.limit is not None else documents, cfg.limit)


def _check_engine(engine: str, gen_kwargs: DictConfig | None) -> None:
    """``eval.engine=static`` decodes greedily and nothing else: generation settings that sample or change
    greedy tokens (``repetition_penalty``, ``num_beams``) are refused here rather than in every shard
    (``auto`` sends such requests to ``generate``). A task's own settings and the model's generation config
    are read only in the shard, where the model is."""
    if engine != "static" or gen_kwargs is None:
        return
    settings = OmegaConf.to_container(gen_kwargs)
    sampled = settings.get("do_sample") is True or (settings.get("do_sample") is None and float(settings.get("temperature") or 0) > 0)
    other = sorted(set(settings) - {"until"} - GREEDY_NEUTRAL)
    if sampled or other:
        what = "sampling (do_sample, temperature > 0)" if sampled else ", ".join(f"eval.gen_kwargs.{k}" for k in other)
        raise ConfigError(f"eval.engine=static decodes greedily only, not {what}; use eval.engine=generate (or auto)")
