"""The debate array: which problems each shard owns, and what its records must hold.

Kept apart from the shard runner (which loads torch and the models) so that the submitter, the status
command and the reducer read a run's plan in a fraction of a second.
"""

from __future__ import annotations

from pipeline.config import project_path
from pipeline.data import load_problems, shard_slice
from pipeline.run_config import RunConfig
from pipeline.settings import result_values
from pipeline.shards import RecordSchema, Unit, fingerprint


def shard_problems(config: RunConfig, shard: int, shards: int) -> list:
    """The problems one shard owns (a contiguous slice of the first ``limit`` problems)."""
    problems = load_problems(project_path(config.data.path) / f"{config.data.split}.jsonl", config.limit)
    return [problems[i] for i in shard_slice(len(problems), shard, shards)]


def debate_units(config: RunConfig) -> list[Unit]:
    """The debate array: one unit per shard, each a slice of the problems."""
    shards = config.shards
    return [Unit("", s, shards, tuple(p.index for p in shard_problems(config, s, shards))) for s in range(shards)]


# What every debate record holds (what the reducer reads).
RECORD_KEYS = ("index", "question", "gold", "turns", "final_answer", "final_turn", "agreed", "rounds", "correct",
               "first_answers", "solo", "vote", "tokens", "seconds")


def debate_schema(config: RunConfig, unit: Unit) -> RecordSchema:
    """The debate records' keys and the fingerprint of what decides them: the data, the models and their
    precision, the seed, and every debate setting that can change a result in this run (:func:`result_values`):
    the batching settings (``run_only_when`` on their fields of :class:`DebateSettings`) only in a run made
    without ``batch_invariant=true``, where they change tokens. The shard count is not in it: it changes no
    token of a batch-invariant run, and a resume must give the run's own count (a result key of the resume
    check), so one run's records never come from two counts. The settings added later count only when changed
    (``only_when_changed`` on their fields), so a run made before them still resumes."""
    models = config.models
    debate = result_values(config.debate)
    settings = {
        "data": config.data.split,
        "models": {"a": models.a, "b": models.b, "dtype": models.dtype},
        "seed": config.seed,
        "debate": debate,
    }
    return RecordSchema(RECORD_KEYS, fingerprint(settings))


# The reducer's main table and its plots in the run folder, with {where} (the step's folder).
TABLE = "{where}_accuracy.md"
PLOTS = ("{where}_accuracy_per_round.png", "{where}_vote_curve.png")
