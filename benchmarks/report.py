"""How a benchmark ends: its report as one JSON line on stdout (the last line, for whoever parses the log),
and the same report, indented, in a file when ``--json`` names one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(report: dict[str, Any], path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
