"""What the trainer reports while it runs: the metrics file (rank 0) and the task's progress."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from pipeline import progress


class MetricsJSONL(TrainerCallback):
    """Appends ``{"step", "max_steps", "epoch", "time", <logged values>}`` per log, flushed and fsynced,
    so that a killed job keeps every line it logged. The trainer's closing summary goes to ``training.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = time.time()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return
        line = {"step": state.global_step, "max_steps": state.max_steps, "epoch": round(state.epoch or 0.0, 4),
                "time": round(time.time() - self.started, 2), **logs}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


class StepProgress(TrainerCallback):
    """The trainer's optimizer steps as the task's progress (rank 0): one phase from the first step to the
    last, and the unit's work in steps."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.phase: progress.Phase | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.phase = progress.current().begin_phase(self.name, state.max_steps, "steps")
            self.phase.update(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.phase is not None:
            progress.current().set_work(state.global_step, state.max_steps, "steps")
            self.phase.update(state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.phase is not None:
            progress.current().end_phase()
            self.phase = None
