"""The answer reading against people: real replies of the suite's models, each labelled by reading its text.

``tests/data/labelled_replies.jsonl`` holds replies of the default pair (Qwen2.5-Coder-1.5B-Instruct and
-0.5B-Instruct) from the suite's own full-scale GPU runs (`docs/results.md`): first answers, debate turns of
both models and rounds, model b alone, vote samples at T=0.7, Markdown-heavy replies and replies cut at the
token limit, sampled at random from each kind. ``readings`` holds what each reader took as the reply's final
answer (or null: none stated, or cut before it), written down by reading the text, never by running the reading
under test; ``label`` is the readers' majority (on a tie, the first reader's). Every reply was read once; 142
were read by a second reader; the 43 on which the reading and the first reader disagreed were read blind by a
third reader (mixed with 57 agreed ones, which the third reader labelled as the first had, all 57), and the 25
where the third reader also disagreed with the first by a fourth (with 15 controls: 14 as the first). Any change
to ``pipeline/answers.py`` runs against them.

What they showed (docs/results.md, "Scoring against people"): on the replies that matter most, the 1.5B's greedy
replies that ended on their own, the reading agrees with the readers on every one. The rest are the 0.5B's and
the T=0.7 samples' derailed texts and replies cut at the token limit, where readers disagree with each other too
(the pairs of readings below): there no rule reaches 99.5%, and the floors below are what the reading measured,
kept so that a change cannot lower them.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.answers import normalize_number, read_answer, same_answer

LABELLED = Path(__file__).resolve().parent / "data" / "labelled_replies.jsonl"


def _agrees(read: str | None, label: str | None) -> bool:
    return read is None and label is None or same_answer(read, label)


def test_the_labelled_set_is_large_and_varied() -> None:
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 400
    kinds = {row["kind"].split(" model")[0].split(" (")[0] for row in rows}
    assert {"solo a", "solo b"} <= kinds and any(k.startswith("vote sample") for k in kinds) and any(k.startswith("debate round") for k in kinds)
    assert sum(not row["stopped"] for row in rows) >= 50
    assert all(row["label"] is None or normalize_number(row["label"]) is not None for row in rows)


def _disagreements(rows: list[dict]) -> list[str]:
    out = []
    for row in rows:
        read = read_answer(row["text"], complete=row["stopped"]).strict
        if not _agrees(read, row["label"]):
            out.append(f"id {row['id']} ({row['model']}, {row['kind']}, stopped={row['stopped']}): read {read!r}, "
                       f"labelled {row['label']!r}{' - ' + row['note'] if row.get('note') else ''}")
    return out


def test_the_reading_agrees_with_the_reader_on_every_finished_greedy_reply_of_the_15b() -> None:
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines()]
    mine = [r for r in rows if "1.5b" in r["model"] and not r["sampled"] and r["stopped"]]
    assert len(mine) >= 100
    assert _disagreements(mine) == []


def test_the_strict_reading_agrees_with_the_readers_labels() -> None:
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines()]
    disagreements = _disagreements(rows)
    agreement = 1 - len(disagreements) / len(rows)
    assert agreement >= 0.94, f"{agreement:.1%} agreement on {len(rows)} labelled replies; disagreements:\n" + "\n".join(disagreements)


def test_readers_agree_with_each_other_on_most_but_not_all_of_the_replies_read_more_than_once() -> None:
    """The ceiling any reading can reach on these texts: the readers' own agreement, pair by pair of readings
    (137 of the 142 random second readings agreed with the first; the third and fourth readings went to the
    disputed replies, so most of the 67 pairs that disagree are there)."""
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines()]
    pairs = [(a, b) for r in rows for i, a in enumerate(r["readings"]) for b in r["readings"][i + 1:]]
    agree = sum(_agrees(a, b) for a, b in pairs)
    assert all(_agrees(r["label"], r["readings"][0]) or sum(_agrees(r["label"], x) for x in r["readings"]) * 2 > len(r["readings"])
               for r in rows)
    assert (len(pairs), agree) == (322, 255)
