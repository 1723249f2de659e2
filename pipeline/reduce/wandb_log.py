"""A reducer's tables on the wandb dashboard, beside the run's training: each table as a ``wandb.Table``,
each row's accuracy in the run's summary (what the runs table compares), a debate's accuracy per round
as a curve, and the step's PNGs. It runs after the reducer has written its files: wandb failing (no
network, a full disk, a bad key) costs one warning line and never a table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.run_config import RunConfig
from pipeline.runs import Run
from pipeline.wandb_run import finish_and_wait, init_step_run

log = logging.getLogger(__name__)


def _label(row: dict[str, Any]) -> str:
    """What names a row in the summary: a debate row's method (``debate``, ``tiny-llama pass@3``), an eval row's
    text columns (``tiny-llama a gsm8k strict-match``)."""
    if "method" in row:
        return str(row["method"])
    return " ".join(str(v) for v in row.values() if isinstance(v, str))


def _log(wandb_run: Any, tables: dict[str, list[dict[str, Any]]], rounds: list[dict[str, Any]], plots: list[Path],
         complete: bool) -> None:
    import wandb

    for name, rows in tables.items():
        if rows:
            columns = list(dict.fromkeys(k for r in rows for k in r))
            wandb_run.log({f"table/{name}": wandb.Table(columns=columns, data=[[_cell(r.get(c)) for c in columns] for r in rows])})
            for r in rows:
                if isinstance(r.get("accuracy"), (int, float)):
                    wandb_run.summary[f"{name}/{_label(r)}/accuracy"] = r["accuracy"]
                    wandb_run.summary[f"{name}/{_label(r)}/n"] = r.get("n")
    if rounds:
        wandb_run.define_metric("round")
        wandb_run.define_metric("per_round/*", step_metric="round")
        for number, r in enumerate(rounds, 1):
            wandb_run.log({"round": number, **{f"per_round/{k}": r[k] for k in ("accuracy", "ci95_low", "ci95_high") if k in r}})
    for path in plots:
        if path.exists():
            wandb_run.log({f"plot/{path.stem}": wandb.Image(str(path))})
    wandb_run.summary["complete"] = complete


def _cell(value: Any) -> Any:
    """A table cell wandb can hold: nested lists and mappings as their text."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def log_step(run: Run, where: str, config: RunConfig, tables: dict[str, list[dict[str, Any]]], plots: list[Path],
             complete: bool, rounds: list[dict[str, Any]] | None = None) -> None:
    """Logs one reduced step to its wandb run (``<run id>-<where>``, grouped by run id); a failure is a warning."""
    try:
        wandb_run = init_step_run(config, run.root, where)
        if wandb_run is None:
            return
        try:
            _log(wandb_run, tables, rounds or [], plots, complete)
        finally:
            finish_and_wait(wandb_run)
    except Exception as err:  # wandb's failures have no common base class; the tables are written already
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        log.warning("wandb: %s not logged (%s: %s); its tables are in %s", where, type(err).__name__, detail[:200], run.root)
