"""The tables a person reads, as markdown (``<where>_accuracy.md``, ``train_summary.md``; ``report.html`` and the
run README render them), and the CSV of a table's rows. Text from data (model, task, method names) is
escaped (``pipeline.markdown``): it stays one cell.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from pipeline.markdown import escape
from pipeline.reduce.stats import accuracy_cells, difference_cell, format_p
from pipeline.shards import ShardCheck


def rows_csv(rows: list[dict[str, Any]]) -> str:
    """A table's rows as CSV (``<where>_accuracy.csv``), the first row's keys as the header."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _partial(checks: list[ShardCheck], noun: str) -> list[str]:
    """The line under a partial table's title: how much of the work its numbers cover (none when complete)."""
    done, expected = sum(c.done for c in checks), sum(c.expected for c in checks)
    return [f"**PARTIAL: {done} of {expected} {noun}; the numbers below cover only those.**", ""] if done < expected else []


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _accuracy_cells(r: dict[str, Any]) -> tuple[str, str]:
    """A row's accuracy and 95% interval as shown: from its count where it has one, so that each is rounded once
    (its stored values have 4 decimals already). Rows of fractional scores (mean@k) have none."""
    k, n = r.get("correct"), r.get("n")
    if isinstance(k, int) and n and r.get("interval", "wilson") == "wilson":
        return accuracy_cells(k, n)
    return _pct(r["accuracy"]), f"{_pct(r['ci95_low'])} - {_pct(r['ci95_high'])}"


def debate_table(summary: dict[str, Any], run_id: str, checks: list[ShardCheck]) -> str:
    """The debate step's table: methods with 95% intervals, accuracy per round, the debate's dynamics."""
    lines = [f"# Debate accuracy: run {run_id}", "", *_partial(checks, "problems")]
    lines += [
        f"Models: a = {escape(summary['models']['a'])}, b = {escape(summary['models']['b'])}; {summary['n']} GSM8K problems.",
        "",
        "| method | accuracy (strict) | 95% CI | correct / n | accuracy (flexible) | cut at the token limit | no stated answer "
        "| tokens / question | seconds / question (batched) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["methods"]:
        extra = [_pct(r[k]) if k in r else "" for k in ("flexible_accuracy", "cut_off", "no_explicit_answer")]
        accuracy, interval = _accuracy_cells(r)
        lines.append(
            f"| {escape(r['method'])} | {accuracy} | {interval} | "
            f"{r['correct']} / {r['n']} | {' | '.join(extra)} | {r['tokens_per_question']} | {r['seconds_per_question']} |"
        )
    lines += ["", "| debate stopped after | accuracy | 95% CI | debates still open |", "|---|---|---|---|"]
    for r in summary["per_round"]:
        accuracy, interval = _accuracy_cells(r)
        lines.append(f"| {r['method']} | {accuracy} | {interval} | {r['still_open']} |")
    if summary["paired"]:
        lines += [
            "",
            "| debate against | questions | only debate right | only baseline right | difference | McNemar exact p |",
            "|---|---|---|---|---|---|",
        ]
        for p in summary["paired"]:
            lines.append(
                f"| {escape(p['against'])} | {p['n']} | {p['only_debate_right']} | {p['only_baseline_right']} | "
                f"{difference_cell(p['only_debate_right'], p['only_baseline_right'], p['n'])} | {format_p(p['p_value'])} |"
            )
    lines += ["", "| how the debate agreed | debates | final right | final wrong | fixed its own wrong answer | gave up its own right answer |",
              "|---|---|---|---|---|---|"]
    for a in summary["agreement"]:
        fixed, gave_up = a.get("fixed_own_wrong", ""), a.get("gave_up_own_right", "")
        lines.append(f"| {a['label']} | {a['debates']} | {a['right']} | {a['wrong']} | {fixed} | {gave_up} |")
    d = summary["debate"]
    lines += [
        "",
        f"Converged: {_pct(d['convergence_rate'])}; mean rounds: {d['mean_rounds']}; "
        f"flips from model a's first answer: right->wrong {d['flips_right_to_wrong']}, wrong->right {d['flips_wrong_to_right']}; "
        f"final replies that state no answer: {d['unparsable_final_answers']} (scored wrong); "
        f"final answers cut at the token limit: {d['final_answers_cut_off']}.",
        "",
        "Accuracy (strict), the one every interval, paired test and plot uses: the final answer the reply states: "
        "`#### N` on a line that holds the answer, `\\boxed{N}` or \"the answer is N\" (the one stated last), or the "
        "closing statement of a reply that ended on its own in prose; a reply that states none is wrong, and a reply cut "
        "at the token limit does not count a statement its cut may have shortened (tests/test_labelled_replies.py "
        "checks the reading against 465 replies labelled by reading them). Accuracy (flexible): the same, else the last "
        "number in the text (lm-eval's flexible-extract), which can pick an intermediate number of a cut-off reply. Cut "
        "at the token limit and no stated answer: shares of the replies each row's answer comes from (a debate's final "
        "turn, a vote's k samples). The debate stops when both models' latest replies state the same answer.",
        "",
        "Tokens / question: generated over all of a question's turns (or samples). Seconds / question (batched): each "
        "batch's wall time divided by its rows, summed over the question's turns: its share of batched generation, "
        "not the time it would take alone.",
        "",
    ]
    if summary["sampling"]:
        lines += [
            "pass@k and mean@k are read off the vote's k samples (the vote's cost; no generation of their own). pass@k: "
            "the unbiased estimator 1 - C(n-c, k) / C(n, k) of at least one of k samples right, c right of n; at k = n, "
            "whether any sample is right: the ceiling of any way of combining them. mean@k: the accuracy of one sample, "
            "the mean over questions of the fraction of its k samples right (correct: those fractions summed); its 95% "
            "CI is the normal interval over the questions' fractions (Wilson's where each is 0 or 1). Every other 95% "
            "CI: Wilson's. The vote-curve plot beside this table draws them for j = 1..k samples: pass@j by the estimator, "
            "mean@j (the same at every j), majority@j over the first j samples (ties to the answer seen first).",
            "",
        ]
    return "\n".join(lines)


def _against_base_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## Fine-tuned against base, on the same questions", "",
             "| model | task | filter | base | fine-tuned | difference | only fine-tuned right | only base right | McNemar exact p | identical responses |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['key']} | {escape(r['task'])} | {escape(r['filter'])} | {accuracy_cells(r['base_correct'], r['n'])[0]} | "
            f"{accuracy_cells(r['correct'], r['n'])[0]} | "
            f"{difference_cell(r['only_finetuned_right'], r['only_base_right'], r['n'])} | {r['only_finetuned_right']} | {r['only_base_right']} | "
            f"{format_p(r['p_value'])} | {r['identical_responses']} / {r['n']} |"
        )
    same = sorted({(r["key"], r["task"]) for r in rows if r["identical_responses"] == r["n"]})
    for key, task in same:
        lines += ["", f"**WARNING: model {key}'s fine-tuned responses on {escape(task)} are identical to the base model's on every "
                      f"question: the adapter changed no output (too few steps or too small a learning rate?).**"]
    return lines + [""]


def eval_table(rows: list[dict[str, Any]], run_id: str, checks: list[ShardCheck], where: str = "eval",
               base: list[dict[str, Any]] | None = None) -> str:
    """The eval step's table: one row per model x task x filter and, for fine-tuned models, their base beside them."""
    title = "GSM8K, fine-tuned models," if where != "eval" else "GSM8K"
    lines = [f"# {title} with lm-evaluation-harness: run {run_id}", "", *_partial(checks, "questions")]
    lines += [
        "| model | task | filter | accuracy | s.e. (pts) | 95% CI | correct / n | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        accuracy, interval = _accuracy_cells(r)
        lines.append(
            f"| {escape(r['model'])} ({r['key']}) | {escape(r['task'])} | {escape(r['filter'])} | {accuracy} | {100 * r['stderr']:.1f} | "
            f"{interval} | {r['correct']} / {r['n']} | {r['seconds']} |"
        )
    lines += ["", "s.e.: the standard error of the accuracy, in percentage points (lm-eval's stderr). "
              "Time: the lm-eval calls' wall time, summed over the shards (model loading excluded).", ""]
    if base:
        lines += _against_base_lines(base)
    return "\n".join(lines)


def train_table(rows: list[dict[str, Any]], missing: list[str], resume: str | None, run_id: str, where: str) -> str:
    """The train step's table: per model what was trained and how it ended, the models not trained yet and the
    command that resumes them, and how to use an adapter."""
    lines = [f"# ORPO training: run {run_id}", ""]
    if missing:
        lines += [f"**Not trained yet: {', '.join(map(escape, missing))}.** Resume with: {resume}", ""]
    lines += ["| model | adapter | steps | pairs (mined) | precision | processes | deepspeed | 4-bit | train loss | final margin | seconds |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        margin = f"{r['final_margin']:.4f}" if isinstance(r["final_margin"], float) else "-"
        lines.append(f"| {escape(r['model'])} ({r['key']}) | {run_id}/{where}/{escape(r['model'])} | {r['steps']} | {r['pairs']} ({r['mined_rejected']}) | "
                     f"{r['precision']} | {r['processes']} | {escape(r['deepspeed'] or '-')} | {r['load_in_4bit']} | {r['train_loss']} | {margin} | {r['seconds']} |")
    lines += ["", f"Use a fine-tuned model anywhere: `models.a={run_id}/{where}/<model>`.", ""]
    return "\n".join(lines)
