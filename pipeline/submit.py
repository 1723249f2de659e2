"""``jobs/submit.py``: config -> checks -> run folder -> shard array + reducer -> what to watch.

Everything that can be wrong with the input is checked here, before anything is submitted: config values,
data, shard count, model names and folders. Models that must be converted (GGUF from PyPI wheels) are
converted here once, so array tasks never race to build the same cache folder.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from pipeline.config import ConfigError, load_config, project_path
from pipeline.data import load_problems
from pipeline.executors import Launcher, job_name
from pipeline.models.loading import prepare
from pipeline.models.registry import check_available, load_registry, resolve_model
from pipeline.runs import adopt_saved, open_run
from pipeline.shards import ShardCorruptError, read_shard
from pipeline.stages import STAGES, Stage
from pipeline.tasks import ShardTask

log = logging.getLogger("gsm8k-slurm")


def _model_keys(cfg: DictConfig) -> list[str]:
    """The models a stage loads: both for a debate, those of ``eval.models`` for eval."""
    return list(cfg.eval.models) if cfg.stage == "eval" else ["a", "b"]


def _check_models(cfg: DictConfig) -> None:
    registry = load_registry()
    cache = project_path(cfg.paths.model_cache)
    for key in _model_keys(cfg):
        spec = resolve_model(f"models.{key}", cfg.models[key], registry)
        check_available(f"models.{key}", spec)
        if spec.source == "gguf":
            prepare(spec, cache)


def _check_data(cfg: DictConfig) -> int:
    path = project_path(cfg.data.path) / f"{cfg.data.split}.jsonl"
    try:
        total = len(load_problems(path, cfg.limit))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.shards > total:
        raise ConfigError(f"shards={cfg.shards}: more shards than problems ({total}); use shards=1..{total}")
    return total


def plan(stage: Stage, cfg: DictConfig, run_root: str) -> list[ShardTask]:
    """The stage's units that still have work: a resubmission of a run only sends those."""
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)
    tasks = [ShardTask(run_root=run_root, stage=stage.name, unit=unit, config=config) for unit in stage.units(config)]
    return [t for t in tasks if len(read_shard(t.path)) < len(t.unit.indices)]


def submit(overrides: Sequence[str]) -> dict[str, Any]:
    """Validates, submits, and (with wait=true) waits for the reducer. Returns what the user is told."""
    cfg = load_config(list(overrides))
    adopt_saved(cfg, {o.lstrip("+").split("=", 1)[0].split(".", 1)[0] for o in overrides})
    total = _check_data(cfg)
    _check_models(cfg)
    stage = STAGES[cfg.stage]
    run, resumed = open_run(cfg)
    launcher = Launcher(cfg, run)
    try:
        tasks = plan(stage, cfg, str(run.root))
    except ShardCorruptError as err:
        raise ConfigError(str(err)) from None
    jobs, reduce_job = launcher.submit(stage.name, stage.run_shard, tasks, stage.reduce)
    info = {
        "run_id": run.run_id,
        "run_dir": str(run.root),
        "resumed": resumed,
        "stage": stage.name,
        "problems": total,
        "shards": cfg.shards,
        "units": len(stage.units(OmegaConf.to_container(cfg, resolve=True))),
        "submitted": [t.unit.label for t in tasks],
        "submitted_shards": [t.unit.shard for t in tasks],
        "shard_jobs": [j.job_id for j in jobs],
        "reduce_job": reduce_job.job_id,
        "name": job_name(stage.name, run.run_id),
        "cluster": cfg.cluster.kind,
        "table": f"{run.root}/{stage.table}",
    }
    _announce(info, run.stage_dir(stage.name))
    if cfg.wait or cfg.cluster.kind == "debug":
        result = reduce_job.result()
        info["result"] = result
        print(result["table"], flush=True)
    return info


def _announce(info: dict[str, Any], shard_dir: Any) -> None:
    resumed = " (resumed: only unfinished shards)" if info["resumed"] else ""
    lines = [
        f"run {info['run_id']}{resumed}: {info['stage']}, {info['problems']} problems in {info['shards']} shard(s)"
        f" ({info['units']} array tasks), cluster={info['cluster']}",
        f"  shard jobs ({len(info['shard_jobs'])}): {', '.join(info['shard_jobs']) or 'none, all shards are complete'}",
        f"  reduce job: {info['reduce_job']} (runs after the shards, whatever their outcome)",
        f"  shards: {shard_dir}/**/shard-*.jsonl",
        f"  tables: {info['table']} (.csv, .json, .png)",
        f"  watch:  python jobs/status.py {info['run_id']}"
        + (f"   |   squeue -n {info['name']}" if info["cluster"] == "slurm" else ""),
    ]
    print("\n".join(lines), flush=True)


def main(argv: Sequence[str]) -> int:
    """Entry point: one line and exit 2 on bad input, no traceback, nothing submitted."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        info = submit(argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = info.get("result")
    if result is not None and not result["complete"]:
        return 1
    return 0
