"""Answer extraction and comparison for GSM8K.

Answers travel through the pipeline as canonical strings rather than numbers so that they serialise to
JSON unchanged and never pick up float rounding; they are compared as exact `fractions.Fraction`s.

Canonical form: an integer is written plainly ("70000"); a non-integer written as a decimal keeps the
shortest plain decimal ("0.125", never "1.25e-1"); a non-integer written as a fraction (including LaTeX
and mixed numbers) is "p/q" in lowest terms with the sign on p ("-3/2"). So "0.75" and "3/4" are both
canonical yet spelled differently, which is why equality must go through `same_answer`, never `==`.
"""

import re
from dataclasses import dataclass
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
_MARKER = re.compile(r"####[ \t]*([^\n]*)")
_BOXED = re.compile(r"\\boxed\s*\{")
_PHRASE = re.compile(r"\banswer(?:\*\*)?\s*(?:is\b|[:=])", re.IGNORECASE)
# Markdown and LaTeX wrapping around an answer line's value ("**18**", "\\(18\\)"), removed before it is read.
_WRAPPING = re.compile(r"\*\*|__|`|\\[()\[\]]|\\text\{[^}]*\}|\\,")
# A '####' line that is a heading, not an answer: "Step 3: ...", "Part 2", or a numbered title "5. Output the result".
_HEADING = re.compile(r"^(?:(?:step|part|phase|case|stage)\b|\d+\s*[.):]\s+[^\W\d_])", re.IGNORECASE)
# A label before the value on an answer line ("Final answer:", "The total is"): words only, no digits.
_LABEL = re.compile(r"^[^\W\d_][^\d:=\n]{0,40}?(?:\bis\b|:)\s*", re.IGNORECASE)
# Words before an "answer is" that make it someone else's answer ("the other agent's answer is 20").
_OTHERS = re.compile(r"(?:agent|other|their|his|her|your|previous|incorrect|wrong)\W+(?:\w+\W+){0,2}$", re.IGNORECASE)
# The forms a stated answer takes, in the order they are named in records and tables: the explicit ones, and a
# finished reply's closing statement when it ends in prose after them.
FORMS = ("marker", "boxed", "phrase", "closing")
# A reply with this many '#### N' lines, nearly all different, runs through numbers rather than stating one.
_RUN = 4
# How many last lines of a reply may hold its closing statement, the words that make a sentence state a value,
# and characters that show a line has derailed (scripts other than Latin, Greek and maths mixed into it).
_CLOSING_LINES = 3
_TAIL_LINES = 8
_STATES = re.compile(r"\b(?:is|are|was|were|has|have|had|be|equals|received|earned|paid|spent|made|needs|costs|so|therefore|thus)\b", re.IGNORECASE)
_GARBAGE = re.compile(r"[\u0400-\u1fff\u2e80-\ufaff\uac00-\ud7af]")


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


@dataclass(frozen=True)
class Reading:
    """What a reply states as its answer, read two ways (lm-eval's two GSM8K filters, in this suite's forms).

    ``strict``: the final answer the reply states: an explicit form (``#### N`` on a line that holds the answer,
    ``\\boxed{N}``, "the answer is N"; the one stated last wins), or, in a reply that ended on its own and has no
    explicit answer among its last lines, its closing statement ("... Mr. Josue has $17000 now."); else None: a
    reply that states no answer (a run of '#### N' lines, a derailed or cut-off text) has not answered. Checked
    against 465 replies labelled by reading (tests/test_labelled_replies.py). ``flexible``: ``strict``, else the
    last number in the text (lm-eval's flexible-extract; it takes an intermediate number from a reply cut off
    mid-way). ``form``: which form gave ``strict`` (one of ``FORMS``), None without one.
    """

    strict: str | None
    flexible: str | None
    form: str | None


# One explicit statement found in a text: where it starts, where its number ends, the canonical answer, its form.
_Found = tuple[int, int, str, str]


def _first_number(text: str, offset: int) -> tuple[int, str] | None:
    """The end (in the whole text) and canonical value of the first number in ``text``, which starts at ``offset``."""
    for match in _NUMBER.finditer(text):
        if (answer := _canonical(match)) is not None:
            return offset + match.end(), answer
    return None


def _marker_value(line: str) -> str | None:
    """The answer a '####' line holds (its value, after a label or the last '='), or None for a heading or text."""
    content = _WRAPPING.sub("", line).strip().strip("*_ ")
    if _HEADING.match(content):
        return None
    content = _LABEL.sub("", content, count=1)
    value = content.rsplit("=", 1)[-1].strip()
    match = _NUMBER.match(value)
    if match is None or re.match(r"\s*[.):]\s*[^\W\d_]", value[match.end():]):
        return None
    return _canonical(match)


def _markers(text: str) -> list[_Found]:
    """Every '####' line that holds an answer; a heading ('#### Step 3: ...') is text, not an answer. On a line
    with several markers ("#### Final answer: #### 30") the last one's value counts."""
    found = []
    for match in _MARKER.finditer(text):
        answer = _marker_value(match[1].rsplit("####", 1)[-1])
        if answer is not None:
            found.append((match.start(), match.end(), answer, "marker"))
    return found


def _unsettled(markers: list[_Found]) -> bool:
    """A reply that runs through '#### N' lines (counting up, or alternating values) has not settled on one:
    at least ``_RUN`` answer lines with at least ``_RUN - 1`` different values."""
    return len(markers) >= _RUN and len({m[2] for m in markers}) >= _RUN - 1


def _closing(text: str) -> list[_Found]:
    """The number a finished reply's closing statement gives, when it ends in prose ("The calculation is correct.
    Mr. Josue has $17000 now.", "The total ... is indeed 82 degrees."): the last sentence with a number among its
    last few lines, if it says what something is (a verb such as is / has / was, or an '=') and is not garbage
    (another script mixed in: a derailed sample). Its value: after its last '=', else after its last such verb,
    else its first number."""
    lines = [(m.start(), m[0]) for m in re.finditer(r"[^\n]+", text) if m[0].strip() and not m[0].lstrip().startswith(("```", "#"))]
    for start, line in reversed(lines[-_CLOSING_LINES:]):
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", _WRAPPING.sub("", line)) if _numbers(s)]
        if not sentences:
            continue
        sentence = sentences[-1]
        if _GARBAGE.search(sentence) or not (_STATES.search(sentence) or "=" in sentence):
            return []
        value = sentence.rsplit("=", 1)[1] if "=" in sentence else _STATES.split(sentence)[-1]
        numbers = _numbers(value) or _numbers(sentence)
        return [(start, start + len(line), numbers[0], "closing")]
    return []


def _boxes(text: str) -> list[_Found]:
    """Every balanced \\boxed{...} holding a number (after its last '=' when it holds an equation); a regex
    alone cannot match the nested braces of \\boxed{\\frac{1}{2}}."""
    found = []
    for match in _BOXED.finditer(text):
        depth = 1
        for end in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                content = text[match.end() : end]
                value = content.rsplit("=", 1)[-1]
                if numbers := _numbers(value):
                    found.append((match.start(), end + 1, numbers[0], "boxed"))
                break
    return found


def _tail_start(text: str) -> int:
    """Where a reply's last ``_TAIL_LINES`` non-empty lines begin: an explicit answer there is its answer, whatever
    comment follows it ("#### 23\n\nThe first half should have been 4 + 2 = 6 ...")."""
    starts = [m.start() for m in re.finditer(r"[^\n]*\S[^\n]*", text)]
    return starts[-_TAIL_LINES] if len(starts) >= _TAIL_LINES else 0


def _phrases(text: str) -> list[_Found]:
    """Every "the (final) answer is N" / "Answer: N" with a number on its line (or the next non-empty one),
    except where the answer is another's ("the other agent's answer is 20")."""
    found = []
    for match in _PHRASE.finditer(text):
        line_start = text.rfind("\n", 0, match.start()) + 1
        line = text[line_start:].split("\n", 1)[0]
        if line.startswith("####") and _marker_value(line.rsplit("####", 1)[-1]) is not None:
            continue  # a marker line that holds its answer is read as one
        if _OTHERS.search(text[max(line_start, match.start() - 40) : match.start()]):
            continue  # another's answer is not this reply's
        rest = text[match.end() :]
        skipped = len(rest) - len(rest.lstrip())
        line = rest.lstrip().split("\n", 1)[0]
        if number := _first_number(line, match.end() + skipped):
            found.append((match.start(), number[0], number[1], "phrase"))
    return found


def read_answer(text: str, complete: bool = True) -> Reading:
    """Both readings of a reply (see ``Reading``).

    ``complete``: whether the reply ended on its own (its end-of-turn token) rather than at the token limit. In a
    reply cut off at the limit, a statement whose number runs to the very end ("#### 42" of "#### 42000") may
    be cut itself, so it does not count; one stated earlier in the text still does.
    """
    markers = _markers(text)
    if _unsettled(markers):
        markers = []
    found = [f for f in (*markers, *_boxes(text), *_phrases(text)) if complete or text[f[1] :].strip()]
    if complete:
        tail = _tail_start(text)  # once, not once a statement found
        if not any(f[0] >= tail for f in found):
            found += _closing(text)
    if found:
        _, _, strict, form = max(found, key=lambda f: (f[0], f[1]))
        return Reading(strict, strict, form)
    numbers = _numbers(text)  # only here: canonicalising every number of a reply was most of a reading's time
    return Reading(None, numbers[-1] if numbers else None, None)


def same_answer(a: str | None, b: str | None) -> bool:
    """Whether two answers are the same number, exactly (so "70000.0" equals "70000", "0.5" equals "1/2").

    This defines both "correct" and "the models agree". None, or a string that is not a number, is never
    equal to anything, not even None: an unparsable answer must never be counted as correct or as agreement.
    """
    if a is None or b is None:
        return False
    x, y = normalize_number(a), normalize_number(b)
    return x is not None and y is not None and Fraction(x) == Fraction(y)
