"""Training metrics as JSONL, one line per logging step, written by rank 0 and kept consistent on resume."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from pipeline.reduce.files import write_atomic

# What ORPO logs that a person looks at; anything else it logs is kept too.
CURVES = ("loss", "nll_loss", "log_odds_ratio", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


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


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every complete line (a torn last line, from a kill mid-write, is ignored)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def rewind_metrics(path: Path, step: int) -> None:
    """Resuming from the checkpoint of ``step``: drop lines logged after it, which the resumed run logs
    again, so no step is written twice."""
    if path.exists():
        kept = [r for r in read_metrics(path) if r["step"] <= step]
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
