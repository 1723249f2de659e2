"""The reducers' paired statistics: McNemar's exact test, the debate's agreement kinds, fine-tuned against base."""

from __future__ import annotations

import math

import pytest

from pipeline.reduce.debate_stats import agreement, agreement_kind, summarize
from pipeline.reduce.eval_stats import against_base
from pipeline.reduce.sharded import model_labels
from pipeline.reduce.tables import debate_table, eval_table
from pipeline.reduce.stats import difference_cell, format_p, mcnemar_exact
from tests.debate_records import debate_config, record


def test_mcnemar_exact_by_hand() -> None:
    # 1 question only the first method got, 5 only the second: n = 6 discordant pairs, each a fair coin
    # under the null. P(X <= 1) = (C(6,0) + C(6,1)) / 2^6 = 7/64; two-sided: 14/64.
    assert mcnemar_exact(1, 5) == pytest.approx(14 / 64)
    assert mcnemar_exact(5, 1) == pytest.approx(14 / 64)
    # All 6 discordant pairs on one side: 2 * 1/64.
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    # Balanced discordance is no evidence at all (the doubled tail is capped at 1).
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    # 10 vs 30 (n = 40): the tail sum by hand in exact integers.
    tail = sum(math.comb(40, i) for i in range(11)) / 2**40
    assert mcnemar_exact(10, 30) == pytest.approx(2 * tail)
    assert mcnemar_exact(10, 30) < 0.005


def test_mcnemar_refuses_negative_counts() -> None:
    with pytest.raises(ValueError, match="discordant counts"):
        mcnemar_exact(-1, 2)


def _record(index: int, gold: str, a_first: str, b_solo: str | None, final: str, agreed: bool) -> dict:
    """Model a states ``a_first``, b states ``final``; when they agreed on another answer than a's, a takes it in round 2."""
    turns = [a_first, final, final] if agreed and final != a_first else [a_first, final]
    made = record(index, gold, turns, b_solo)
    assert made["agreed"] is agreed and made["final_answer"] == final
    return made


RECORDS = [
    _record(0, "5", "5", "5", "5", True),    # both had it alone
    _record(1, "5", "5", "7", "5", True),    # b took a's right answer: b's wrong answer fixed
    _record(2, "5", "6", "5", "6", True),    # b took a's wrong answer: b gave up its right one
    _record(3, "5", "6", "7", "6", True),    # b took a's wrong answer; b was wrong alone too
    _record(4, "5", "6", "5", "5", True),    # a took b's right answer
    _record(5, "5", "6", "7", "8", True),    # both moved
    _record(6, "5", "6", "7", "7", False),   # never agreed
]


def test_agreement_tells_copying_from_correcting() -> None:
    assert [agreement_kind(r) for r in RECORDS] == [
        "independent", "b_adopted", "b_adopted", "b_adopted", "a_adopted", "both_moved", "no_agreement"]
    rows = {row["kind"]: row for row in agreement(RECORDS)}
    assert rows["b_adopted"] == {"kind": "b_adopted", "label": "b took a's answer", "debates": 3, "right": 1, "wrong": 2,
                                 "fixed_own_wrong": 1, "gave_up_own_right": 1}
    assert rows["a_adopted"]["fixed_own_wrong"] == 1 and rows["a_adopted"]["gave_up_own_right"] == 0
    assert (rows["independent"]["debates"], rows["both_moved"]["debates"], rows["no_agreement"]["debates"]) == (1, 1, 1)


def test_without_b_alone_agreement_is_not_called_independent() -> None:
    record = _record(0, "5", "5", None, "5", True)
    assert agreement_kind(record) == "b_unknown"


def test_the_debate_table_carries_paired_tests_and_agreement() -> None:
    config = debate_config({"models": {"a": "m-a", "b": "m-b"},
                            "debate": {"max_rounds": 2, "final_answer": "last", "baselines": {"vote_models": []}}})
    summary = summarize(RECORDS, model_labels(config), config.debate)
    by_method = {p["against"]: p for p in summary["paired"]}
    # debate right on 0, 1, 4; a alone right on 0, 1; b alone right on 0, 2, 4.
    assert by_method["model a (m-a) alone"] == {"against": "model a (m-a) alone", "n": 7, "only_debate_right": 1, "only_baseline_right": 0,
                                          "difference": round(1 / 7, 4), "p_value": 1.0}
    assert (by_method["model b (m-b) alone"]["only_debate_right"], by_method["model b (m-b) alone"]["only_baseline_right"]) == (1, 1)
    table = debate_table(summary, "r", [])
    assert "| model a (m-a) alone | 7 | 1 | 0 | +14.3 pts | 1 |" in table
    assert "| b took a's answer | 3 | 1 | 2 | 1 | 1 |" in table


def _eval_record(index: int, response: str, right: bool) -> dict:
    return {"index": index, "response": response, "correct": {"strict-match": right, "flexible-extract": right}}


def test_the_eval_table_rounds_each_share_once() -> None:
    """188 / 1319 = 0.142532 is 14.3%; rounded first to the row's 4 decimals (0.1425) it printed as 14.2%."""
    from pipeline.reduce.eval_stats import summarize as eval_summarize

    records = [{**_eval_record(i, "r", i < 188), "seconds": 0.0} for i in range(1319)]
    rows = eval_summarize({"b/gsm8k_cot_llama": records}, {"b": "m-b"}, ["b"], ["gsm8k_cot_llama"])
    assert rows[0]["accuracy"] == 0.1425
    assert "| 14.3% | 1.0 | 12.5% - 16.2% | 188 / 1319 |" in eval_table(rows, "r", [])


def test_a_difference_is_rounded_once_from_the_discordant_counts() -> None:
    """2 of 1,319 questions is +0.15 points, printed +0.2; the debate table once printed it from a difference
    stored to 4 decimals (0.0015), as +0.1, beside jobs/outcomes.py's +0.2 for the same run."""
    config = debate_config({"models": {"a": "m-a", "b": "m-b"},
                            "debate": {"max_rounds": 1, "final_answer": "last", "baselines": {"vote_models": []}}})
    records = [record(i, "5", ["6", "5"] if i >= 1317 else ["5", "5"]) for i in range(1319)]
    table = debate_table(summarize(records, model_labels(config), config.debate), "r", [])
    assert "| model a (m-a) alone | 1319 | 2 | 0 | +0.2 pts |" in table
    assert difference_cell(0, 0, 0) == "+0.0 pts"


def test_the_fine_tuned_against_base_table_rounds_each_accuracy_once() -> None:
    """188 / 1319 is 14.3% (stored to 4 decimals, 0.1425, it printed as 14.2%), beside 190 / 1319 fine-tuned."""
    base = {"a/gsm8k": [_eval_record(i, "r", i < 188) for i in range(1319)]}
    rows = against_base({"a/gsm8k": [_eval_record(i, "s", i < 190) for i in range(1319)]}, base)
    strict = next(r for r in rows if r["filter"] == "strict-match")
    assert (strict["base_accuracy"], strict["base_correct"], strict["correct"]) == (0.1425, 188, 190)
    assert "| strict-match | 14.3% | 14.4% | +0.2 pts | 2 | 0 |" in eval_table([], "r", [], base=rows)


def test_a_fine_tuned_step_that_changed_nothing_is_flagged() -> None:
    base = {"a/gsm8k": [_eval_record(i, f"r{i}", i % 2 == 0) for i in range(6)]}
    same = against_base({"a/gsm8k": [_eval_record(i, f"r{i}", i % 2 == 0) for i in range(6)]}, base)
    assert {r["identical_responses"] for r in same} == {6} and {r["p_value"] for r in same} == {1.0}
    assert "WARNING: model a's fine-tuned responses on gsm8k are identical" in eval_table([], "r", [], "eval_finetuned", same)
    moved = against_base({"a/gsm8k": [_eval_record(i, f"new{i}", True) for i in range(6)]}, base)
    strict = next(r for r in moved if r["filter"] == "strict-match")
    assert (strict["identical_responses"], strict["only_finetuned_right"], strict["only_base_right"]) == (0, 3, 0)
    assert (strict["base_accuracy"], strict["accuracy"]) == (0.5, 1.0)
    assert strict["p_value"] == pytest.approx(0.25)


def test_outcomes_round_trip_and_recompute_the_tables(tmp_path) -> None:
    from pipeline.reduce.outcomes import Outcomes, markdown as outcomes_markdown, read_csv, to_csv

    outcomes = Outcomes({0: "5", 1: "7", 2: "1/2"}, {"debate": {0: ("5", True), 1: (None, False), 2: ("0.5", True)},
                                                    "a alone": {0: ("4", False), 2: ("1/2", True)}})
    path = tmp_path / "debate_outcomes.csv"
    path.write_text(to_csv(outcomes))
    assert read_csv(path) == outcomes  # an unanswered question stays unanswered, an unparsable answer None
    table = outcomes_markdown(read_csv(path))
    assert "| debate | 66.7% | 20.8% - 93.9% | 2 / 3 |" in table  # 0.93851 rounded once (0.9385, then 93.8, was twice)
    assert "| a alone | 2 | 1 | 0 | +50.0 pts | 1 |" in table  # paired only on the 2 questions a answered


def test_a_damaged_outcomes_file_names_file_and_line(tmp_path) -> None:
    from pipeline.reduce.outcomes import OutcomesFileError, read_csv

    path = tmp_path / "x.csv"
    path.write_text("index,gold,debate | answer,debate | right\n0,5,5,1\n1,7,7,yes\n")
    with pytest.raises(OutcomesFileError, match=r"x.csv:3: an index that is not an integer or a 'right' that is not 0 or 1"):
        read_csv(path)


def test_every_committed_outcomes_file_recomputes_the_table_in_docs_results() -> None:
    """docs/results.md quotes `jobs/outcomes.py` on each committed file: the quote must be what it prints."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    page = (ROOT / "docs" / "results.md").read_text()
    files = sorted((ROOT / "docs" / "results").glob("*.csv"))
    assert files
    for path in files:
        out = subprocess.run([sys.executable, str(ROOT / "jobs" / "outcomes.py"), str(path.relative_to(ROOT))],
                             capture_output=True, text=True, cwd=ROOT, check=True).stdout
        table = out.split("\n\n", 1)[1].strip()
        assert table in page, f"docs/results.md does not quote the tables of {path.name}"


def test_every_joined_table_in_docs_results_is_what_the_command_prints() -> None:
    """A table of two runs paired (`jobs/outcomes.py --join ...`) is quoted under its command: rerun each."""
    import re
    import shlex
    import subprocess
    import sys

    from tests.conftest import ROOT

    page = (ROOT / "docs" / "results.md").read_text()
    commands = re.findall(r"`python jobs/outcomes.py (--join [^`]+)`", page)
    assert commands
    for command in commands:
        out = subprocess.run([sys.executable, str(ROOT / "jobs" / "outcomes.py"), *shlex.split(command)],
                             capture_output=True, text=True, cwd=ROOT, check=True).stdout
        assert out.split("\n\n", 1)[1].strip() in page, f"docs/results.md does not quote what `{command}` prints"


def test_joined_runs_pair_on_the_same_questions_and_refuse_other_questions(tmp_path) -> None:
    from pipeline.reduce.outcomes import Outcomes, OutcomesFileError, join, markdown as outcomes_markdown

    five = Outcomes({0: "5", 1: "7", 2: "9"}, {"a strict": {0: ("5", True), 1: ("6", False), 2: ("9", True)},
                                              "b strict": {0: ("1", False), 1: ("7", True), 2: ("9", True)}})
    four = Outcomes({0: "5", 1: "7", 2: "9"}, {"a strict": {0: ("5", True), 1: ("7", True), 2: ("9", True)}})
    both = join({"5-shot": five, "4-shot": four}, ("a strict",))
    assert list(both.methods) == ["5-shot: a strict", "4-shot: a strict"]
    assert "| 4-shot: a strict | 3 | 0 | 1 | -33.3 pts | 1 |" in outcomes_markdown(both)
    other = Outcomes({0: "5", 1: "8"}, {"a strict": {0: ("5", True)}})
    with pytest.raises(OutcomesFileError, match="question 1 has gold '8', another file '7': not the same questions"):
        join({"5-shot": five, "other": other})
    with pytest.raises(OutcomesFileError, match="no method holds any of 'gsm8k'"):
        join({"5-shot": five}, ("gsm8k",))


@pytest.mark.parametrize(("p", "shown"), [(1.0, "1"), (0.0703125, "0.0703"), (0.001, "0.001"), (0.00099, "9.9e-04"),
                                          (3.24e-41, "3.2e-41"), (1e-88, "1.0e-88"), (0.0, "< 1e-300")])
def test_p_values_print_with_two_significant_digits_below_a_thousandth_never_as_0(p: float, shown: str) -> None:
    assert format_p(p) == shown


def test_a_p_value_of_a_large_run_is_not_rounded_to_0() -> None:
    """On 1,319 questions a difference of 600 discordant pairs to 30 has p near 1e-140: the JSON keeps it and the
    table prints it in scientific notation (it printed 0 before)."""
    records = [record(i, "5", ["5", "5"], b_solo="6") for i in range(600)] + [record(600 + i, "5", ["6", "6"], b_solo="5") for i in range(30)]
    config = debate_config({"models": {"a": "m", "b": "m"}, "debate": {"max_rounds": 1, "final_answer": "last", "baselines": {"vote_models": []}}})
    summary = summarize(records, model_labels(config), config.debate)
    against_b = next(p for p in summary["paired"] if p["against"] == "model b (m) alone")
    assert 0 < against_b["p_value"] < 1e-100
    assert f"| {format_p(against_b['p_value'])} |" in debate_table(summary, "r", []) and "e-" in format_p(against_b["p_value"])
