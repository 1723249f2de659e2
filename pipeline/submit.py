"""``jobs/submit.py``: config -> checks -> run folder -> stage array(s) + reducer(s) -> what to watch.

Everything that can be wrong with the input is checked here, before anything is submitted: config values,
data, shard count, model names and folders, the training set's fields, the DeepSpeed config, the GPUs.
Models that must be converted (GGUF from PyPI wheels) are converted here once, so array tasks never race
to build the same cache folder. ``stage=all`` submits the whole chain at once, each step after the one
before it (SLURM ``afterany`` dependencies; on the local executor each job waits for the earlier ones).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence


from pipeline.config import ConfigError, check_given_once, project_path, to_yaml
from pipeline.data import load_problems
from pipeline.launch import Launcher, job_name, launcher_for
from pipeline.models.registry import check_available, load_registry, resolve_model
from pipeline.run_config import RunConfig
from pipeline.files import write_atomic
from pipeline.summary import write_run_readme
from pipeline.runs import STAGE_CONFIG, Run, adopt_saved, check_run_id, open_run, saved_cluster
from pipeline.shards import Unit
from pipeline.stage import Stage
from pipeline.stages import RUN_ONLY_WHEN, STAGES, build_config, checked_config, completed, describe_work, model_folder_checks, model_keys, run_only_keys, stage_names, steps
from pipeline.progress import mark_submitted
from pipeline.jobs import REDUCE_LABEL, ReduceTask, ShardTask, reduce_label
from pipeline.watch import Step, watch

log = logging.getLogger("gsm8k-slurm")


def _check_models(config: RunConfig, keys: Sequence[str]) -> dict[str, Path]:
    """Each model's folder, checked (a hub model's is on the nodes: not here), and what each stage asks of
    a model whose folder is here."""
    from pipeline.models.loading import prepare  # torch and transformers: only once the config is valid

    registry = load_registry()
    cache = project_path(config.paths.model_cache)
    folders = {}
    for key in keys:
        spec = resolve_model(f"models.{key}", getattr(config.models, key), registry, config.results_dir)
        check_available(f"models.{key}", spec)
        if spec.source == "gguf":
            prepare(spec, cache)
        if spec.source != "hub":
            folders[key] = Path(prepare(spec, cache))
            context = _context(folders[key])
            if context is not None:
                model_folder_checks(config, key, folders[key], context)
    return folders


def _context(folder: Path) -> int | None:
    """The tokens a model holds (its config.json's ``max_position_embeddings``), if it says."""
    try:
        return int(json.loads((folder / "config.json").read_text(encoding="utf-8"))["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_data(config: RunConfig) -> int:
    path = project_path(config.data.path) / f"{config.data.split}.jsonl"
    try:
        total = len(load_problems(path, config.limit))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if config.shards > total:
        raise ConfigError(f"shards={config.shards}: more shards than problems ({total}); use shards=1..{total}")
    return total


def plan(stage: Stage, config: RunConfig, run: Run, where: str) -> tuple[list[ShardTask], dict[Unit, tuple[int, int]]]:
    """The stage's units that still have work (a resubmission of a run only sends those), and every unit
    with its work done / total. The shard files of a sharded stage are read once, and must all be this
    run's and readable."""
    units = stage.units(config)
    progress = stage.work_done(config, run.stage_dir(where), units)
    tasks = [ShardTask(run_root=str(run.root), where=where, unit=unit, config=config)
             for unit in units if progress[unit][0] < progress[unit][1] or progress[unit][1] == 0]
    return tasks, {unit: progress[unit] for unit in units}


def submit(overrides: Sequence[str]) -> dict[str, Any]:
    """Validates, submits, and (with wait=true) waits for the last reducer. Returns what the user is told."""
    cfg = checked_config(list(overrides))
    given = {o.lstrip("+").split("=", 1)[0] for o in overrides}
    check_run_id(cfg, given)
    backend = saved_cluster(cfg, given)
    if backend is not None:  # a resume goes on in the run's backend, checked as if named: cluster=<it>
        cfg = checked_config([*overrides, f"cluster={backend}"])
    adopt_saved(cfg, given, run_only_keys(cfg))
    config = build_config(cfg)
    total = _check_data(config)
    folders = _check_models(config, model_keys(config))
    stages = [STAGES[name] for name in stage_names(config.stage)]
    for stage in stages:
        if stage.check_models is not None:
            stage.check_models(config, folders)
    if any(stage.per_gpu for stage in stages):
        config.cluster.check_per_gpu()
    config, run, resumed = open_run(config, run_only_keys(cfg), RUN_ONLY_WHEN, completed)  # a new run's id is picked with its folder
    launcher = launcher_for(config, run)
    after: list[Any] = []
    submitted: list[dict[str, Any]] = []
    for where, stage, step_config in steps(config, run):
        if config.stage == "all":
            write_atomic(run.stage_dir(where) / STAGE_CONFIG, to_yaml(step_config.plain()))
        tasks, before = plan(stage, step_config, run, where)
        for task in tasks:
            mark_submitted(task.progress_path, task.label)
        mark_submitted(run.progress_path(where, REDUCE_LABEL), reduce_label(where))
        reduce_task = ReduceTask(str(run.root), where, step_config, chain=config.stage == "all")
        jobs, reduce_job = launcher.submit(reduce_task, stage.run_task, tasks, stage.reduce, per_gpu=stage.per_gpu, after=after)
        submitted.append({"where": where, "stage": stage, "tasks": tasks, "jobs": jobs, "reduce": reduce_job, "before": before})
        after = [*jobs, reduce_job]
    final = submitted[-1]["reduce"]
    if config.stage == "all":
        mark_submitted(run.progress_path("summary", REDUCE_LABEL), reduce_label("summary"))
        final = launcher.submit_summary(write_run_readme, ReduceTask(str(run.root), "summary", config, chain=True), after)
    info = _info(config, run, resumed, total, submitted, final, launcher)
    _announce(info)
    if config.wait or launcher.runs_at_once:
        try:
            if not launcher.runs_at_once:  # everything has run by now
                watch([Step(s["where"], s["stage"], s["reduce"], s["before"]) for s in submitted], run, config.progress)
            result = _wait_for(final, run, submitted[-1]["where"] if config.stage != "all" else "summary")
        except KeyboardInterrupt:
            raise StoppedWatching(f"stopped watching; run {run.run_id} goes on. Watch it: python jobs/status.py {run.run_id}; "
                                  f"cancel it: python jobs/cancel.py {run.run_id}") from None
        info["result"] = result
        print(result["table"], flush=True)
    return info


def _wait_for(final: Any, run: Run, where: str) -> dict[str, Any]:
    """The last reducer's result; a reducer that failed is one line pointing at its log (the traceback is in
    the log, not the terminal), and the run stays resumable."""
    try:
        return final.result()
    except Exception as err:  # noqa: BLE001 - submitit re-raises whatever the job raised, wrapped
        raised = [line.strip() for line in str(err).splitlines() if _EXCEPTION_LINE.match(line.strip())]
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        last = raised[-1] if raised else f"{type(err).__name__}: {first}".rstrip(": ")  # the debug backend's own error
        raise ReducerFailed(f"the {where} reducer failed ({last}); its log: {run.logs_dir / f'{reduce_label(where)}.log'}; "
                            f"rerun it with: python jobs/submit.py run_id={run.run_id}") from None


# The last line of a Python traceback: ``IsADirectoryError: [Errno 21] ...`` (submitit wraps the job's
# traceback in its own message, followed by the paths of its log files).
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b: ")


class ReducerFailed(RuntimeError):
    """The reducer of a waited-for run raised; the message is one line for the user."""


class StoppedWatching(RuntimeError):
    """Ctrl-C while waiting for a run: the jobs are not the submitter's to stop (they run detached)."""


def _info(config: RunConfig, run: Run, resumed: bool, total: int, submitted: list[dict[str, Any]], final: Any,
          launcher: Launcher) -> dict[str, Any]:
    last = submitted[-1]
    name = job_name(config.stage if config.stage != "all" else last["where"], run.run_id)
    tasks = [t for s in submitted for t in s["tasks"]]
    return {
        "run_id": run.run_id,
        "run_dir": str(run.root),
        "resumed": resumed,
        "stage": config.stage,
        "problems": total,
        "shards": config.shards,
        "work": describe_work(config, total),
        "steps": [{"where": s["where"], "jobs": [j.job_id for j in s["jobs"]], "reduce": s["reduce"].job_id,
                   "submitted": [t.unit.label for t in s["tasks"]], "table": f"{run.root}/{s['stage'].table_file(s['where'])}"}
                  for s in submitted],
        "submitted": [t.unit.label for t in tasks],
        "submitted_shards": [t.unit.shard for t in last["tasks"]],
        "shard_jobs": [j.job_id for s in submitted for j in s["jobs"]],
        "reduce_job": final.job_id,
        "name": name,
        "cluster": config.cluster.kind,
        "watch_also": launcher.watch_hint(name),
    }


def _announce(info: dict[str, Any]) -> None:
    resumed = " (resumed: only unfinished work)" if info["resumed"] else ""
    lines = [f"run {info['run_id']}{resumed}: stage={info['stage']}, {info['work']}, cluster={info['cluster']}"]
    for step in info["steps"]:
        jobs = ", ".join(step["jobs"]) or "none, all done"
        lines.append(f"  {step['where']:<15} jobs ({len(step['jobs'])}): {jobs}; reduce {step['reduce']} -> {step['table']}")
    lines.append(f"  watch:  python jobs/status.py {info['run_id']}" + (f"   |   {info['watch_also']}" if info["watch_also"] else ""))
    if info["stage"] == "all":
        lines.append(f"  all tables and plots: {info['run_dir']}/README.md (written last)")
    print("\n".join(lines), flush=True)


def main(argv: Sequence[str]) -> int:
    """Entry point: one line and exit 2 on bad input, no traceback, nothing submitted."""
    helps = [i for i, arg in enumerate(argv) if arg in ("-h", "--help", "help")]
    if helps:
        from pipeline.usage import section_usage, usage

        topic = argv[helps[0] + 1] if helps[0] + 1 < len(argv) else None
        try:
            print(section_usage(topic) if topic else usage())
        except KeyError as err:
            print(f"error: {err.args[0]}", file=sys.stderr)
            return 2
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        check_given_once(list(argv))
        info = submit(argv)
    except StoppedWatching as err:
        print(err, file=sys.stderr)
        return 130
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ReducerFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    result = info.get("result")
    if result is not None and not result["complete"]:
        return 1
    return 0
