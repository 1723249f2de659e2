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
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from pipeline.config import ConfigError, check_given_once, project_path, to_yaml
from pipeline.data import load_problems
from pipeline.launch import job_name, launcher_for
from pipeline.models.registry import check_available, display_name, load_registry, resolve_model
from pipeline.files import write_atomic
from pipeline.summary import write_run_readme
from pipeline.runs import STAGE_CONFIG, Run, adopt_saved, check_run_id, open_run, saved_cluster
from pipeline.shards import Unit, check_files
from pipeline.stage import Stage, records_progress
from pipeline.stages import CHAIN, STAGES, checked_config
from pipeline.progress import mark_submitted
from pipeline.jobs import REDUCE_LABEL, ShardTask, reduce_label
from pipeline.watch import Step, watch

log = logging.getLogger("gsm8k-slurm")


def _model_keys(config: dict[str, Any]) -> list[str]:
    """The models a stage loads: ``eval.models`` / ``train.models``; both for a debate or the whole chain."""
    if config["stage"] in ("eval", "train"):
        return list(config[config["stage"]]["models"])
    return ["a", "b"]


def _check_models(config: dict[str, Any], keys: Sequence[str]) -> dict[str, Path]:
    """Each model's folder, checked (a hub model's is on the nodes: not here)."""
    from pipeline.models.loading import prepare  # torch and transformers: only once the config is valid

    registry = load_registry()
    cache = project_path(config["paths"]["model_cache"])
    folders = {}
    for key in keys:
        spec = resolve_model(f"models.{key}", config["models"][key], registry, config["results_dir"])
        check_available(f"models.{key}", spec)
        if spec.source == "gguf":
            prepare(spec, cache)
        if spec.source != "hub":
            folders[key] = Path(prepare(spec, cache))
            _check_context(config, key, folders[key])
    return folders


def _check_context(config: dict[str, Any], key: str, folder: Path) -> None:
    """Token counts the model cannot hold (its ``max_position_embeddings``): refused here rather than failing
    in every shard. Only models with a local config.json are checked (a hub model's config is on the nodes)."""
    try:
        context = int(json.loads((folder / "config.json").read_text(encoding="utf-8"))["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    counts = {"debate": [("debate.max_new_tokens", config["debate"]["max_new_tokens"])],
              "eval": [("eval.max_gen_toks", config["eval"]["max_gen_toks"])],
              "train": [("train.max_length", config["train"]["max_length"])]}
    stages = ("debate", "eval", "train") if config["stage"] == "all" else (config["stage"],)
    for name, value in (item for stage in stages for item in counts[stage]):
        if value is not None and value >= context:
            raise ConfigError(f"{name}={value}: models.{key} ({config['models'][key]}) holds at most {context} tokens "
                              f"(max_position_embeddings); use 1..{context - 1}")
    if "debate" in stages:
        _check_first_prompt(config, key, folder, context)


def _check_first_prompt(config: dict[str, Any], key: str, folder: Path, context: int) -> None:
    """A debate's first prompt (the system prompt and the solve prompt around the longest question of the run)
    and one turn must fit the model's context: a system prompt past it would run to a table of nonsense, or
    crawl. Tokenized only when its bytes could come near the context (a token is at least one byte)."""
    debate = config["debate"]
    longest = max((p.question for p in load_problems(project_path(config["data"]["path"]) / f"{config['data']['split']}.jsonl",
                                                     config["limit"])), key=len, default="")
    system, user = debate["system_prompt"], debate["prompts"]["solve"].format(question=longest)
    if len(((system or "") + user).encode("utf-8")) + debate["max_new_tokens"] < context // 2:
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    tokens = len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    if tokens + debate["max_new_tokens"] > context:
        raise ConfigError(f"debate.system_prompt: the first prompt (system prompt, solve prompt, longest question) is {tokens} "
                          f"tokens of models.{key} ({config['models'][key]}), which with debate.max_new_tokens="
                          f"{debate['max_new_tokens']} passes the {context} it holds (max_position_embeddings); shorten it")


def _check_data(cfg: DictConfig) -> int:
    path = project_path(cfg.data.path) / f"{cfg.data.split}.jsonl"
    try:
        total = len(load_problems(path, cfg.limit))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.shards > total:
        raise ConfigError(f"shards={cfg.shards}: more shards than problems ({total}); use shards=1..{total}")
    return total


def _check_training(cfg: DictConfig, folders: dict[str, Path]) -> None:
    """The training set, the layers LoRA adapts, the DeepSpeed config, and GPUs: what would otherwise fail
    inside the job."""
    from pipeline.train.checks import check_lora_targets
    from pipeline.train.deepspeed import deepspeed_config
    from pipeline.train.pairs import check_dataset

    config = OmegaConf.to_container(cfg, resolve=True)
    check_dataset(config)
    for key in cfg.train.models:
        if key in folders:
            check_lora_targets(f"models.{key}", str(cfg.models[key]), folders[key], list(cfg.train.lora.target_modules))
    deepspeed = deepspeed_config(cfg.train.deepspeed)
    if deepspeed and cfg.train.load_in_4bit and "zero3" in Path(deepspeed).stem:
        raise ConfigError("train.load_in_4bit=true with ZeRO-3: 4-bit weights cannot be partitioned; use train.deepspeed=zero2 or null")
    names = [display_name(cfg.models[k]) for k in cfg.train.models]
    if len(set(names)) != len(names):
        raise ConfigError(f"train.models: both models are {names[0]}; their adapters would share train/{names[0]}/")
    _check_processes(cfg)
    _check_gpus(cfg)


def _check_processes(cfg: DictConfig) -> None:
    """Training runs one process per GPU. One process that sees several GPUs would be wrapped in
    DataParallel by the trainer (slower, and a different batch than asked); several processes on one GPU
    would share its memory."""
    tasks = OmegaConf.select(cfg, "cluster.tasks_per_node")
    gpus = OmegaConf.select(cfg, "cluster.gpus_per_node")
    if cfg.cluster.kind == "local" and gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    if cfg.cluster.kind != "debug" and tasks and gpus and tasks != gpus:
        raise ConfigError(f"cluster.tasks_per_node={tasks} with {gpus} GPU(s) per node: training runs one process per GPU; "
                          f"leave cluster.tasks_per_node unset or set it to {gpus}")


def _check_gpus(cfg: DictConfig) -> None:
    """More GPUs asked than a node has: local, against this machine; SLURM, against the partition's GRES."""
    wanted = OmegaConf.select(cfg, "cluster.gpus_per_node")
    if cfg.cluster.kind == "local" and wanted:
        import torch

        have = torch.cuda.device_count()
        if wanted > have:
            raise ConfigError(f"cluster.gpus_per_node={wanted}: this machine has {have} GPU(s)")
    if cfg.cluster.kind == "slurm" and wanted and shutil.which("sinfo"):
        args = ["sinfo", "-h", "-o", "%G"] + (["-p", str(cfg.cluster.partition)] if cfg.cluster.partition else [])
        gres = subprocess.run(args, capture_output=True, text=True).stdout.split()
        counts = [int(m.group(1)) for g in gres if (m := re.match(r"gpu(?::[^:(]+)?:(\d+)", g))]
        if max(counts, default=0) < wanted:
            where = f"partition {cfg.cluster.partition}" if cfg.cluster.partition else "the default partition"
            raise ConfigError(f"cluster.gpus_per_node={wanted}: the nodes of {where} have at most {max(counts, default=0)} GPU(s) (sinfo %G: {' '.join(gres) or 'none'})")


def plan(stage: Stage, config: dict[str, Any], run: Run, where: str) -> tuple[list[ShardTask], dict[Unit, tuple[int, int]]]:
    """The stage's units that still have work (a resubmission of a run only sends those), and every unit
    with its work done / total. The shard files of a sharded stage are read once, and must all be this
    run's and readable."""
    units, stage_dir = stage.units(config), run.stage_dir(where)
    if stage.progress is records_progress:
        try:
            checks = check_files(stage_dir, units, (lambda unit: stage.schema(config, unit)) if stage.schema else None)[1]
        except ValueError as err:
            raise ConfigError(str(err)) from None
        corrupt = [c.error for c in checks if c.error]
        if corrupt:
            raise ConfigError(corrupt[0])
        progress = {c.unit: (c.done, c.expected) for c in checks}
    else:
        progress = {unit: stage.progress(stage_dir, unit) for unit in units}
    tasks = [ShardTask(run_root=str(run.root), stage=where, unit=unit, config=config)
             for unit in units if progress[unit][0] < progress[unit][1] or progress[unit][1] == 0]
    return tasks, {unit: progress[unit] for unit in units}


def chain_configs(config: dict[str, Any], run: Run) -> list[tuple[str, Stage, dict[str, Any]]]:
    """``stage=all``: each step's config. The fine-tuned eval and the debate take the adapters the train
    step writes (``<run>/train/<model>``) in place of the models it trains."""
    steps = []
    tuned = {key: str(run.stage_dir("train") / display_name(config["models"][key])) for key in config["train"]["models"]}
    for where, name in CHAIN:
        step = {**config, "stage": name}
        if where in ("eval_finetuned", "debate"):
            step["models"] = {**config["models"], **tuned}
        steps.append((where, STAGES[name], step))
    return steps


def submit(overrides: Sequence[str]) -> dict[str, Any]:
    """Validates, submits, and (with wait=true) waits for the last reducer. Returns what the user is told."""
    cfg = checked_config(list(overrides))
    given = {o.lstrip("+").split("=", 1)[0] for o in overrides}
    check_run_id(cfg, given)
    backend = saved_cluster(cfg, given)
    if backend is not None:  # a resume goes on in the run's backend, checked as if named: cluster=<it>
        cfg = checked_config([*overrides, f"cluster={backend}"])
    adopt_saved(cfg, given)
    total = _check_data(cfg)
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)
    folders = _check_models(config, _model_keys(config))
    if cfg.stage in ("train", "all"):
        _check_training(cfg, folders)
    run, resumed = open_run(cfg, frozenset(key for stage in STAGES.values() for key in stage.run_only))
    config = OmegaConf.to_container(cfg, resolve=True)
    launcher = launcher_for(cfg, run)
    steps = chain_configs(config, run) if cfg.stage == "all" else [(cfg.stage, STAGES[cfg.stage], config)]
    after: list[Any] = []
    submitted: list[dict[str, Any]] = []
    for where, stage, step_config in steps:
        if cfg.stage == "all":
            write_atomic(run.stage_dir(where) / STAGE_CONFIG, to_yaml(step_config))
        tasks, before = plan(stage, step_config, run, where)
        for task in tasks:
            mark_submitted(task.progress_path, task.label)
        mark_submitted(run.progress_path(where, REDUCE_LABEL), reduce_label(where))
        jobs, reduce_job = launcher.submit(where, stage.run_task, tasks, stage.reduce, per_gpu=stage.per_gpu, after=after)
        submitted.append({"where": where, "stage": stage, "tasks": tasks, "jobs": jobs, "reduce": reduce_job, "before": before})
        after = [*jobs, reduce_job]
    final = submitted[-1]["reduce"]
    if cfg.stage == "all":
        mark_submitted(run.progress_path("summary", REDUCE_LABEL), reduce_label("summary"))
        final = launcher.submit_summary(write_run_readme, after)
    info = _info(cfg, run, resumed, total, submitted, final)
    _announce(info)
    if cfg.wait or cfg.cluster.kind == "debug":
        try:
            if cfg.cluster.kind != "debug":  # the debug executor has run everything by now
                watch([Step(s["where"], s["stage"], s["reduce"], s["before"]) for s in submitted], run, config["progress"])
            result = _wait_for(final, run, submitted[-1]["where"] if cfg.stage != "all" else "summary")
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


def _info(cfg: DictConfig, run: Run, resumed: bool, total: int, submitted: list[dict[str, Any]], final: Any) -> dict[str, Any]:
    last = submitted[-1]
    tasks = [t for s in submitted for t in s["tasks"]]
    return {
        "run_id": run.run_id,
        "run_dir": str(run.root),
        "resumed": resumed,
        "stage": cfg.stage,
        "problems": total,
        "shards": cfg.shards,
        "work": describe_work(cfg, total),
        "steps": [{"where": s["where"], "jobs": [j.job_id for j in s["jobs"]], "reduce": s["reduce"].job_id,
                   "submitted": [t.unit.label for t in s["tasks"]], "table": f"{run.root}/{s['stage'].table_file(s['where'])}"}
                  for s in submitted],
        "submitted": [t.unit.label for t in tasks],
        "submitted_shards": [t.unit.shard for t in last["tasks"]],
        "shard_jobs": [j.job_id for s in submitted for j in s["jobs"]],
        "reduce_job": final.job_id,
        "name": job_name(cfg.stage if cfg.stage != "all" else last["where"], run.run_id),
        "cluster": cfg.cluster.kind,
    }


def describe_work(cfg: DictConfig, problems: int) -> str:
    """What the stage will do, in its own units: problems and shards; models x tasks; pairs and steps."""
    if cfg.stage == "eval":
        return f"{len(cfg.eval.models)} model(s) x {len(cfg.tasks)} task(s) on {problems} problems, {cfg.shards} shard(s) each"
    if cfg.stage == "debate":
        return f"{problems} problems, {cfg.shards} shard(s)"
    trained = _describe_training(cfg)
    if cfg.stage == "train":
        return trained
    return f"eval -> train -> eval fine-tuned -> debate on {problems} problems, {cfg.shards} shard(s) a step; {trained}"


def _describe_training(cfg: DictConfig) -> str:
    """``2 model(s) trained on 2000 pairs (GSM8K train), 1 epoch(s)``; GSM8K's pairs are counted from its file."""
    train = cfg.train
    if train.dataset == "gsm8k":
        available = len((project_path(cfg.data.path) / f"{train.dataset_split}.jsonl").read_text(encoding="utf-8").splitlines())
        pairs = f"{min(available, train.max_samples or available)} pairs (GSM8K {train.dataset_split})"
    else:
        pairs = f"{'up to ' + str(train.max_samples) if train.max_samples else 'all'} pairs ({train.dataset})"
    steps = f"{train.max_steps} steps" if train.max_steps else f"{train.num_train_epochs:g} epoch(s)"
    return f"{len(train.models)} model(s) trained on {pairs}, {steps}"


def _announce(info: dict[str, Any]) -> None:
    resumed = " (resumed: only unfinished work)" if info["resumed"] else ""
    lines = [f"run {info['run_id']}{resumed}: stage={info['stage']}, {info['work']}, cluster={info['cluster']}"]
    for step in info["steps"]:
        jobs = ", ".join(step["jobs"]) or "none, all done"
        lines.append(f"  {step['where']:<15} jobs ({len(step['jobs'])}): {jobs}; reduce {step['reduce']} -> {step['table']}")
    lines.append(f"  watch:  python jobs/status.py {info['run_id']}"
                 + (f"   |   squeue -n {info['name']}" if info["cluster"] == "slurm" else ""))
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
