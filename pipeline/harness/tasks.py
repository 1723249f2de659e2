"""The lm-eval task configs of the suite (``configs/lm_eval_tasks/*.yaml``), made to read the vendored GSM8K.

The YAMLs mirror lm-eval's own task files but name no hub dataset: ``dataset_path: json`` and the data
files are filled in here from ``data.path`` / ``data.split``, so no task ever reaches the hub. What lm-eval
takes as run options rather than task config (``apply_chat_template``, ``fewshot_as_multiturn``) sits
under the task's ``metadata.run`` and can be overridden for every task with ``eval.<option>=true|false``.
Any other task name is lm-eval's own or a task folder's (``pipeline/harness/other_tasks.py``).
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import CONFIG_DIR, ConfigError

TASKS_DIR = CONFIG_DIR / "lm_eval_tasks"
RUN_OPTIONS = ("apply_chat_template", "fewshot_as_multiturn")


def task_names() -> list[str]:
    """Every task the eval stage can run: the YAML files under ``configs/lm_eval_tasks/``."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


@lru_cache(maxsize=None)
def _load(name: str) -> dict[str, Any]:
    path = TASKS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown task '{name}'; valid tasks: {', '.join(task_names())}")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    if config.get("task") != name:
        raise ConfigError(f"{path}: its 'task:' is {config.get('task')!r}; it must match the file name {name!r}")
    return config


def task_config(name: str, data_dir: Path, split: str) -> dict[str, Any]:
    """The lm-eval task config for ``name``, reading ``<data_dir>/train.jsonl`` (few-shot pool) and
    ``<data_dir>/<split>.jsonl`` (the questions), with the suite's run options removed."""
    config = copy.deepcopy(_load(name))
    config["dataset_path"] = "json"
    config.pop("dataset_name", None)
    config["dataset_kwargs"] = {"data_files": {"train": str(data_dir / "train.jsonl"), "test": str(data_dir / f"{split}.jsonl")}}
    config.get("metadata", {}).pop("run", None)
    return config


def is_vendored(name: str) -> bool:
    """A task of ``configs/lm_eval_tasks/``: it reads the vendored GSM8K, and its name wins over lm-eval's own."""
    return (TASKS_DIR / f"{name}.yaml").is_file()


def run_options(name: str, overrides: dict[str, Any]) -> dict[str, bool]:
    """``apply_chat_template`` and ``fewshot_as_multiturn`` for a task: the config's, else a vendored task's
    YAML's, else lm-eval's CLI defaults (no chat template; few-shot examples as turns when there is one)."""
    own = _load(name).get("metadata", {}).get("run", {}) if is_vendored(name) else {}
    chat = overrides.get("apply_chat_template")
    chat = bool(own.get("apply_chat_template", False) if chat is None else chat)
    turns = overrides.get("fewshot_as_multiturn")
    options = {"apply_chat_template": chat, "fewshot_as_multiturn": bool(own.get("fewshot_as_multiturn", chat) if turns is None else turns)}
    if options["fewshot_as_multiturn"] and not options["apply_chat_template"]:
        raise ConfigError(f"task {name}: fewshot_as_multiturn needs apply_chat_template (lm-eval refuses it otherwise)")
    return options
