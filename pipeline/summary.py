"""The last job of ``stage=all``: one ``results/<run_id>/README.md`` holding every table and plot, the same as
``report.html`` (the page that links each step's own report), and the fine-tuned eval's table in each
adapter's model card."""

from __future__ import annotations

from typing import Any

from pipeline.files import write_atomic
from pipeline.jobs import ReduceTask
from pipeline.reduce.report import REPORT, step_report, write_chain_report
from pipeline.run_config import RunConfig
from pipeline.runs import Run
from pipeline.stages import CHAIN, STAGES
from pipeline.train.card import add_eval_table
from pipeline.train.units import train_units

TITLES = {"eval": "1. Base models (lm-evaluation-harness)", "train": "2. ORPO fine-tuning",
          "eval_finetuned": "3. Fine-tuned models (lm-evaluation-harness)", "debate": "4. Debate of the fine-tuned models"}


def write_run_readme(task: ReduceTask) -> dict[str, Any]:
    """Collects each step's table (and its PNGs) into the run's README and its page; says which steps have no
    table. The task carries the run's config."""
    run = task.run
    parts = [f"# Run {run.run_id}: eval -> train -> eval fine-tuned -> debate", "",
             f"Config: [config.yaml](config.yaml). Status: `python jobs/status.py {run.run_id}`. Report: [{REPORT}]({REPORT}).", ""]
    missing = []
    for step, name in CHAIN:
        table = run.root / STAGES[name].table_file(step)
        parts += [f"## {TITLES[step]}", ""]
        if not table.exists():
            missing.append(step)
            parts += [f"No table: the {step} step did not finish (see logs/).", ""]
            continue
        body = table.read_text(encoding="utf-8").split("\n", 1)[1].strip()
        parts += [body, ""]
        parts += [f"![{png}]({png})\n" for png in STAGES[name].plot_files(step) if (run.root / png).exists()]
        if (run.root / step_report(step)).exists():
            parts += [f"The step's questions, plots and config: [{step_report(step)}]({step_report(step)}).", ""]
    text = "\n".join(parts)
    write_atomic(run.root / "README.md", text)
    _cards_with_eval(run, task.config)
    write_chain_report(task, text)
    resume = task.resume if missing else None
    return {"run_id": run.run_id, "complete": not missing, "missing": missing, "resume": resume, "table": text}


def _cards_with_eval(run: Run, config: RunConfig) -> None:
    """The fine-tuned eval measured the adapters this run trained (the train step's units: its models are the
    run's): its table goes into their cards, so that a card pushed later (``hf upload``) carries the accuracy
    beside the training."""
    table = run.root / STAGES["eval"].table_file("eval_finetuned")
    if not table.exists() or not run.stage_dir("train").is_dir():
        return
    for unit in train_units(config):
        add_eval_table(run.stage_dir("train") / unit.part, table.read_text(encoding="utf-8"))
