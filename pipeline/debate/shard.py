"""One debate shard task: load both models once, run the shard's open problems, append records."""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

import torch

from pipeline import progress
from pipeline.config import project_path
from pipeline.debate.engine import DebateEngine
from pipeline.debate.units import debate_schema, shard_problems
from pipeline.models.device import describe_placement, pick_devices
from pipeline.engine.generation import pick_engine
from pipeline.models.loading import ChatModel, load_chat_model
from pipeline.models.registry import load_registry, resolve_model
from pipeline.shards import ShardWriter
from pipeline.jobs import ShardTask

log = logging.getLogger(__name__)


def check_invariant(models: Mapping[str, ChatModel], engine: str) -> None:
    """``debate.batch_invariant=true`` leaves the batching settings out of the records' fingerprint: a model that
    ``engine=auto`` hands to transformers' generate (whose kernels depend on the batch's shape) would break
    that promise, so the shard stops before its first record."""
    for key, chat in models.items():
        if pick_engine(chat, engine) != "static":
            raise ValueError(f"debate.batch_invariant=true: models.{key} ({chat.name}) runs on transformers' generate here, "
                             "whose numbers depend on the batch; use a model the static engine runs, or debate.batch_invariant=null")


def run_debate_shard(task: ShardTask) -> dict[str, Any]:
    """Resumable: skips problems already in the shard file; returns a summary for the submitter."""
    cfg = task.config
    torch.set_num_threads(task.threads)
    torch.manual_seed(cfg.seed)
    path = task.path
    mine = shard_problems(cfg, task.unit.shard, task.unit.shards)
    started = time.perf_counter()
    with ShardWriter(path, debate_schema(cfg, task.unit)) as writer:
        todo = [p for p in mine if p.index not in writer.done_indices()]
        log.info("%s: %d problems, %d already done, %d to do", path.name, len(mine), len(mine) - len(todo), len(todo))
        reporter = progress.current()
        reporter.set_work(len(writer.records), len(mine), "problems")
        if todo:
            devices = pick_devices(cfg.debate.devices)
            log.info("%s: %s", path.name, describe_placement(devices))
            registry = load_registry()
            cache = project_path(cfg.paths.model_cache)
            reporter.set_state("running", "loading the models")
            models = {
                key: load_chat_model(resolve_model(f"models.{key}", getattr(cfg.models, key), registry, cfg.results_dir), cache, cfg.models.dtype,
                                     devices[key])
                for key in ("a", "b")
            }
            if cfg.debate.batch_invariant:
                check_invariant(models, cfg.debate.engine)
            engine = DebateEngine(models, cfg.debate, cfg.seed)
            reporter.set_state("running")

            def emit(record: dict[str, Any]) -> None:
                writer.append(record)
                reporter.set_work(len(writer.records), len(mine), "problems")
                log.info("%s: %d/%d problems done", path.name, len(writer.records), len(mine))

            engine.run_all(todo, emit)
        done = len(writer.records)
    seconds = time.perf_counter() - started
    log.info("%s: complete, %d problems, %.1f s", path.name, done, seconds)
    return {"shard": task.unit.label, "problems": done, "ran": len(todo), "seconds": round(seconds, 2)}
