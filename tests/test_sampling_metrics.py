"""The vote's sampling metrics: pass@k's unbiased estimator, mean@k's interval, majority@j, and their rows."""

from __future__ import annotations

import math

import pytest

from pipeline.reduce.debate_stats import summarize
from pipeline.reduce.sharded import model_labels
from pipeline.reduce.tables import debate_table
from tests.debate_records import debate_config, record
from pipeline.reduce.sampling import mean_interval, pass_at_k, score_summary, scores_at, vote_curve


def test_pass_at_k_by_hand() -> None:
    # 5 samples, 2 right, draw 2: the draw misses both right ones in C(3, 2) = 3 of C(5, 2) = 10 ways.
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    # One sample: the fraction right.
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    # All n drawn: any right.
    assert (pass_at_k(4, 1, 4), pass_at_k(4, 0, 4)) == (1.0, 0.0)
    # Fewer wrong samples than draws: a right one is always drawn.
    assert pass_at_k(4, 3, 2) == 1.0
    # 6 samples, 1 right, draw 3: 1 - C(5, 3) / C(6, 3) = 1 - 10/20.
    assert pass_at_k(6, 1, 3) == pytest.approx(0.5)


def test_pass_at_k_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match="n=3, c=4, k=1"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="n=3, c=1, k=4"):
        pass_at_k(3, 1, 4)


def test_mean_interval_by_hand() -> None:
    # Mean 0.5; the scores' sample variance (0.25 + 0 + 0.25 + 0) / 3 = 1/6; the mean's s.e. sqrt(1/6 / 4).
    low, high = mean_interval([0.0, 0.5, 1.0, 0.5])
    half = 1.96 * math.sqrt((0.25 + 0.25) / 3 / 4)
    assert (low, high) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    assert mean_interval([0.9, 1.0])[1] == 1.0  # clipped
    assert mean_interval([0.5]) == (0.0, 1.0)  # one question says nothing about the spread


def test_a_count_gets_wilson_and_a_mean_of_fractions_the_normal_interval() -> None:
    count = score_summary([1.0, 0.0, 0.0, 0.0])
    assert (count["interval"], count["correct"], count["n"], count["ci95_low"], count["ci95_high"]) == ("wilson", 1, 4, 0.0456, 0.6994)
    mean = score_summary([0.25, 0.0, 0.5, 0.0])
    assert (mean["interval"], mean["correct"], mean["n"], mean["accuracy"]) == ("normal", 0.75, 4, 0.1875)
    assert mean["ci95_low"] < 0.1875 < mean["ci95_high"]


# Three questions, gold 5, four samples each, in the order generated.
SAMPLES = [["5", "6", "6", "5.0"], ["7", None, "5", "8"], ["6", "6", "6", "6"]]
GOLDS = ["5", "5", "5"]


def test_majority_is_over_the_first_j_samples_and_the_rest_over_all_k() -> None:
    one = scores_at(SAMPLES, GOLDS, 1)
    assert one["majority"] == [1.0, 0.0, 0.0]  # the first sample's verdict
    assert one["pass"] == one["mean"] == [0.5, 0.25, 0.0]  # c / k
    two = scores_at(SAMPLES, GOLDS, 2)
    assert two["majority"] == [1.0, 0.0, 0.0]  # "5" and "6" tie: the one seen first wins
    assert two["pass"] == [pytest.approx(1 - 1 / 6), pytest.approx(1 - 3 / 6), 0.0]
    three = scores_at(SAMPLES, GOLDS, 3)
    assert three["majority"] == [0.0, 0.0, 0.0]  # "6" twice beats "5"; the unparsable sample is never counted
    four = scores_at(SAMPLES, GOLDS, 4)
    assert four["majority"] == [1.0, 0.0, 0.0]  # 2-2 again, "5" (as "5.0" too) seen first
    assert four["pass"] == [1.0, 1.0, 0.0] and four["mean"] == [0.5, 0.25, 0.0]
    curve = vote_curve(SAMPLES, GOLDS)
    assert [(p["metric"], p["j"]) for p in curve[:3]] == [("majority", 1), ("pass", 1), ("mean", 1)]
    assert len(curve) == 12 and {p["n"] for p in curve} == {3}


def _record(index: int, samples: list[str | None]) -> dict:
    return record(index, "5", ["1", "1"], votes={"a": samples})


def test_the_debate_table_has_pass_and_mean_rows_beside_the_vote() -> None:
    records = [_record(i, s) for i, s in enumerate(SAMPLES)]
    config = debate_config({"models": {"a": "m-a", "b": "m-b"}, "debate": {"max_rounds": 1, "final_answer": "last", "baselines": {"vote_models": ["a"]}}})
    summary = summarize(records, model_labels(config), config.debate)
    rows = {r["method"]: r for r in summary["methods"]}
    assert list(rows) == ["debate", "model a (m-a) alone", "model a (m-a) majority vote (k=4)", "model a (m-a) pass@4", "model a (m-a) mean@4",
                          "model a (m-a) majority vote of its first 2 (the debate's tokens)"]
    assert (rows["model a (m-a) pass@4"]["correct"], rows["model a (m-a) pass@4"]["n"], rows["model a (m-a) pass@4"]["interval"]) == (2, 3, "wilson")
    assert (rows["model a (m-a) mean@4"]["correct"], rows["model a (m-a) mean@4"]["accuracy"], rows["model a (m-a) mean@4"]["interval"]) == (0.75, 0.25, "normal")
    assert rows["model a (m-a) pass@4"]["kind"] == "sampling" and rows["model a (m-a) majority vote (k=4)"]["kind"] == "method"
    assert [p["against"] for p in summary["paired"]] == ["model a (m-a) alone", "model a (m-a) majority vote (k=4)",
                                                         "model a (m-a) majority vote of its first 2 (the debate's tokens)"]  # no paired test of a metric
    (curve,) = summary["sampling"]
    assert (curve["model"], curve["k"], curve["n"]) == ("a", 4, 3)
    majority_at_k = next(p for p in curve["points"] if p["metric"] == "majority" and p["j"] == 4)
    assert majority_at_k["accuracy"] == rows["model a (m-a) majority vote (k=4)"]["accuracy"]
    table = debate_table(summary, "r", [])
    assert "| model a (m-a) pass@4 | 66.7% | 20.8% - 93.9% | 2 / 3 |  |  |  | 40.0 | 4.0 |" in table
    assert "| model a (m-a) mean@4 | 25.0% | " in table and " | 0.75 / 3 |  |  |  | 40.0 | 4.0 |" in table
    assert "pass@k: the unbiased estimator 1 - C(n-c, k) / C(n, k)" in table


def test_the_vote_at_the_debates_token_budget_is_the_majority_of_its_first_j_samples() -> None:
    """The debate spends 20 tokens a question and a sample 10: the budget vote is the majority of the first 2
    samples, paired with the debate like the other rows, and its own column in the outcomes file."""
    from pipeline.reduce.debate_stats import budget_cuts, first_samples_vote, outcomes

    records = [_record(i, s) for i, s in enumerate(SAMPLES)]
    votes = {r["index"]: r["vote"]["a"] for r in records}
    assert budget_cuts(records, votes) == [(2, "the debate's tokens")]
    cut = first_samples_vote(records, votes, 2)
    assert [v["answer"] for v in cut.values()] == ["5", "7", "6"]  # question 1's first two: "7" and no answer
    assert [v["correct"] for v in cut.values()] == [True, False, False] and {v["tokens"] for v in cut.values()} == {20}
    config = debate_config({"models": {"a": "m-a", "b": "m-b"}, "debate": {"max_rounds": 1, "final_answer": "last", "baselines": {"vote_models": ["a"]}}})
    assert "model a (m-a) majority vote of its first 2 (the debate's tokens) | right" in outcomes_header(outcomes(records, model_labels(config), config.debate))


def test_a_budget_between_two_sample_counts_gives_the_vote_under_it_and_over_it() -> None:
    """The debate spends 25 tokens a question and a sample 10 (2.5 samples): the table has the vote of the first 2
    (fewer tokens than the debate) and of the first 3 (more), each paired with the debate, never one of them
    passed off as the debate's budget."""
    from pipeline.reduce.debate_stats import budget_cuts

    records = [{**_record(i, s), "tokens": 25} for i, s in enumerate(SAMPLES)]
    assert budget_cuts(records, {r["index"]: r["vote"]["a"] for r in records}) == [(2, "fewer tokens than the debate"), (3, "more tokens than the debate")]
    config = debate_config({"models": {"a": "m-a", "b": "m-b"}, "debate": {"max_rounds": 1, "final_answer": "last", "baselines": {"vote_models": ["a"]}}})
    summary = summarize(records, model_labels(config), config.debate)
    paired = [p["against"] for p in summary["paired"]]
    assert paired[-2:] == ["model a (m-a) majority vote of its first 2 (fewer tokens than the debate)",
                           "model a (m-a) majority vote of its first 3 (more tokens than the debate)"]


def outcomes_header(result) -> str:
    from pipeline.reduce.outcomes import to_csv

    return to_csv(result).splitlines()[0]
