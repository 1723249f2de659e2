"""The eval array: model x task x shard, and what each shard's records must hold.

Kept apart from the shard runner (which loads lm-eval, torch and the model) so that the submitter, the
status command and the reducer read a run's plan in a fraction of a second.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import project_path
from pipeline.data import load_problems, shard_slice
from pipeline.shards import RecordSchema, Unit, fingerprint


def questions(config: dict[str, Any]) -> list:
    """The first ``limit`` questions of the configured split."""
    data = config["data"]
    return load_problems(project_path(data["path"]) / f"{data['split']}.jsonl", config["limit"])


def eval_units(config: dict[str, Any]) -> list[Unit]:
    """The eval array: model x task x shard, each shard a contiguous slice of the first ``limit`` questions."""
    total, shards = len(questions(config)), int(config["shards"])
    return [
        Unit(f"{model}/{task}", s, shards, tuple(shard_slice(total, s, shards)))
        for model in config["eval"]["models"]
        for task in config["tasks"]
        for s in range(shards)
    ]


# What every eval record holds (what the reducer reads).
RECORD_KEYS = ("index", "task", "model", "prompt", "response", "gold", "extracted", "correct", "seconds")


def eval_schema(config: dict[str, Any], unit: Unit) -> RecordSchema:
    """The eval records' keys and the fingerprint of what decides one part's records: its model and the
    precision, the data, the seed and the generation settings (not the batch or chunk sizes)."""
    key, task = unit.part.split("/")
    ev = config["eval"]
    settings = {
        "data": config["data"]["split"], "model": config["models"][key], "dtype": config["models"]["dtype"], "task": task,
        "seed": config["seed"], "eval": {k: ev[k] for k in ("max_gen_toks", "apply_chat_template", "fewshot_as_multiturn")},
    }
    return RecordSchema(RECORD_KEYS, fingerprint(settings))


# The reducer's main table and its plots in the run folder, with {where} (the step's folder).
TABLE = "{where}_accuracy.md"
PLOTS = ("{where}_accuracy.png",)
