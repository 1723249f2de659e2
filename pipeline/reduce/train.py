"""The train reducer: per model, what was trained and how it went -> ``train_summary.{md,json}`` and
``train_curves.png`` (loss, NLL, log-odds ratio, reward margin and accuracy against the step)."""

from __future__ import annotations

import json
from typing import Any

from pipeline.files import write_atomic
from pipeline.jobs import ReduceTask
from pipeline.reduce.figures import curves_figure, save_figure
from pipeline.reduce.report import write_report
from pipeline.reduce.tables import train_table
from pipeline.train.units import DONE_FILE, PLOTS, TABLE, train_units
from pipeline.train.metrics import read_metrics


def reduce_train(task: ReduceTask) -> dict[str, Any]:
    """Writes the summary, the curves and the report page; says which models are not trained yet and how to resume."""
    run, where, config = task.run, task.where, task.config
    rows, curves, missing = [], {}, []
    for unit in train_units(config):
        folder = run.stage_dir(where) / unit.part
        metrics = read_metrics(folder / "metrics.jsonl")
        if metrics:
            curves[unit.part] = metrics
        if (folder / DONE_FILE).exists():
            summary = json.loads((folder / DONE_FILE).read_text(encoding="utf-8"))
            last = metrics[-1] if metrics else {}
            rows.append({**summary, "adapter": str(folder), "final_margin": last.get("rewards/margins"),
                         "final_accuracy": last.get("rewards/accuracies")})
        else:
            missing.append(unit.part)
    resume = task.resume if missing else None
    table = train_table(rows, missing, resume, run.run_id, where)
    write_atomic(run.root / f"{where}_summary.json", json.dumps({"models": rows, "missing": missing}, indent=2) + "\n")
    write_atomic(run.root / TABLE.format(where=where), table)
    if curves:
        save_figure(curves_figure(curves, run.run_id), run.root / PLOTS[0].format(where=where))
    write_report(task, table, [p.format(where=where) for p in PLOTS])
    return {"run_id": run.run_id, "complete": not missing, "missing": missing, "resume": resume, "rows": rows, "table": table}
