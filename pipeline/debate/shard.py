"""One debate shard task: load both models once, run the shard's open problems, append records."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from pipeline.config import project_path
from pipeline.data import load_problems, shard_slice
from pipeline.debate.engine import DebateEngine, DebateSettings
from pipeline.models.device import pick_devices
from pipeline.models.loading import load_chat_model
from pipeline.models.registry import load_registry, resolve_model
from pipeline.shards import RecordSchema, ShardWriter, Unit, fingerprint
from pipeline.tasks import ShardTask

log = logging.getLogger(__name__)


def shard_problems(config: dict[str, Any], shard: int, shards: int) -> list:
    """The problems one shard owns (a contiguous slice of the first ``limit`` problems)."""
    data = config["data"]
    problems = load_problems(project_path(data["path"]) / f"{data['split']}.jsonl", config["limit"])
    return [problems[i] for i in shard_slice(len(problems), shard, shards)]


def debate_units(config: dict[str, Any]) -> list[Unit]:
    """The debate array: one unit per shard, each a slice of the problems."""
    shards = int(config["shards"])
    return [Unit("", s, shards, tuple(p.index for p in shard_problems(config, s, shards))) for s in range(shards)]


# What every debate record holds (what the reducer reads).
RECORD_KEYS = ("index", "question", "gold", "turns", "final_answer", "agreed", "rounds", "correct", "first_answers",
               "solo", "vote", "tokens", "seconds")
# Debate settings that do not change a record: how the work is batched and run (the same seed gives the same
# records at any batch size, engine or device layout).
_RUN_ONLY = ("batch_size", "engine", "cuda_graphs", "kernels", "reuse_kv", "prefill_tokens", "devices")


def debate_schema(config: dict[str, Any], unit: Unit) -> RecordSchema:
    """The debate records' keys and the fingerprint of what decides them: the data, the models and their
    precision, the seed, and every debate setting but the run-only ones."""
    models = config["models"]
    settings = {
        "data": config["data"]["split"],
        "models": {"a": models["a"], "b": models["b"], "dtype": models["dtype"]},
        "seed": config["seed"],
        "debate": {k: v for k, v in config["debate"].items() if k not in _RUN_ONLY},
    }
    return RecordSchema(RECORD_KEYS, fingerprint(settings))


def run_debate_shard(task: ShardTask) -> dict[str, Any]:
    """Resumable: skips problems already in the shard file; returns a summary for the submitter."""
    cfg = task.config
    torch.set_num_threads(task.threads)
    torch.manual_seed(cfg["seed"])
    path = task.path
    mine = shard_problems(cfg, task.unit.shard, task.unit.shards)
    started = time.perf_counter()
    with ShardWriter(path, debate_schema(cfg, task.unit)) as writer:
        todo = [p for p in mine if p.index not in writer.done_indices()]
        log.info("%s: %d problems, %d already done, %d to do", path.name, len(mine), len(mine) - len(todo), len(todo))
        if todo:
            devices = pick_devices(cfg["debate"]["devices"])
            registry = load_registry()
            cache = project_path(cfg["paths"]["model_cache"])
            models = {
                key: load_chat_model(resolve_model(f"models.{key}", cfg["models"][key], registry, cfg["results_dir"]), cache, cfg["models"]["dtype"], devices[key])
                for key in ("a", "b")
            }
            engine = DebateEngine(models, DebateSettings.from_config(cfg["debate"], cfg["seed"]))

            def emit(record: dict[str, Any]) -> None:
                writer.append(record)
                log.info("%s: %d/%d problems done", path.name, len(writer.records), len(mine))

            engine.run_all(todo, emit)
        done = len(writer.records)
    seconds = time.perf_counter() - started
    log.info("%s: complete, %d problems, %.1f s", path.name, done, seconds)
    return {"shard": task.unit.label, "problems": done, "ran": len(todo), "seconds": round(seconds, 2)}
