"""The README's example outputs, by the name of their ``<!-- shape: NAME -->`` marker, and their shape: what
must match a real run of the current code whatever its numbers, ids, paths and timing."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def block(name: str) -> str:
    """The fenced block right after ``<!-- shape: name -->``."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"<!-- shape: {re.escape(name)} -->\n```[a-z]*\n(.*?)\n```", text, re.S)
    assert found, f"README.md has no block marked <!-- shape: {name} -->"
    return found.group(1)


def _line_shape(line: str) -> str:
    line = re.sub(r"(?<![\w.])/\S+", "PATH", line)  # absolute paths differ between machines and temporary folders
    line = re.sub(r"\b(\d+h)?\d+m\d*s?\b|\b\d+s\b", "TIME", line)  # 45s, 2m10s, 1h05m (progress.format_duration): a loaded machine is slower
    line = re.sub(r"\b\d+_\d+\b", "JOB", line)  # SLURM array task ids
    line = re.sub(r"\d+(\.\d+)?", "N", line)
    line = re.sub(r"#+", "#", line)
    line = re.sub(r"-{3,}", "---", line)
    return re.sub(r"\s+", " ", line).strip()


def shape(text: str) -> list[str]:
    """Lines as kinds: a table's data rows as their cell count (which rows a run has depends on its answers),
    every other line with its numbers, ids and paths blanked; progress lines but the step's last are
    dropped (how many a run prints depends on its speed); repeats collapsed."""
    out: list[str] = []
    for line in text.strip().splitlines():
        if re.match(r"\w+ +\[[#-]+\] ", line) and " done in " not in line:
            continue
        below_header = bool(out) and (out[-1].startswith("|---") or out[-1].startswith("table row"))
        if line.startswith("|") and below_header:
            kind = f"table row of {line.count('|') - 1} cells"
        else:
            kind = _line_shape(line)
        if not out or out[-1] != kind:
            out.append(kind)
    return out
