"""Answer extraction and comparison for GSM8K.

Answers travel through the pipeline as canonical strings rather than numbers so that they serialise to
JSON unchanged and never pick up float rounding; they are compared as exact `fractions.Fraction`s.

Canonical form: an integer is written plainly ("70000"); a non-integer written as a decimal keeps the
shortest plain decimal ("0.125", never "1.25e-1"); a non-integer written as a fraction (including LaTeX
and mixed numbers) is "p/q" in lowest terms with the sign on p ("-3/2"). So "0.75" and "3/4" are both
canonical yet spelled differently, which is why equality must go through `same_answer`, never `==`.
"""

import re
from decimal import Decimal
from fractions import Fraction

# One numeric token. A sign counts only when it cannot be a binary operator ("16-3" is 16 and 3);
# a comma is a thousands separator only when exactly three digits follow it ("1, 2" is two numbers);
# "18." does not take the sentence period, because a decimal point needs digits after it.
_NUMBER = re.compile(
    r"""
    (?:(?<![\w)\]}])(?P<sign>[-+\u2212]))?
    (?:\\?[$€£]\s?)?
    (?:
        \\d?frac\{\s*(?P<fnum>\d+)\s*\}\{\s*(?P<fden>\d+)\s*\}
      | (?P<whole>\d+)\ (?P<mnum>\d+)/(?P<mden>\d+)
      | (?P<num>\d+)/(?P<den>\d+)
      | (?P<dec>(?:\d+(?:,\d{3}(?!\d))*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?)
    )
    (?:\s?\\?%)?
    """,
    re.VERBOSE,
)
_MARKER = re.compile(r"####([^\n]*)")
_BOXED = re.compile(r"\\boxed\s*\{")
_PHRASE = re.compile(r"\banswer(?:\*\*)?\s*(?:is\b|[:=])", re.IGNORECASE)


class GoldAnswerError(ValueError):
    """A GSM8K gold solution has no parsable '#### N' line."""


def _canonical(match: re.Match[str]) -> str | None:
    """Turn one `_NUMBER` match into the canonical string; None for a zero denominator."""
    negative = match["sign"] in ("-", "\u2212")
    if match["dec"] is not None:
        digits = match["dec"].replace(",", "")
        value = Fraction(digits)
        if value.denominator == 1:
            return str(-value if negative else value)
        return ("-" if negative else "") + format(Decimal(digits), "f").rstrip("0")
    if match["fden"] is not None:
        whole, num, den = 0, int(match["fnum"]), int(match["fden"])
    elif match["mden"] is not None:
        whole, num, den = int(match["whole"]), int(match["mnum"]), int(match["mden"])
    else:
        whole, num, den = 0, int(match["num"]), int(match["den"])
    if den == 0:
        return None
    value = whole + Fraction(num, den)
    return str(-value if negative else value)


def _numbers(text: str) -> list[str]:
    """Every number in `text`, in order, canonical; units and words around them are skipped."""
    return [answer for m in _NUMBER.finditer(text) if (answer := _canonical(m)) is not None]


def normalize_number(text: str) -> str | None:
    """Canonicalise a single numeric token ("$70,000", "−5", "\\frac{6}{8}", "1 1/2", "50%").

    Gold answers and model answers are spelled many ways; one canonical string per spelling style lets
    them be stored as JSON and compared exactly. None when `text` is not exactly one number, so callers
    can tell "no answer" apart from any real value.
    """
    match = _NUMBER.fullmatch(text.strip())
    return _canonical(match) if match else None


def _clip(text: str, limit: int = 80) -> str:
    """Shorten `text` for an error message, so a long solution does not drown the message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_gold(solution: str) -> str:
    """The canonical gold answer of a GSM8K solution: the value after its last '####'.

    A gold answer that cannot be read must stop the run loudly: silently scoring against None would
    mark every model answer wrong. Hence GoldAnswerError, quoting the offending text.
    """
    marker = solution.rfind("####")
    if marker < 0:
        raise GoldAnswerError(f"no '####' line in gold solution {_clip(solution)!r}")
    tail = solution[marker + 4 :].split("\n", 1)[0].strip()
    answer = normalize_number(tail)
    if answer is None:
        raise GoldAnswerError(f"gold answer after '####' is not a number: {_clip(tail)!r}")
    return answer


def _boxed_contents(text: str) -> list[str]:
    """The contents of every balanced \\boxed{...}; a regex alone cannot match nested braces."""
    contents = []
    for match in _BOXED.finditer(text):
        depth = 1
        for end in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                contents.append(text[match.end() : end])
                break
    return contents


def _from_marker(text: str) -> str | None:
    """The number on the last '#### ...' line that has one: the format we ask models to use."""
    for line in reversed(_MARKER.findall(text)):
        if numbers := _numbers(line):
            return numbers[0]
    return None


def _from_boxed(text: str) -> str | None:
    """The number in the last \\boxed{} that has one; after '=' if the box holds an equation."""
    for content in reversed(_boxed_contents(text)):
        if numbers := _numbers(content.rsplit("=", 1)[-1]):
            return numbers[0]
    return None


def _from_phrase(text: str) -> str | None:
    """The first number on the line after the last "answer is" / "answer:" that is followed by one."""
    for match in reversed(list(_PHRASE.finditer(text))):
        line = text[match.end() :].lstrip().split("\n", 1)[0]
        if numbers := _numbers(line):
            return numbers[0]
    return None


def extract_answer(text: str) -> str | None:
    """A model's final answer in canonical form, or None when the text holds no number at all.

    Models state answers in many formats, so rules are tried from the most explicit to the least:
    '#### N', then \\boxed{N}, then "the answer is N", then the last number in the text. A rule that
    finds its marker but no number falls through, so "#### unknown" does not hide a later clue.
    """
    for rule in (_from_marker, _from_boxed, _from_phrase):
        if (answer := rule(text)) is not None:
            return answer
    numbers = _numbers(text)
    return numbers[-1] if numbers else None


def same_answer(a: str | None, b: str | None) -> bool:
    """Whether two answers are the same number, exactly (so "70000.0" equals "70000", "0.5" equals "1/2").

    This defines both "correct" and "the models agree". None, or a string that is not a number, is never
    equal to anything, not even None: an unparsable answer must never be counted as correct or as agreement.
    """
    if a is None or b is None:
        return False
    x, y = normalize_number(a), normalize_number(b)
    return x is not None and y is not None and Fraction(x) == Fraction(y)
