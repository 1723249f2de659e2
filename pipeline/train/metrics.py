"""Training metrics as JSONL, one line per logging step (written by ``callbacks.MetricsJSONL``), kept
consistent on resume; read without importing the trainer, for the status command and the reducer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.files import write_atomic

# What ORPO logs that a person looks at; anything else it logs is kept too.
CURVES = ("loss", "nll_loss", "log_odds_ratio", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


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
