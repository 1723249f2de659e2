"""The stages of the suite, by name (each stage package exports its own ``STAGE``), the chain of
``stage=all``, and the config tree they make with the backends: the root keys (``pipeline.run_config``),
each backend's section (``cluster.*``, from ``launch.LAUNCHERS``) and each stage's section.

The submitter, the status command and ``stage=all`` see a stage only through this table, so a stage is
added in one place. A stage runs in a folder of the run (``where``): its own name, except in a
``stage=all`` chain, where the eval stage runs twice (``eval`` and ``eval_finetuned``).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline import config, debate, harness, train
from pipeline.config import GROUPS, ConfigError, require_choice
from pipeline.jobs import ReduceTask
from pipeline.launch import LAUNCHERS
from pipeline.models.registry import display_name
from pipeline.run_config import RunConfig, load
from pipeline.runs import Run
from pipeline.settings import PAIR, check, defaults, free_keys, loose_keys, run_only, run_only_when
from pipeline.stage import Stage

STAGES: dict[str, Stage] = {s.name: s for s in (debate.STAGE, harness.STAGE, train.STAGE)}
# The sections' settings by the key they sit under: the stages', and each backend's under ``cluster``.
_STAGE_SETTINGS = {name: stage.settings for name, stage in STAGES.items() if stage.settings is not None}
_BACKEND_SETTINGS = {kind: launcher.settings for kind, launcher in LAUNCHERS.items()}

# The defaults Hydra composes, by config name: each stage's section, the root keys that no group picks
# (``run``, named in configs/config.yaml's defaults list), and each backend's section as an option of the
# ``cluster`` group (``cluster=slurm``; configs/cluster/ holds presets built on them).
SECTIONS: dict[str, dict[str, Any]] = {
    **{name: {name: defaults(settings)} for name, settings in _STAGE_SETTINGS.items()},
    "run": {key: value for key, value in defaults(RunConfig).items() if key not in GROUPS},
    **{f"cluster/{kind}": defaults(settings) for kind, settings in _BACKEND_SETTINGS.items()},
}
# The group options that are settings classes, not YAML (``cluster=slurm``), by group.
GROUP_SETTINGS: dict[str, dict[str, type]] = {"cluster": _BACKEND_SETTINGS}
_TREE = [("", RunConfig), *_STAGE_SETTINGS.items(), *(("cluster", s) for s in _BACKEND_SETTINGS.values())]
LOOSE = frozenset(key for prefix, settings in _TREE for key in loose_keys(settings, prefix))
FREE = frozenset(key for prefix, settings in _TREE for key in free_keys(settings, prefix))
# The dotted keys that are run-only only where a switch is true (``run_only_when``), each with its switch.
RUN_ONLY_WHEN = {key: switch for prefix, settings in _TREE if prefix != "cluster" for key, switch in run_only_when(settings, prefix).items()}

# stage=all: (folder, stage) in order; each step starts after the one before it has ended.
CHAIN = (("eval", "eval"), ("train", "train"), ("eval_finetuned", "eval"), ("debate", "debate"))
# stage=all: the steps that take the adapters the train step writes in place of the models it trains.
TUNED = ("eval_finetuned", "debate")


def load_config(overrides: list[str]) -> DictConfig:
    """The config tree composed with the overrides; the root keys and the backend's section checked."""
    cfg = config.load_config(overrides, SECTIONS, LOOSE, FREE)
    check(cfg, "", RunConfig)
    require_choice(cfg, "cluster.kind", LAUNCHERS)
    check(cfg, "cluster", LAUNCHERS[cfg.cluster.kind].settings)
    return cfg


def run_only_keys(cfg: DictConfig) -> frozenset[str]:
    """The dotted keys that cannot change a result in a run of this config: ``results=False``, ``run_only_when``
    where the config sets the switch to true (``debate.batch_invariant=true``), and the backend's whole section.
    What the resume check leaves out."""
    values = OmegaConf.to_container(cfg, resolve=True)
    return frozenset({"cluster", *(key for prefix, settings in _TREE if prefix != "cluster"
                                   for key in run_only(settings, prefix, values[prefix] if prefix else values))})


def load_defaults() -> DictConfig:
    """The config with no override (what ``--help`` lists)."""
    return config.load_defaults(SECTIONS)


def stage_names(stage: str) -> list[str]:
    """The stages a config's ``stage`` runs (``all``: each stage of the chain, once)."""
    return list(dict.fromkeys(name for _, name in CHAIN)) if stage == "all" else [stage]


def checked_config(overrides: list[str]) -> DictConfig:
    """The config with the overrides, its common keys checked (``load_config``) and then the keys of every
    stage it runs (``stage=all``: all three), each by its own stage."""
    cfg = load_config(overrides)
    for name in stage_names(cfg.stage):
        STAGES[name].check(cfg)
    return cfg


def build_config(cfg: DictConfig) -> RunConfig:
    """The typed, frozen config of a composed and checked one: the root keys, the backend's section and each
    stage's section."""
    return _built(OmegaConf.to_container(cfg, resolve=True))


def saved_config(run: Run, where: str | None = None) -> RunConfig:
    """The typed config a run was made with (its ``config.yaml``), or one of its steps was submitted with
    (``where``: its ``stage.yaml`` in a chain, else the run's): what the status command and a reducer run by
    hand (``saved_task``) read."""
    return _built(run.saved_config_container() if where is None else run.stage_config(where))


def saved_task(run: Run, where: str) -> ReduceTask:
    """A saved run's step as its reducer's input, for a reducer run by hand (``jobs/rescore.py``): what the
    submitter handed the reduce job (a chain's ``summary``: the run's config)."""
    return ReduceTask(str(run.root), where, saved_config(run, where), chain=saved_config(run).stage == "all")


def completed(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config's plain data with the keys it lacks (settings added since its run was made) at the values
    its typed config gives them (a knob's ``earlier_default``, else its default), as a resume of the run has them:
    what the resume check compares a resubmission with."""
    return _filled(saved, _built(saved).plain())


def _filled(given: dict[str, Any], full: dict[str, Any]) -> dict[str, Any]:
    return {**full, **{key: _filled(value, full[key]) if isinstance(value, dict) and isinstance(full.get(key), dict) else value
                       for key, value in given.items()}}


def _built(values: dict[str, Any]) -> RunConfig:
    return load(values, _STAGE_SETTINGS, _BACKEND_SETTINGS[values["cluster"]["kind"]])


def model_keys(config: RunConfig) -> list[str]:
    """The models of the pair that the config's stages load, in the pair's order."""
    wanted = {key for name in stage_names(config.stage) for key in STAGES[name].models(config)}
    return [key for key in PAIR if key in wanted]


def describe_work(config: RunConfig, problems: int) -> str:
    """What the config will do, in each stage's own units; the chain's steps in order, then what the stages
    not counted in problems do (training)."""
    if config.stage != "all":
        return STAGES[config.stage].describe(config, problems)
    steps = " -> ".join(where.replace("_finetuned", " fine-tuned") for where, _ in CHAIN)
    others = [STAGES[name].describe(config, problems) for name in stage_names("all") if STAGES[name].schema is None]
    return "; ".join([f"{steps} on {problems} problems, {config.shards} shard(s) a step", *others])


def steps(config: RunConfig, run: Run) -> list[tuple[str, Stage, RunConfig]]:
    """Each step's folder, stage and config: the config's stage, or the chain's steps (``stage=all``), where
    the fine-tuned eval and the debate take the adapters the train step writes (``<run>/train/<model>``) in
    place of the models it trains."""
    if config.stage != "all":
        return [(config.stage, STAGES[config.stage], config)]
    tuned = dataclasses.replace(config.models, **{key: str(run.stage_dir("train") / display_name(getattr(config.models, key)))
                                                  for key in config.train.models})
    return [(where, STAGES[name], dataclasses.replace(config, stage=name, models=tuned if where in TUNED else config.models))
            for where, name in CHAIN]


def model_folder_checks(config: RunConfig, key: str, folder: Path, context: int) -> None:
    """Each stage the config runs, on a model whose folder is here: its token counts below the model's context
    (``max_position_embeddings``), then what else it asks of the model."""
    names = stage_names(config.stage)
    for name in names:
        for dotted in STAGES[name].token_keys:
            value = functools.reduce(getattr, dotted.split("."), config)
            if value is not None and value >= context:
                raise ConfigError(f"{dotted}={value}: models.{key} ({getattr(config.models, key)}) holds at most {context} tokens "
                                  f"(max_position_embeddings); use 1..{context - 1}")
    for name in names:
        if STAGES[name].check_model is not None:
            STAGES[name].check_model(config, key, folder, context)

