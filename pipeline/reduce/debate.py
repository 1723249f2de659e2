"""The debate reducer: completeness check, accuracy tables, the per-round plot and the transcript log.

It runs after the array whatever the tasks' outcome. It always says which shards are missing or partial
and how to resume them; the tables of an incomplete run are marked partial and its transcripts are not
logged (the log holds each complete run exactly once). Running it again gives the same files.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable

from pipeline.answers import same_answer
from pipeline.debate.scoring import final_turn
from pipeline.debate.vote import majority
from pipeline.config import project_path
from pipeline.debate.settings import DebateSettings
from pipeline.debate.units import PLOTS, TABLE, debate_schema, debate_units
from pipeline.models.registry import model_label
from pipeline.reduce.collect import begin_reduce, incomplete_note
from pipeline.markdown import escape
from pipeline.files import BLOCK_END, BLOCK_START, accuracy_axis, append_block_once, save_figure, write_atomic
from pipeline.reduce.outcomes import Outcomes, to_csv
from pipeline.reduce.questions import debate_questions
from pipeline.reduce.report import write_report
from pipeline.reduce.sampling import scores_at, score_summary, vote_curve
from pipeline.reduce.stats import format_p, mcnemar_exact
from pipeline.reduce.wandb_log import log_step
from pipeline.run_config import RunConfig, load
from pipeline.runs import Run
from pipeline.shards import ShardCheck

log = logging.getLogger(__name__)


def _row(method: str, scores: Iterable[float], tokens: Iterable[int], seconds: Iterable[float], kind: str = "method",
         facts: Iterable[tuple[bool, float, float]] = ()) -> dict[str, Any]:
    """A table row: per-question scores (1 right, 0 wrong; a fraction for mean@k) as accuracy with n and its
    95% interval. ``kind``: ``method`` (one answer per question) or ``sampling`` (read off a vote's samples).
    ``facts``, per question: (right under the flexible reading, share of its replies cut at the token limit,
    share of its replies that state no answer)."""
    scores, toks, secs, facts = list(scores), list(tokens), list(seconds), list(facts)
    n = len(scores)
    row = {
        "method": method,
        "kind": kind,
        **score_summary(scores),
        "tokens_per_question": round(sum(toks) / n, 1) if n else 0.0,
        "seconds_per_question": round(sum(secs) / n, 3) if n else 0.0,
    }
    if facts:
        row["flexible_accuracy"] = round(sum(f[0] for f in facts) / len(facts), 4)
        row["cut_off"] = round(sum(f[1] for f in facts) / len(facts), 4)
        row["no_explicit_answer"] = round(sum(f[2] for f in facts) / len(facts), 4)
    return row


def _facts(replies: list[dict[str, Any]], flexible: str | None, gold: str) -> tuple[bool, float, float]:
    """One question's (right under the flexible reading, share of ``replies`` cut off, share without an
    stated answer) for a method whose answer comes from ``replies`` (one, or a vote's k)."""
    n = len(replies)
    return (same_answer(flexible, gold), sum(not r["stopped"] for r in replies) / n, sum(r["answer"] is None for r in replies) / n)


def answer_after_round(record: dict[str, Any], round_no: int, rule: str) -> dict[str, Any]:
    """The turn whose answer the debate would give had it been stopped after ``round_no`` rounds."""
    if record["rounds"] <= round_no:
        return record["turns"][record["final_turn"]]
    turns = [t for t in record["turns"] if t["round"] <= round_no]
    return turns[final_turn(turns, False, rule)]


def role_label(key: str, models: dict[str, str]) -> str:
    """A model named by its role in the pair, so the same model twice still gives two rows: ``model a (name)``."""
    return f"model {key} ({models[key]})"


def solo_method(label: str) -> str:
    """A model-alone row's name."""
    return f"{label} alone"


def vote_method(label: str, k: int) -> str:
    """The vote row's name (the paired tests and the outcomes file name it too)."""
    return f"{label} majority vote (k={k})"


def _vote_k(entries: dict[int, dict[str, Any]]) -> int:
    return len(next(iter(entries.values()))["samples"])


def baselines(records: list[dict[str, Any]], models: dict[str, str], debate: DebateSettings) -> list[tuple[str, dict[int, dict[str, Any]]]]:
    """Each baseline's method name with its entry (answer, correct, tokens, seconds) per question index."""
    out = []
    for key in ("a", "b"):
        solo = {r["index"]: r["solo"][key] for r in records if key in r["solo"]}
        if solo:
            out.append((solo_method(role_label(key, models)), solo))
    for key in debate.baselines.vote_models:
        votes = {r["index"]: r["vote"][key] for r in records if key in r["vote"]}
        if votes:
            out.append((vote_method(role_label(key, models), _vote_k(votes)), votes))
            j, budget = budget_vote(records, votes)
            if j < _vote_k(votes):
                out.append((f"{role_label(key, models)} majority vote of its first {j} (the debate's tokens)", budget))
    return out


def budget_vote(records: list[dict[str, Any]], votes: dict[int, dict[str, Any]]) -> tuple[int, dict[int, dict[str, Any]]]:
    """The vote cut to the debate's own budget: j, the number of samples whose mean tokens come nearest the
    debate's mean tokens per question (at least 1), and each question's majority of its first j samples. A
    vote of k samples costs k generations and a debate about 2 per round; tokens, not generations, are the
    fair unit, since a review turn is shorter than a solve and a sample as long as one."""
    k = _vote_k(votes)
    debate_tokens = sum(r["tokens"] for r in records) / len(records)
    sample_tokens = sum(v["tokens"] for v in votes.values()) / (k * len(votes))
    j = max(1, min(k, round(debate_tokens / sample_tokens))) if sample_tokens else k
    gold = {r["index"]: r["gold"] for r in records}
    out = {}
    for index, vote in votes.items():
        replies = vote["replies"][:j]
        answer = majority([r["answer"] for r in replies])
        out[index] = {"answer": answer, "correct": same_answer(answer, gold[index]), "replies": replies,
                      "tokens": sum(r["tokens"] for r in replies), "seconds": round(sum(r["seconds"] for r in replies), 4)}
    return j, out


def _replies(record: dict[str, Any], entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The replies a baseline's answer comes from: a vote's samples, or the one solo reply (model a's: its first turn)."""
    if "replies" in entry:
        return entry["replies"]
    return [record["turns"][entry["turn"]]] if "turn" in entry else [entry]


def _baseline_facts(record: dict[str, Any], entry: dict[str, Any]) -> tuple[bool, float, float]:
    replies = _replies(record, entry)
    flexible = majority([r["flexible"] for r in replies]) if "replies" in entry else replies[0]["flexible"]
    return _facts(replies, flexible, record["gold"])


def sampling(records: list[dict[str, Any]], models: dict[str, str], debate: DebateSettings) -> list[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    """Per voting model, read off its k samples: its vote row's name, the pass@k and mean@k rows of the table
    (at the vote's cost: no generation of their own) and the majority@j, pass@j, mean@j curve for j = 1..k."""
    out = []
    for key in debate.baselines.vote_models:
        mine = [r for r in records if key in r["vote"]]
        if not mine:
            continue
        samples = [r["vote"][key]["samples"] for r in mine]
        golds = [r["gold"] for r in mine]
        k = min(len(s) for s in samples)
        scores = scores_at(samples, golds, k)
        cost = ([r["vote"][key]["tokens"] for r in mine], [r["vote"][key]["seconds"] for r in mine])
        label = role_label(key, models)
        rows = [_row(f"{label} {metric}@{k}", scores[metric], *cost, kind="sampling") for metric in ("pass", "mean")]
        curve = {"model": key, "label": label, "k": k, "n": len(mine), "points": vote_curve(samples, golds)}
        out.append((vote_method(label, k), rows, curve))
    return out


def _paired(records: list[dict[str, Any]], other: str, entries: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Debate against one baseline on the questions both answered: the discordant pairs and McNemar's exact p
    (kept unrounded: a p of 1e-40 is not 0)."""
    pairs = [(bool(r["correct"]), bool(entries[r["index"]]["correct"])) for r in records if r["index"] in entries]
    only_first = sum(x and not y for x, y in pairs)
    only_second = sum(y and not x for x, y in pairs)
    return {
        "against": other,
        "n": len(pairs),
        "only_debate_right": only_first,
        "only_baseline_right": only_second,
        "difference": round((only_first - only_second) / len(pairs), 4) if pairs else 0.0,
        "p_value": mcnemar_exact(only_first, only_second),
    }


# How a debate's agreement came about, judged against each model's own answer to the problem alone
# (model a's first turn; model b's solo baseline): copying is agreement where one side dropped its own answer.
AGREEMENT_KINDS = (
    ("independent", "both had it alone"),
    ("b_adopted", "b took a's answer"),
    ("a_adopted", "a took b's answer"),
    ("both_moved", "both moved to a new answer"),
    ("b_unknown", "b agreed with a (b alone not run)"),
    ("no_agreement", "never agreed"),
)


def agreement_kind(record: dict[str, Any]) -> str:
    """One of ``AGREEMENT_KINDS``'s keys for a debate record."""
    if not record["agreed"]:
        return "no_agreement"
    final = record["final_answer"]
    a_kept = same_answer(record["first_answers"]["a"], final)
    if "b" not in record["solo"]:
        return "b_unknown" if a_kept else "both_moved"
    b_kept = same_answer(record["solo"]["b"]["answer"], final)
    return {(True, True): "independent", (True, False): "b_adopted", (False, True): "a_adopted", (False, False): "both_moved"}[(a_kept, b_kept)]


def agreement(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Debates by how they agreed, each kind with its right and wrong finals and, where one model took the
    other's answer, whether that fixed its own wrong answer or gave up its own right one."""
    rows = []
    for key, label in AGREEMENT_KINDS:
        mine = [r for r in records if agreement_kind(r) == key]
        if not mine:
            continue
        row = {"kind": key, "label": label, "debates": len(mine), "right": sum(r["correct"] for r in mine)}
        row["wrong"] = row["debates"] - row["right"]
        if key in ("a_adopted", "b_adopted"):
            mover = key[0]
            alone = [same_answer(_alone(r, mover), r["gold"]) for r in mine]
            row["fixed_own_wrong"] = sum(r["correct"] and not ok for r, ok in zip(mine, alone))
            row["gave_up_own_right"] = sum(ok and not r["correct"] for r, ok in zip(mine, alone))
        rows.append(row)
    return rows


def _alone(record: dict[str, Any], key: str) -> str | None:
    return record["first_answers"]["a"] if key == "a" else record["solo"]["b"]["answer"]


def model_labels(config: RunConfig) -> dict[str, str]:
    """Each model's display name, by its key in the pair."""
    return {key: model_label(getattr(config.models, key), config.results_dir) for key in ("a", "b")}


def summarize(records: list[dict[str, Any]], config: RunConfig) -> dict[str, Any]:
    """All the numbers of the debate table, as plain data (the JSON file is exactly this)."""
    models = model_labels(config)
    debate = config.debate
    by_index = {r["index"]: r for r in records}
    finals = [r["turns"][r["final_turn"]] for r in records]
    rows = [_row("debate", (r["correct"] for r in records), (r["tokens"] for r in records), (r["seconds"] for r in records),
                 facts=(_facts([t], t["flexible"], r["gold"]) for r, t in zip(records, finals)))]
    paired = []
    sampled = {vote: (extra, curve) for vote, extra, curve in sampling(records, models, debate)}
    for method, entries in baselines(records, models, debate):
        mine = list(entries.values())
        rows.append(_row(method, (e["correct"] for e in mine), (e["tokens"] for e in mine), (e["seconds"] for e in mine),
                         facts=(_baseline_facts(by_index[i], e) for i, e in entries.items())))
        paired.append(_paired(records, method, entries))
        if method in sampled:
            rows += sampled[method][0]
    per_round = []
    for round_no in range(1, debate.max_rounds + 1):
        flags = [same_answer(answer_after_round(r, round_no, debate.final_answer)["answer"], r["gold"]) for r in records]
        row = _row(f"after round {round_no}", flags, [], [])
        row["still_open"] = sum(r["rounds"] > round_no for r in records)
        per_round.append({k: v for k, v in row.items() if not k.endswith("per_question") and k != "kind"})
    first_right = [same_answer(r["first_answers"]["a"], r["gold"]) for r in records]
    n = len(records)
    return {
        "methods": rows,
        "per_round": per_round,
        "debate": {
            "convergence_rate": round(sum(r["agreed"] for r in records) / n, 4) if n else 0.0,
            "mean_rounds": round(sum(r["rounds"] for r in records) / n, 3) if n else 0.0,
            "flips_right_to_wrong": sum(fr and not r["correct"] for fr, r in zip(first_right, records)),
            "flips_wrong_to_right": sum(not fr and r["correct"] for fr, r in zip(first_right, records)),
            "unparsable_final_answers": sum(r["final_answer"] is None for r in records),
            "final_answers_cut_off": sum(not t["stopped"] for t in finals),
        },
        "paired": paired,
        "sampling": [curve for _, curve in sampled.values()],
        "agreement": agreement(records),
        "models": {"a": models["a"], "b": models["b"]},
        "reading": "strict",
        "n": n,
    }


def outcomes(records: list[dict[str, Any]], config: RunConfig) -> Outcomes:
    """Every method's answer and verdict per question (the compact file a results page is recomputed from)."""
    models = model_labels(config)
    debate = config.debate
    methods: dict[str, dict[int, tuple[str | None, bool]]] = {"debate": {r["index"]: (r["final_answer"], bool(r["correct"])) for r in records}}
    for method, entries in baselines(records, models, debate):
        methods[method] = {i: (e["answer"], bool(e["correct"])) for i, e in entries.items()}
    for round_no in range(1, debate.max_rounds + 1):
        answers = {r["index"]: answer_after_round(r, round_no, debate.final_answer)["answer"] for r in records}
        methods[f"debate stopped after round {round_no}"] = {r["index"]: (answers[r["index"]], same_answer(answers[r["index"]], r["gold"])) for r in records}
    return Outcomes({r["index"]: r["gold"] for r in records}, methods)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(summary: dict[str, Any], run_id: str, checks: list[ShardCheck]) -> str:
    """The table a person reads: methods with 95% intervals, accuracy per round, the debate's dynamics."""
    done = sum(c.done for c in checks)
    expected = sum(c.expected for c in checks)
    lines = [f"# Debate accuracy: run {run_id}", ""]
    if done < expected:
        lines += [f"**PARTIAL: {done} of {expected} problems; the numbers below cover only those.**", ""]
    lines += [
        f"Models: a = {escape(summary['models']['a'])}, b = {escape(summary['models']['b'])}; {summary['n']} GSM8K problems.",
        "",
        "| method | accuracy (strict) | 95% CI | correct / n | accuracy (flexible) | cut at the token limit | no stated answer "
        "| tokens / question | seconds / question (batched) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["methods"]:
        extra = [_pct(r[k]) if k in r else "" for k in ("flexible_accuracy", "cut_off", "no_explicit_answer")]
        lines.append(
            f"| {escape(r['method'])} | {_pct(r['accuracy'])} | {_pct(r['ci95_low'])} - {_pct(r['ci95_high'])} | "
            f"{r['correct']} / {r['n']} | {' | '.join(extra)} | {r['tokens_per_question']} | {r['seconds_per_question']} |"
        )
    lines += ["", "| debate stopped after | accuracy | 95% CI | debates still open |", "|---|---|---|---|"]
    for r in summary["per_round"]:
        lines.append(f"| {r['method']} | {_pct(r['accuracy'])} | {_pct(r['ci95_low'])} - {_pct(r['ci95_high'])} | {r['still_open']} |")
    if summary["paired"]:
        lines += [
            "",
            "| debate against | questions | only debate right | only baseline right | difference | McNemar exact p |",
            "|---|---|---|---|---|---|",
        ]
        for p in summary["paired"]:
            lines.append(
                f"| {escape(p['against'])} | {p['n']} | {p['only_debate_right']} | {p['only_baseline_right']} | "
                f"{100 * p['difference']:+.1f} pts | {format_p(p['p_value'])} |"
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


def _csv(summary: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(summary["methods"][0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary["methods"])
    return out.getvalue()


def rounds_figure(summary: dict[str, Any], run_id: str) -> Any:
    """Accuracy after each round with its interval, against each baseline as a line: where people look."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def transcript_block(run_id: str, records: list[dict[str, Any]], config: RunConfig) -> str:
    """The run's transcripts as text: question, discussion, final answer, correct."""
    models = model_labels(config)
    out = [f"{BLOCK_START}{run_id} | debate | a={models['a']} b={models['b']} | {len(records)} problems | {time.strftime('%Y-%m-%d %H:%M:%S')}"]
    for r in records:
        verdict = "correct" if r["correct"] else "wrong"
        agreed = f"agreed after {r['rounds']} round(s)" if r["agreed"] else f"no agreement in {r['rounds']} round(s)"
        out += [f"--- problem {r['index']} | gold {r['gold']} | final {r['final_answer']} | {agreed} | {verdict}", f"Q: {r['question']}"]
        for t in r["turns"]:
            out.append(f"[round {t['round']}] {t['model']} ({t['name']}), answer {t['answer']}:")
            out.append(t["text"])
    out.append(f"{BLOCK_END}{run_id}")
    return "\n".join(out) + "\n\n"


def reduce_debate(run_root: str, where: str = "debate") -> dict[str, Any]:
    """Writes ``<where>_accuracy.{md,csv,json}``, ``<where>_outcomes.csv``, the per-round PNG, with a vote the
    vote-curve PNG, and the report page; logs transcripts once if complete."""
    run = Run(Path(run_root))
    config = load(run.stage_config(where), {"debate": DebateSettings})
    by_part, checks, result = begin_reduce(run, where, debate_units(config), "problems", lambda unit: debate_schema(config, unit))
    if "table" in result:
        return result
    records = by_part.get("", [])
    incomplete = not result["complete"]
    if not records:
        result["table"] = f"run {run.run_id}: no finished problems yet; resume with: {result['resume']}\n"
        return result
    summary = summarize(records, config)
    table = markdown(summary, run.run_id, checks)
    if incomplete:
        table += incomplete_note(checks, result["resume"])
    write_atomic(run.root / f"{where}_accuracy.json", json.dumps({**summary, **{k: result[k] for k in ('complete', 'shards')}}, indent=2) + "\n")
    write_atomic(run.root / f"{where}_accuracy.csv", _csv(summary))
    per_question = outcomes(records, config)
    write_atomic(run.root / f"{where}_outcomes.csv", to_csv(per_question))
    write_atomic(run.root / TABLE.format(where=where), table)
    save_figure(rounds_figure(summary, run.run_id), run.root / PLOTS[0].format(where=where))
    if summary["sampling"]:
        save_figure(vote_curve_figure(summary, run.run_id), run.root / PLOTS[1].format(where=where))
    write_report(run, where, table, [p.format(where=where) for p in PLOTS], config.plain(), debate_questions(records, per_question))
    log_step(run, where, config, {k: summary[k] for k in ("methods", "per_round", "paired", "agreement")},
             [run.root / p.format(where=where) for p in PLOTS], result["complete"], rounds=summary["per_round"])
    if not incomplete:
        log_path = project_path(config.paths.transcript_log)
        result["transcripts_appended"] = append_block_once(log_path, run.run_id, lambda: transcript_block(run.run_id, records, config))
    result["table"] = table
    log.info("reduced %d records of run %s (complete: %s)", len(records), run.run_id, result["complete"])
    return result
