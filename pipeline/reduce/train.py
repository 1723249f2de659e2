"""The train reducer: per model, what was trained and how it went -> ``train_summary.{md,json}`` and
``train_curves.png`` (loss, NLL, log-odds ratio, reward margin and accuracy against the step)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pipeline.files import save_figure, write_atomic
from pipeline.markdown import escape
from pipeline.reduce.report import write_report
from pipeline.run_config import load
from pipeline.runs import Run
from pipeline.train.settings import TrainSettings
from pipeline.train.units import DONE_FILE, PLOTS, TABLE, train_units
from pipeline.train.metrics import read_metrics

log = logging.getLogger(__name__)

PANELS = (("loss", "ORPO loss"), ("nll_loss", "NLL of chosen"), ("log_odds_ratio", "log odds ratio"),
          ("rewards/margins", "reward margin"), ("rewards/accuracies", "reward accuracy"))


def curves_figure(curves: dict[str, list[dict[str, Any]]], run_id: str) -> Any:
    """One panel per metric, one line per model: where people look to see whether training went well."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(3.2 * len(PANELS), 3), dpi=120)
    for ax, (key, title) in zip(axes, PANELS):
        for model, rows in curves.items():
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), label=model, marker="." if len(points) < 30 else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"ORPO training of the LoRA adapters, run {run_id} (per optimizer step)", fontsize=9)
    fig.tight_layout()
    return fig


def reduce_train(run_root: str, where: str = "train") -> dict[str, Any]:
    """Writes the summary, the curves and the report page; says which models are not trained yet and how to resume."""
    run = Run(Path(run_root))
    config = load(run.stage_config(where), {"train": TrainSettings})
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
    resume = f"python jobs/submit.py stage={config.stage} run_id={run.run_id}" if missing else None
    lines = [f"# ORPO training: run {run.run_id}", ""]
    if missing:
        lines += [f"**Not trained yet: {', '.join(map(escape, missing))}.** Resume with: {resume}", ""]
    lines += ["| model | adapter | steps | pairs (mined) | precision | processes | deepspeed | 4-bit | train loss | final margin | seconds |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        margin = f"{r['final_margin']:.4f}" if isinstance(r["final_margin"], float) else "-"
        lines.append(f"| {escape(r['model'])} ({r['key']}) | {run.run_id}/{where}/{escape(r['model'])} | {r['steps']} | {r['pairs']} ({r['mined_rejected']}) | "
                     f"{r['precision']} | {r['processes']} | {escape(r['deepspeed'] or '-')} | {r['load_in_4bit']} | {r['train_loss']} | {margin} | {r['seconds']} |")
    lines += ["", f"Use a fine-tuned model anywhere: `models.a={run.run_id}/{where}/<model>`.", ""]
    table = "\n".join(lines)
    write_atomic(run.root / f"{where}_summary.json", json.dumps({"models": rows, "missing": missing}, indent=2) + "\n")
    write_atomic(run.root / TABLE.format(where=where), table)
    if curves:
        save_figure(curves_figure(curves, run.run_id), run.root / PLOTS[0].format(where=where))
    write_report(run, where, table, [p.format(where=where) for p in PLOTS], config.plain())
    return {"run_id": run.run_id, "complete": not missing, "missing": missing, "resume": resume, "rows": rows, "table": table}
