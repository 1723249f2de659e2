"""Tables for pipeline.answers: every spelling a gold line or a model reply may use, and what it means."""

import json
import re
from pathlib import Path

import pytest

from pipeline.answers import GoldAnswerError, Reading, normalize_number, parse_gold, read_answer, same_answer


def extract_answer(text: str) -> str | None:
    """The flexible reading: what the suite read as the answer before the strict one (explicit, else the last number)."""
    return read_answer(text).flexible

GSM8K = Path(__file__).resolve().parent.parent / "pipeline" / "assets" / "gsm8k"

JANET = (
    "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
    "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market.\n"
    "#### 18"
)


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("18", "18"),
        ("  18  ", "18"),
        ("0", "0"),
        ("007", "7"),
        ("70,000", "70000"),
        ("1,000,000", "1000000"),
        ("$18", "18"),
        ("$1,000", "1000"),
        ("\\$18", "18"),
        ("€5", "5"),
        ("£12.50", "12.5"),
        ("50%", "50"),
        ("12.5\\%", "12.5"),
        ("−5", "-5"),
        ("+5", "5"),
        ("-3", "-3"),
        ("-$4", "-4"),
        ("-0.0", "0"),
        ("70000.0", "70000"),
        ("0.50", "0.5"),
        (".5", "0.5"),
        ("0.125", "0.125"),
        ("-2.50", "-2.5"),
        ("1.23456789012345678901234567890123456789", "1.23456789012345678901234567890123456789"),
        ("1e3", "1000"),
        ("2.5E2", "250"),
        ("1.5e-3", "0.0015"),
        ("3/4", "3/4"),
        ("6/8", "3/4"),
        ("8/4", "2"),
        ("-6/8", "-3/4"),
        ("\\frac{3}{4}", "3/4"),
        ("\\dfrac{3}{4}", "3/4"),
        ("\\frac{ 10 }{ 4 }", "5/2"),
        ("-\\frac{1}{2}", "-1/2"),
        ("1 1/2", "3/2"),
        ("-1 1/2", "-3/2"),
        ("2 2/4", "5/2"),
    ],
)
def test_normalize_number(token, expected):
    assert normalize_number(token) == expected


@pytest.mark.parametrize(
    "token",
    ["", "   ", "abc", "18 dollars", "1,2", "1,0000", "1 000", "5/0", "\\frac{1}{0}", "1.2.3", "--5", "e3", "."],
)
def test_normalize_number_rejects(token):
    assert normalize_number(token) is None


@pytest.mark.parametrize(
    ("solution", "expected"),
    [
        (JANET, "18"),
        ("It takes 2/2=<<2/2=1>>1 bolt of white fiber\nSo the total is 2+1=<<2+1=3>>3 bolts\n#### 3", "3"),
        ("He makes 1000*70=<<1000*70=70000>>70,000\n#### 70,000", "70000"),
        ("#### 1,000", "1000"),
        ("So the difference is 7 - 17 = <<7-17=-10>>-10\n#### -10", "-10"),
        ("#### 0", "0"),
        ("#### 18\n", "18"),
        ("#### 5\nafter a correction\n#### 6", "6"),
        ("#### 2.5", "2.5"),
        ("#### $18", "18"),
    ],
)
def test_parse_gold(solution, expected):
    assert parse_gold(solution) == expected


@pytest.mark.parametrize(
    ("solution", "quoted"),
    [
        ("She makes 18 dollars a day.", "She makes 18 dollars a day."),
        ("", "''"),
        ("#### eighteen", "eighteen"),
        ("#### ", "''"),
        ("#### 18 dollars", "18 dollars"),
        ("The answer is 18. " * 20, "The answer is 18. The answer"),
    ],
)
def test_parse_gold_errors_quote_the_text(solution, quoted):
    with pytest.raises(GoldAnswerError, match=re.escape(quoted)) as error:
        parse_gold(solution)
    assert len(str(error.value)) < 160
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # 1. the '####' marker
        ("#### 18", "18"),
        ("Some work.\n#### 42", "42"),
        ("#### 1,000", "1000"),
        ("#### $18", "18"),
        ("#### -7", "-7"),
        ("#### 70000.0", "70000"),
        ("#### 3/4", "3/4"),
        ("#### 5\nWait, that is wrong.\n#### 6", "6"),
        ("#### 18 dollars", "18"),
        ("#### **18**", "18"),
        ("#### unknown\nMy best guess is 5 apples.", "5"),
        ("#### unknown\nThe answer is 12.", "12"),
        # 2. \boxed{}
        ("\\boxed{18}", "18"),
        ("So she makes $\\boxed{18}$ dollars.", "18"),
        ("\\boxed{\\$18}", "18"),
        ("\\boxed{18 \\text{ dollars}}", "18"),
        ("\\boxed{\\frac{1}{2}}", "1/2"),
        ("\\boxed{\\dfrac{6}{8}}", "3/4"),
        ("\\boxed{1,000}", "1000"),
        ("\\boxed{-3}", "-3"),
        ("\\boxed{x = 5}", "5"),
        ("\\boxed{3 \\times 4 = 12}", "12"),
        ("First \\boxed{10}, then corrected: \\boxed{12}", "12"),
        ("\\boxed{12} and later \\boxed{?}", "12"),
        ("\\boxed{} but the total is 9", "9"),
        # as Qwen2.5-Coder-1.5B-Instruct writes them (docs/results.md)
        ("Thus, Janet makes \\(\\boxed{24}\\) dollars every day at the farmers' market.", "24"),
        ("The amount of the loss is:\n\\[ \\boxed{-50000} \\]", "-50000"),
        ("```output\n1260\n```\nThe total cost of the pastries Toula bought is \\(\\boxed{1260}\\).", "1260"),
        ("Thus, Eliza's earnings for the week are \\(\\boxed{0.55}\\).", "0.55"),
        ("= 240 miles\nSo, John is 0 miles from home at the end of those 4 hours.", "0"),
        # 3. "the answer is N" / "answer: N"
        ("The answer is 18", "18"),
        ("The final answer is $18.", "18"),
        ("the answer is: 18", "18"),
        ("Answer: 18", "18"),
        ("ANSWER: 18", "18"),
        ("**Answer:** 18", "18"),
        ("**Answer**: $18", "18"),
        ("The final answer is **18**.", "18"),
        ("The answer is 18 dollars, which is 2 more than 16.", "18"),
        ("The answer is -4 degrees.", "-4"),
        ("The answer is 1 1/2 cups.", "3/2"),
        ("Answer:\n\n42 cm", "42"),
        ("The answer is 5. Double-checking with 3 more steps gives 5 + 3 = 8.", "5"),
        ("I think the answer is 4. No wait, the final answer is 6. Checking: 2 * 3 = 6 again.", "6"),
        ("The answer is unclear to me. Counting gives 7.", "7"),
        # 4. the last number in the text
        ("She has 3 apples and buys 4 more, so 7.", "7"),
        ("16 - 3 - 4 = 9", "9"),
        ("It costs 18 dollars", "18"),
        ("The side is 5 cm", "5"),
        ("The discount is 50%", "50"),
        ("So the total is 18.", "18"),
        ("**18**", "18"),
        ("She ends up with $1,000,000 in savings.", "1000000"),
        ("Pick 1, 2 and 3", "3"),
        ("Values: 1,2345", "2345"),
        ("It is 70000.0 dollars", "70000"),
        ("It drops to −5 degrees", "-5"),
        ("The temperature is -3", "-3"),
        ("She ate 3/4 of the pie", "3/4"),
        ("Half, i.e. \\frac{1}{2}", "1/2"),
        ("She walked 2 1/2 miles", "5/2"),
        ("It holds .5 litres", "0.5"),
        ("It is 0.50 metres long.", "0.5"),
        ("Light travels 3e5 km in a second", "300000"),
        ("It costs €12.", "12"),
        (JANET, "18"),
        # no number at all
        ("", None),
        ("I don't know", None),
        ("#### unknown", None),
        ("\\boxed{x}", None),
        ("The answer is: unclear.", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#### 18\nThe answer is 20. \\boxed{19}", "19"),
        ("\\boxed{19}\nThe answer is 20.\n21", "20"),
        ("The answer is 20.\nThen 21 more eggs, 22 in all.", "20"),
        ("Answer: 20 \\boxed{19} 30", "19"),
        ("#### none\n\\boxed{19} The answer is 20.", "20"),
        ("\\boxed{none} The answer is 20. 30 eggs", "20"),
    ],
)
def test_the_explicit_answer_stated_last_wins(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "strict"),
    [
        # a '####' heading is text, not an answer (the models write Markdown)
        ("#### Step 3: Calculate the refund amount\nThe refund is $5600.\n\\boxed{5600}", "5600"),
        ("#### Step 1: Find the total\n9 + 3 = 12 eggs.\n#### Step 2: Sell them\n12 * 2 = 24", "24"),  # its closing line, not the step
        ("#### 5. Output the result.\nThe result is printed: \\(\\boxed{2}\\)", "2"),
        ("#### 3) Compute the sum\n4 + 5 = 9", "9"),
        ("### Step 2\n#### Part 2: Total\nSo 7 apples.", "7"),
        ("#### Final Answer\n\\[\n\\boxed{18}\n\\]", "18"),
        ("#### Final Answer: 18", "18"),
        ("#### Total: $22", "22"),
        ("#### The total is 22 dollars", "22"),
        # an equation on the marker line gives its result
        ("#### 13 + 9 = 22", "22"),
        ("#### 3 \\times \\$4 = \\$12", "12"),
        ("#### 16 - 3 - 4 = 9 eggs", "9"),
        # the forms a marker line's answer may take
        ("#### 18.", "18"), ("#### 18 dollars", "18"), ("#### **$1,000**", "1000"), ("#### \\( 42 \\)", "42"),
        ("#### -5", "-5"), ("#### 0.5", "0.5"), ("#### 3/4", "3/4"), ("#### unknown", None),
        # several explicit forms: the one stated last
        ("#### 18\nWait, I made an error. The answer is 20.", "20"),
        ("The answer is 20.\nLet me recheck: 9 * 2 = 18.\n#### 18", "18"),
        ("\\boxed{18}\nVerification: 18 / 2 = 9, so the final answer is \\boxed{18}.", "18"),
        # another's answer is not this reply's
        ("The other agent's answer is 20, which is wrong: step 2 should be 9 * 2.\n#### 18", "18"),
        ("Step 2 gives 18.\n#### 18\nTheir answer is 20 because they subtracted twice.", "18"),
        # a finished reply that ends in prose: its closing statement
        ("So Janet makes $18 every day at the market.", "18"),
        ("#### 3. Verify the calculation.\nThe calculation is correct. Mr. Josue has $17000 now.", "17000"),
        ("#### 1580\nFirst, the tuition.\n1.\n2.\n3.\n4.\n5.\n6.\n7.\n8.\nTherefore, Janet paid $580.", "580"),
        ("The total angle after 10 hours is indeed 82 degrees.", "82"),
        # ... but a comment right after an explicit answer does not replace it
        ("The total is 6 + 17 = 23.\n#### 23\n\nThe first half should have been 4 + 2 = 6, not 4 - 2 = 2.", "23"),
        # ... nor does a line that derailed into another script, or one that states nothing
        ("Let's compute.\n3 \\times 500 الفلسطين", None),
        ("53.City ruined. Please provide the correct input.", None),
        # a run of '#### N' lines (counting, alternating) has settled on nothing
        ("#### 7\n#### 14\n#### 15\n#### 16\n#### 17", None),
        ("#### 10 barrels\n#### 3 days\n#### 10 barrels\n#### 5 pumps", None),
    ],
)
def test_the_strict_reading_is_the_stated_final_answer(text, strict):
    assert read_answer(text).strict == strict


@pytest.mark.parametrize(
    ("text", "strict", "flexible", "form"),
    [
        ("#### 18", "18", "18", "marker"),
        ("so \\boxed{18}", "18", "18", "boxed"),
        ("The final answer is 18.", "18", "18", "phrase"),
        ("#### The answer is 7", "7", "7", "marker"),
        ("She pays 3 * 4 = 12 dollars.", "12", "12", "closing"),
        ("She pays 3 * 4 dollars", None, "4", None),
        ("#### Step 4: Add them\n3 + 4 = 7", "7", "7", "closing"),
        ("#### Step 4: Add them", None, "4", None),
        ("Nothing to compute.", None, None, None),
    ],
)
def test_both_readings_and_the_form(text, strict, flexible, form):
    assert read_answer(text) == Reading(strict, flexible, form)


@pytest.mark.parametrize(
    ("text", "strict", "flexible"),
    [
        # cut at the token limit inside the number: "#### 42" of "#### 42000" is not read as 42
        ("Total: 42000.\n#### 42", None, "42"),
        ("The answer is 4", None, "4"),
        # a statement the cut left whole still counts
        ("\\boxed{18}\nLet me double-check: 9 * 2", "18", "18"),
        ("#### 18\nNow the next step is 7", "18", "18"),
        # cut mid-reasoning: no explicit answer; flexible takes an intermediate number (why strict is the one scored)
        ("Step 1: 16 - 3 = 13.\nStep 2: 13 - 4", None, "4"),
    ],
)
def test_a_reply_cut_at_the_token_limit(text, strict, flexible):
    reading = read_answer(text, complete=False)
    assert (reading.strict, reading.flexible) == (strict, flexible)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("18", "18", True),
        ("18", "19", False),
        ("70000", "70000.0", True),
        ("0.5", "1/2", True),
        ("3/4", "0.75", True),
        ("3/2", "1.5", True),
        ("-3", "-3", True),
        ("-3", "3", False),
        ("0", "-0", True),
        ("1000", "1,000", True),
        ("1/3", "0.333", False),
        ("1/3", "0.3333333333333333", False),
        ("18", None, False),
        (None, "18", False),
        (None, None, False),
        ("abc", "abc", False),
        ("", "", False),
    ],
)
def test_same_answer(a, b, expected):
    assert same_answer(a, b) is expected
    assert same_answer(b, a) is expected


@pytest.mark.parametrize("split", ["test", "train"])
def test_parse_gold_on_every_gsm8k_line(split):
    """Every real gold answer parses, and every one is an integer (none are decimals or fractions)."""
    rows = [json.loads(line) for line in (GSM8K / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    golds = [parse_gold(row["answer"]) for row in rows]
    assert len(golds) == {"test": 1319, "train": 7473}[split]
    assert [g for g in golds if not re.fullmatch(r"-?\d+", g)] == []
    assert [row["answer"] for row in rows if extract_answer(row["answer"]) != parse_gold(row["answer"])] == []
