"""The train array: one unit per model to fine-tune, and its progress in optimizer steps.

Kept apart from the job (which loads torch, TRL and the model) so that the submitter, the status command
and the reducer read a run's plan in a fraction of a second.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import project_path
from pipeline.models.registry import display_name
from pipeline.run_config import RunConfig
from pipeline.shards import Unit
from pipeline.train.metrics import read_metrics

# Written last by a train job: the adapter is complete.
DONE_FILE = "training.json"


def train_units(config: RunConfig) -> list[Unit]:
    """One unit per model to train, named after the model: ``train/<model>/``."""
    return [Unit(display_name(getattr(config.models, key)), 0, 1, ()) for key in config.train.models]


def train_progress(stage_dir: Path, unit: Unit) -> tuple[int, int]:
    """Optimizer steps done / planned, from the metrics file; (0, 0) before the first step is logged (the
    plan is not known yet). The last step counts only once the adapter is saved: a job killed between its
    last step and the save is unfinished."""
    folder = stage_dir / unit.part
    done = folder / DONE_FILE
    if done.exists():
        try:
            steps = int(json.loads(done.read_text(encoding="utf-8"))["steps"])
        except (OSError, ValueError, KeyError, TypeError):
            steps = 1
        return steps, steps
    rows = read_metrics(folder / "metrics.jsonl")
    return (min(rows[-1]["step"], rows[-1]["max_steps"] - 1), rows[-1]["max_steps"]) if rows else (0, 0)


# The reducer's main table and its plots in the run folder, with {where} (the step's folder).
TABLE = "{where}_summary.md"
PLOTS = ("{where}_curves.png",)


def describe_training(config: RunConfig, problems: int) -> str:
    """``2 model(s) trained on 2000 pairs (GSM8K train), 1 epoch(s)``; GSM8K's pairs are counted from its file."""
    train = config.train
    if train.dataset == "gsm8k":
        available = len((project_path(config.data.path) / f"{train.dataset_split}.jsonl").read_text(encoding="utf-8").splitlines())
        pairs = f"{min(available, train.max_samples or available)} pairs (GSM8K {train.dataset_split})"
    else:
        pairs = f"{'up to ' + str(train.max_samples) if train.max_samples else 'all'} pairs ({train.dataset})"
    steps = f"{train.max_steps} steps" if train.max_steps else f"{train.num_train_epochs:g} epoch(s)"
    return f"{len(train.models)} model(s) trained on {pairs}, {steps}"
