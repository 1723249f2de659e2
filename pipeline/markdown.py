"""Text from data in the suite's markdown: model and folder names, dataset names, task and filter names,
method names read back from a CSV. Such text is the user's (a model folder named ``p | q``, or
``[x](javascript:...)``), so it reaches a table, a README or a model card escaped: it stays one cell and
never becomes a link, an image, emphasis or HTML, on GitHub, on the hub and in ``report.html`` alike.
"""

from __future__ import annotations

import re
from typing import Any

# Markdown's inline syntax (CommonMark backslash escapes): code, emphasis, links and images, HTML and
# entities, table cells; an underscore only where it could open or close emphasis (not inside a word).
_SPECIAL = re.compile(r"[\\`*\[\]<>|&]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def escape(text: Any) -> str:
    """``text`` as literal markdown inline text, safe in a table cell (control characters, a newline among
    them, become spaces: a row stays one line)."""
    return _SPECIAL.sub(lambda m: "\\" + m.group(0), _CONTROL.sub(" ", str(text)))


def code(text: Any) -> str:
    """``text`` as a markdown code span: fenced with more backticks than it holds in a row (CommonMark), so a
    backtick inside cannot end it; one line."""
    flat = _CONTROL.sub(" ", str(text))
    fence = "`" * (max((len(run) for run in re.findall(r"`+", flat)), default=0) + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{fence}{pad}{flat}{pad}{fence}"
