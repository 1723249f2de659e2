"""The eval reducer: per-question records of every (model, task) -> ``eval_accuracy.{md,csv,json}`` + PNG.

Accuracy is recomputed from the records (lm-eval's own ``exact_match`` per question, per filter), so it
does not depend on how the test set was sharded; the standard error is lm-eval's (the sample standard
deviation over sqrt(n)), with a 95% Wilson interval beside it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from pipeline.harness.settings import EvalSettings
from pipeline.harness.units import PLOTS, TABLE, eval_schema, eval_units
from pipeline.models.registry import model_label
from pipeline.reduce.collect import begin_reduce, incomplete_note
from pipeline.files import accuracy_axis, save_figure, write_atomic
from pipeline.markdown import escape
from pipeline.reduce.outcomes import Outcomes, to_csv
from pipeline.reduce.questions import eval_questions
from pipeline.reduce.report import write_report
from pipeline.reduce.stats import format_p, mcnemar_exact, wilson_interval
from pipeline.reduce.wandb_log import log_step
from pipeline.run_config import RunConfig, load
from pipeline.runs import Run
from pipeline.shards import ShardCheck, collect

log = logging.getLogger(__name__)


def _row(model: str, key: str, task: str, filter_name: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    flags = [r["correct"][filter_name] for r in records if filter_name in r["correct"]]
    n, k = len(flags), sum(flags)
    p = k / n if n else 0.0
    low, high = wilson_interval(k, n)
    seconds = sum(r["seconds"] for r in records)
    return {
        "model": model,
        "key": key,
        "task": task,
        "filter": filter_name,
        "accuracy": round(p, 4),
        "stderr": round(math.sqrt(p * (1 - p) / (n - 1)), 4) if n > 1 else 0.0,
        "ci95_low": round(low, 4),
        "ci95_high": round(high, 4),
        "correct": k,
        "n": n,
        "seconds": round(seconds, 1),
    }


def summarize(by_part: dict[str, list[dict[str, Any]]], config: RunConfig) -> list[dict[str, Any]]:
    """One row per model x task x filter, in the config's order."""
    rows = []
    for key in config.eval.models:
        for task in config.tasks:
            records = by_part.get(f"{key}/{task}", [])
            filters = sorted({f for r in records for f in r["correct"]}, key=lambda f: (f != "strict-match", f))
            rows += [_row(model_label(getattr(config.models, key), config.results_dir), key, task, f, records) for f in filters]
    return rows


def against_base(by_part: dict[str, list[dict[str, Any]]], base: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Fine-tuned against base, per model x task x filter, on the questions both answered: how many responses
    are the very same text (an adapter that changed nothing must not pass for a result), the difference in
    accuracy and McNemar's exact p on the discordant questions."""
    rows = []
    for part, records in by_part.items():
        before = {r["index"]: r for r in base.get(part, [])}
        pairs = [(before[r["index"]], r) for r in records if r["index"] in before]
        if not pairs:
            continue
        key, task = part.split("/", 1)
        identical = sum(b["response"] == a["response"] for b, a in pairs)
        for name in sorted({f for _, a in pairs for f in a["correct"]}, key=lambda f: (f != "strict-match", f)):
            flags = [(b["correct"].get(name, False), a["correct"].get(name, False)) for b, a in pairs]
            gained = sum(after and not was for was, after in flags)
            lost = sum(was and not after for was, after in flags)
            rows.append({
                "key": key, "task": task, "filter": name, "n": len(pairs), "identical_responses": identical,
                "base_accuracy": round(sum(was for was, _ in flags) / len(pairs), 4),
                "accuracy": round(sum(after for _, after in flags) / len(pairs), 4),
                "only_finetuned_right": gained, "only_base_right": lost,
                "p_value": mcnemar_exact(gained, lost),
            })
    return rows


def _against_base_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## Fine-tuned against base, on the same questions", "",
             "| model | task | filter | base | fine-tuned | difference | only fine-tuned right | only base right | McNemar exact p | identical responses |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['key']} | {escape(r['task'])} | {escape(r['filter'])} | {100 * r['base_accuracy']:.1f}% | {100 * r['accuracy']:.1f}% | "
            f"{100 * (r['accuracy'] - r['base_accuracy']):+.1f} pts | {r['only_finetuned_right']} | {r['only_base_right']} | "
            f"{format_p(r['p_value'])} | {r['identical_responses']} / {r['n']} |"
        )
    same = sorted({(r["key"], r["task"]) for r in rows if r["identical_responses"] == r["n"]})
    for key, task in same:
        lines += ["", f"**WARNING: model {key}'s fine-tuned responses on {escape(task)} are identical to the base model's on every "
                      f"question: the adapter changed no output (too few steps or too small a learning rate?).**"]
    return lines + [""]


def markdown(rows: list[dict[str, Any]], run_id: str, checks: list[ShardCheck], where: str = "eval",
             base: list[dict[str, Any]] | None = None) -> str:
    done, expected = sum(c.done for c in checks), sum(c.expected for c in checks)
    title = "GSM8K, fine-tuned models," if where != "eval" else "GSM8K"
    lines = [f"# {title} with lm-evaluation-harness: run {run_id}", ""]
    if done < expected:
        lines += [f"**PARTIAL: {done} of {expected} questions; the numbers below cover only those.**", ""]
    lines += [
        "| model | task | filter | accuracy | s.e. (pts) | 95% CI | correct / n | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {escape(r['model'])} ({r['key']}) | {escape(r['task'])} | {escape(r['filter'])} | {100 * r['accuracy']:.1f}% | {100 * r['stderr']:.1f} | "
            f"{100 * r['ci95_low']:.1f}% - {100 * r['ci95_high']:.1f}% | {r['correct']} / {r['n']} | {r['seconds']} |"
        )
    lines += ["", "s.e.: the standard error of the accuracy, in percentage points (lm-eval's stderr). "
              "Time: the lm-eval calls' wall time, summed over the shards (model loading excluded).", ""]
    if base:
        lines += _against_base_lines(base)
    return "\n".join(lines)


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def figure(rows: list[dict[str, Any]], title: str) -> Any:
    """Grouped bars: accuracy with its 95% interval, one group per model x task, one bar per filter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(f"{r['model']}\n{r['task']}" for r in rows))
    filters = list(dict.fromkeys(r["filter"] for r in rows))
    width = 0.8 / len(filters)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(groups)), 4), dpi=120)
    for j, name in enumerate(filters):
        mine = {f"{r['model']}\n{r['task']}": r for r in rows if r["filter"] == name}
        xs = [i + j * width for i, g in enumerate(groups) if g in mine]
        ys = [mine[g]["accuracy"] for g in groups if g in mine]
        err = [[mine[g]["accuracy"] - mine[g]["ci95_low"] for g in groups if g in mine],
               [mine[g]["ci95_high"] - mine[g]["accuracy"] for g in groups if g in mine]]
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups, fontsize=8)
    accuracy_axis(ax, max(r["ci95_high"] for r in rows))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, title="lm-eval filter", title_fontsize=8)
    fig.tight_layout()
    return fig


def outcomes(by_part: dict[str, list[dict[str, Any]]], config: RunConfig, label: str) -> Outcomes:
    """Each model x task x filter's extracted answer and verdict per question, as ``<label> <model> <task> <filter>``."""
    methods: dict[str, dict[int, tuple[str | None, bool]]] = {}
    gold: dict[int, str] = {}
    for key in config.eval.models:
        for task in config.tasks:
            for r in by_part.get(f"{key}/{task}", []):
                gold[r["index"]] = r["gold"]
                for name, right in r["correct"].items():
                    column = methods.setdefault(f"{label}{model_label(getattr(config.models, key), config.results_dir)} ({key}) {task} {name}", {})
                    column[r["index"]] = (r["extracted"].get(name), bool(right))
    return Outcomes(gold, methods)


def _base_comparison(run: Run, where: str, by_part: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """In a ``stage=all`` chain, the fine-tuned step against the base step of the same run; else nothing."""
    if where == "eval" or not run.stage_dir("eval").is_dir():
        return []
    base_config = load(run.stage_config("eval"), {"eval": EvalSettings})
    base, _ = collect(run.stage_dir("eval"), eval_units(base_config), lambda unit: eval_schema(base_config, unit))
    return against_base(by_part, base)


def reduce_eval(run_root: str, where: str = "eval") -> dict[str, Any]:
    """Writes ``<where>_accuracy.{md,csv,json,png}`` and the report page; an incomplete run's table is marked partial.
    ``where`` is ``eval`` (or ``eval_finetuned`` in a ``stage=all`` chain)."""
    run = Run(Path(run_root))
    config = load(run.stage_config(where), {"eval": EvalSettings})
    by_part, checks, result = begin_reduce(run, where, eval_units(config), "questions", lambda unit: eval_schema(config, unit))
    if "table" in result:
        return result
    incomplete = not result["complete"]
    rows = summarize(by_part, config)
    if not rows:
        result["table"] = f"run {run.run_id}: no finished questions yet; resume with: {result['resume']}\n"
        return result
    base = _base_comparison(run, where, by_part)
    table = markdown(rows, run.run_id, checks, where, base)
    if incomplete:
        table += incomplete_note(checks, result["resume"])
    write_atomic(run.root / f"{where}_accuracy.json", json.dumps({"rows": rows, "against_base": base, "complete": result["complete"], "shards": result["shards"]}, indent=2) + "\n")
    write_atomic(run.root / f"{where}_accuracy.csv", _csv(rows))
    per_question = outcomes(by_part, config, "" if where == "eval" else "fine-tuned ")
    write_atomic(run.root / f"{where}_outcomes.csv", to_csv(per_question))
    write_atomic(run.root / TABLE.format(where=where), table)
    n = max(r["n"] for r in rows)
    title = f"GSM8K accuracy{', fine-tuned models' if where != 'eval' else ''} (lm-eval, 95% CI), run {run.run_id}, n={n}"
    save_figure(figure(rows, title), run.root / PLOTS[0].format(where=where))
    write_report(run, where, table, [p.format(where=where) for p in PLOTS], config.plain(), eval_questions(by_part, config, per_question))
    log_step(run, where, config, {"accuracy": rows, "against_base": base}, [run.root / p.format(where=where) for p in PLOTS], result["complete"])
    result["table"] = table
    result["rows"] = rows
    log.info("reduced %d eval records of run %s (complete: %s)", sum(c.done for c in checks), run.run_id, result["complete"])
    return result
