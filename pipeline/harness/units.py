"""The eval array: model x task x shard, and what each shard's records must hold.

Kept apart from the shard runner (which loads lm-eval, torch and the model) so that the submitter, the
status command and the reducer read a run's plan in a fraction of a second.
"""

from __future__ import annotations

from pipeline.config import project_path
from pipeline.data import load_problems, shard_slice
from pipeline.harness.tasks import is_vendored
from pipeline.run_config import RunConfig
from pipeline.settings import result_values
from pipeline.shards import RecordSchema, Unit, fingerprint


def questions(config: RunConfig) -> list:
    """The first ``limit`` questions of the configured split."""
    return load_problems(project_path(config.data.path) / f"{config.data.split}.jsonl", config.limit)


def documents(config: RunConfig, task: str) -> int:
    """How many of a task's documents are evaluated: a vendored task's first ``limit`` questions; another
    task's first ``limit`` documents, or with ``limit=null`` as many as data.split has (the submitter refuses
    such a task unless its count is that)."""
    if is_vendored(task) or config.limit is None:
        return len(questions(config))
    return config.limit


def eval_units(config: RunConfig) -> list[Unit]:
    """The eval array: model x task x shard, each shard a contiguous slice of the task's first documents."""
    shards = config.shards
    return [
        Unit(f"{model}/{task}", s, shards, tuple(shard_slice(documents(config, task), s, shards)))
        for model in config.eval.models
        for task in config.tasks
        for s in range(shards)
    ]


# What every eval record holds (what the reducer reads).
RECORD_KEYS = ("index", "task", "model", "prompt", "response", "gold", "extracted", "correct", "seconds")


def eval_schema(config: RunConfig, unit: Unit) -> RecordSchema:
    """The eval records' keys and the fingerprint of what decides one part's records: its model and the
    precision, the data, the seed and the lm-eval settings (:func:`result_values`). No eval runs batch-invariant
    (``generate`` and the static decoder's ``EVAL_DECODER`` pick their kernels by the batch's shape), so the
    batch and chunk sizes are among them, and so is the engine: the static decoder gives ``generate``'s tokens in
    float32, but in half precision on a GPU its other kernels may change a response, so a part's records come
    from one engine. Those, and the lm-eval options added later, count only when changed (``only_when_changed``
    on their fields), so a run made before them still resumes. A part's model is in it by name, not the list
    of the run's models; a vendored task's YAML is the project's own, so ``include_path`` does not count for it."""
    key, task = unit.part.split("/")
    ev = result_values(config.eval)
    del ev["models"]
    if is_vendored(task):
        ev.pop("include_path", None)
    settings = {
        "data": config.data.split, "model": getattr(config.models, key), "dtype": config.models.dtype, "task": task,
        "seed": config.seed, "eval": ev,
    }
    return RecordSchema(RECORD_KEYS, fingerprint(settings))


# The reducer's main table and its plots in the run folder, with {where} (the step's folder).
TABLE = "{where}_accuracy.md"
PLOTS = ("{where}_accuracy.png",)


def describe_eval(config: RunConfig, problems: int) -> str:
    """The eval array in its own units: models x tasks, each sharded."""
    return f"{len(config.eval.models)} model(s) x {len(config.tasks)} task(s) on {problems} problems, {config.shards} shard(s) each"
