"""Tasks other than the vendored ones: lm-eval's own (``gsm8k_cot_zeroshot``, ...) and those of a task folder
(``eval.include_path``), found by name in lm-eval's ``TaskManager``.

Such a task reads its own dataset through ``datasets``, offline unless ``HF_DATASETS_OFFLINE=0``: it runs only
where the Hugging Face cache holds it. The submitter loads it once (:func:`check_task`) so that a task that
cannot run is one line there, not a traceback in every shard. Its documents are sliced into shards by index
(lm-eval's ``samples=``), like the vendored tasks' questions.

lm-eval is imported inside the functions: the status command and the reducer read the plan without it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from pipeline.config import ConfigError, project_path
from pipeline.harness.tasks import task_names


@lru_cache(maxsize=None)
def _manager(include_path: str | None, defaults: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=defaults)


def task_manager(name: str, include_path: str | None) -> Any:
    """The ``TaskManager`` that knows ``name``: the task folder's alone when the task is there (indexing
    lm-eval's own few thousand tasks takes about 10 s), else lm-eval's own tasks and the folder's."""
    folder = str(project_path(include_path)) if include_path else None
    if folder is not None and name in _manager(folder, False).all_tasks:
        return _manager(folder, False)
    return _manager(folder, True)


def check_task(name: str, include_path: str | None, documents: int, limit: int | None) -> None:
    """Refuses, in one line, a task lm-eval does not know, a group, a task whose dataset cannot be loaded here,
    one that does not generate and score exact_match (the records hold a verdict per filter), and one with
    fewer documents than are to be evaluated (``documents``: ``limit``, or with ``limit=null`` the questions of
    ``data.split``, which such a task must then match)."""
    from lm_eval.tasks._index import Kind

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    manager = task_manager(name, include_path)
    if name not in manager.all_tasks:
        where = f", nor in eval.include_path={include_path}" if include_path else ""
        raise ConfigError(f"unknown task '{name}': not a vendored task ({', '.join(task_names())}), nor one of lm-eval's{where}")
    if manager.task_index[name].kind in (Kind.GROUP, Kind.TAG):
        raise ConfigError(f"task {name}: an lm-eval group of tasks; name its tasks one by one in tasks=")
    try:
        task = manager.load([name])["tasks"][name]
    except Exception as err:  # noqa: BLE001 - datasets, hub and YAML errors alike: each is one line for the user
        offline = " offline (HF_DATASETS_OFFLINE=1; is its dataset in the Hugging Face cache?)" if os.environ["HF_DATASETS_OFFLINE"] == "1" else ""
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"task {name}: cannot be loaded{offline}: {type(err).__name__}: {first}") from None
    metrics = [m["metric"] for m in task.config.metric_list or []]
    if task.OUTPUT_TYPE != "generate_until" or "exact_match" not in metrics:
        raise ConfigError(f"task {name}: output_type {task.OUTPUT_TYPE} with metrics {metrics}; the eval stage runs "
                          "tasks that generate and score exact_match (as GSM8K's do)")
    have = len(task.eval_docs)
    if limit is None and have != documents:
        raise ConfigError(f"task {name}: {have} documents, not the {documents} questions of data.split; give limit=N "
                          f"(1..{have}) to evaluate its first N")
    if have < documents:
        raise ConfigError(f"limit={limit}: task {name} has only {have} documents; use limit=1..{have}")
