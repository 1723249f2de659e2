"""The transcript log (``paths.transcript_log``): every complete debate run's exchanges as plain text, one block
per run, appended once (``pipeline.files.append_block_once``: a rerun, a race or a kill mid-append leaves
each run's block there exactly once)."""

from __future__ import annotations

import time
from typing import Any

from pipeline.config import project_path
from pipeline.files import BLOCK_END, BLOCK_START, append_block_once


def transcript_block(run_id: str, records: list[dict[str, Any]], models: dict[str, str]) -> str:
    """The run's transcripts as text: question, discussion, final answer, correct. ``models``: each model's
    display name by its key in the pair."""
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


def log_transcripts(log: str, run_id: str, records: list[dict[str, Any]], models: dict[str, str]) -> bool:
    """Appends the run's block to the log ``log`` (a path as the config gives it) unless it is there; returns
    whether it appended."""
    return append_block_once(project_path(log), run_id, lambda: transcript_block(run_id, records, models))
