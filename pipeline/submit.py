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
from pipeline.debate.shard import run_debate_shard, shard_problems
from pipeline.executors import Launcher, job_name
from pipeline.models.loading import prepare
from pipeline.models.registry import check_available, load_registry, resolve_model
from pipeline.reduce.debate import reduce_debate
from pipeline.runs import adopt_saved, open_run
from pipeline.shards import ShardCorruptError, read_shard, shard_name
from pipeline.tasks import ShardTask

log = logging.getLogger("gsm8k-slurm")


def _check_models(cfg: DictConfig) -> None:
    registry = load_registry()
    cache = project_path(cfg.paths.model_cache)
    for key in ("a", "b"):
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


def plan_debate(cfg: DictConfig, run_root: str) -> list[ShardTask]:
    """The shards that still have work: a resubmission of a run only sends those."""
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)
    tasks = []
    for shard in range(cfg.shards):
        task = ShardTask(run_root=run_root, stage="debate", shard=shard, shards=cfg.shards, config=config)
        path = task.run.stage_dir("debate") / shard_name(shard, cfg.shards)
        if len(read_shard(path)) < len(shard_problems(config, shard, cfg.shards)):
            tasks.append(task)
    return tasks


def submit(overrides: Sequence[str]) -> dict[str, Any]:
    """Validates, submits, and (with wait=true) waits for the reducer. Returns what the user is told."""
    cfg = load_config(list(overrides))
    adopt_saved(cfg, {o.lstrip("+").split("=", 1)[0].split(".", 1)[0] for o in overrides})
    total = _check_data(cfg)
    _check_models(cfg)
    run, resumed = open_run(cfg)
    launcher = Launcher(cfg, run)
    try:
        tasks = plan_debate(cfg, str(run.root))
    except ShardCorruptError as err:
        raise ConfigError(str(err)) from None
    jobs, reduce_job = launcher.submit("debate", run_debate_shard, tasks, reduce_debate)
    info = {
        "run_id": run.run_id,
        "run_dir": str(run.root),
        "resumed": resumed,
        "problems": total,
        "shards": cfg.shards,
        "submitted_shards": [t.shard for t in tasks],
        "shard_jobs": [j.job_id for j in jobs],
        "reduce_job": reduce_job.job_id,
        "name": job_name("debate", run.run_id),
        "cluster": cfg.cluster.kind,
    }
    _announce(info, run.stage_dir("debate"))
    if cfg.wait or cfg.cluster.kind == "debug":
        result = reduce_job.result()
        info["result"] = result
        print(result["table"], flush=True)
    return info


def _announce(info: dict[str, Any], shard_dir: Any) -> None:
    resumed = " (resumed: only unfinished shards)" if info["resumed"] else ""
    lines = [
        f"run {info['run_id']}{resumed}: {info['problems']} problems in {info['shards']} shard(s), cluster={info['cluster']}",
        f"  shard jobs ({len(info['shard_jobs'])}): {', '.join(info['shard_jobs']) or 'none, all shards are complete'}",
        f"  reduce job: {info['reduce_job']} (runs after the shards, whatever their outcome)",
        f"  shards: {shard_dir}/shard-*.jsonl",
        f"  tables: {info['run_dir']}/debate_accuracy.md (.csv, .json, per-round .png)",
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
