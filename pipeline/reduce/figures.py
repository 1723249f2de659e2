"""The reducers' plots: each a matplotlib figure drawn from a step's numbers (the JSON the reducer writes), and
how a figure becomes a PNG of the run. matplotlib is imported only when a figure is drawn: the status
command and a refused submission never load it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pipeline.files import write_atomic
from pipeline.reduce.debate_stats import role_label, solo_method


def _pyplot() -> Any:
    """pyplot on the file-only backend: a job on a cluster node has no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """A matplotlib figure as PNG, written atomically, and closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    _pyplot().close(fig)
    write_atomic(path, buffer.getvalue())


def accuracy_axis(ax: Any, highest: float) -> None:
    """An accuracy y-axis in percent, scaled to the data: from 0 to a little above the highest value
    plotted (an interval's top included), so that accuracies of a few percent do not collapse into one
    line at the bottom of a 0-100% axis."""
    from matplotlib.ticker import PercentFormatter

    ax.set_ylim(0, min(1.0, max(0.05, 1.15 * highest + 0.01)))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("accuracy on GSM8K")


def rounds_figure(summary: dict[str, Any], run_id: str) -> Any:
    """Accuracy after each round with its interval, against each baseline as a line: where people look."""
    plt = _pyplot()
    rounds = summary["per_round"]
    xs = list(range(1, len(rounds) + 1))
    ys = [r["accuracy"] for r in rounds]
    err = [[y - r["ci95_low"] for y, r in zip(ys, rounds)], [r["ci95_high"] - y for y, r in zip(ys, rounds)]]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, label="debate (stopped after round r)")
    # The methods' rows only: pass@k and mean@k are the vote-curve plot's.
    for i, row in enumerate(r for r in summary["methods"][1:] if r["kind"] == "method"):
        ax.axhline(row["accuracy"], linestyle=("--", ":", "-.", (0, (5, 1)))[i % 4], color=f"C{i + 1}", label=row["method"])
    ax.set_xticks(xs)
    ax.set_xlabel("round")
    accuracy_axis(ax, max([r["ci95_high"] for r in rounds] + [row["accuracy"] for row in summary["methods"]]))
    ax.set_title(f"Debate accuracy per round (95% CI), run {run_id}, n={summary['n']}\n"
                 f"a = {summary['models']['a']}, b = {summary['models']['b']}", fontsize=8)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def vote_curve_figure(summary: dict[str, Any], run_id: str) -> Any:
    """majority@j, pass@j and mean@j against j for each voting model, with the debate stopped after round r at
    its 2r turns and the debate's final accuracy and each model alone as lines: where debate sits on the curve."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5), dpi=120, layout="constrained")  # room for the legend below the axes
    debate, rounds = summary["methods"][0], summary["per_round"]
    xs = [2 * r for r in range(1, len(rounds) + 1)]
    ys = [r["accuracy"] for r in rounds]
    err = [[y - r["ci95_low"] for y, r in zip(ys, rounds)], [r["ci95_high"] - y for y, r in zip(ys, rounds)]]
    ax.errorbar(xs, ys, yerr=err, marker="D", linestyle="none", capsize=4, color="C0", label="debate stopped after round r (x = 2r turns)")
    ax.axhline(debate["accuracy"], color="C0", linewidth=1, label="debate")
    by_name = {row["method"]: row for row in summary["methods"]}
    curves = {curve["model"]: curve for curve in summary["sampling"]}
    highest = [debate["accuracy"], *(r["ci95_high"] for r in rounds)]
    for key, colour in (("a", "C1"), ("b", "C2")):
        label = role_label(key, summary["models"])
        solo = by_name.get(solo_method(label))
        if solo:
            ax.axhline(solo["accuracy"], color=colour, linestyle="-.", linewidth=1, label=solo["method"])
            highest.append(solo["accuracy"])
        for metric, (line, marker) in {"majority": ("-", "o"), "pass": ("--", "^"), "mean": (":", "s")}.items():
            points = [p for p in curves[key]["points"] if p["metric"] == metric] if key in curves else []
            if points:
                ax.plot([p["j"] for p in points], [p["accuracy"] for p in points], linestyle=line, marker=marker, color=colour,
                        label=f"{label} {metric}@j")
                highest += [p["accuracy"] for p in points]
    ax.set_xticks(range(1, max([*xs, *(c["k"] for c in curves.values())]) + 1))
    ax.set_xlabel("generations per question: j samples of one model (vote), 2r turns (debate)")
    accuracy_axis(ax, max(highest))
    ax.set_title(f"Vote curve against debate, run {run_id}, n={summary['n']}\n"
                 f"a = {summary['models']['a']}, b = {summary['models']['b']}", fontsize=8)
    fig.legend(fontsize=6, loc="outside lower center", ncol=2)  # inside the axes it would hide the curves
    return fig


def eval_figure(rows: list[dict[str, Any]], title: str) -> Any:
    """Grouped bars: accuracy with its 95% interval, one group per model x task, one bar per filter."""
    plt = _pyplot()
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


# The train curves' panels: (metric key in the trainer's metrics file, the panel's title).
PANELS = (("loss", "ORPO loss"), ("nll_loss", "NLL of chosen"), ("log_odds_ratio", "log odds ratio"),
          ("rewards/margins", "reward margin"), ("rewards/accuracies", "reward accuracy"))


def curves_figure(curves: dict[str, list[dict[str, Any]]], run_id: str) -> Any:
    """One panel per metric, one line per model: where people look to see whether training went well."""
    plt = _pyplot()
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
