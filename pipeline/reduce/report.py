"""The page people open: ``report.html``, one self-contained file (inline CSS, JS and PNGs; nothing fetched)
with a step's tables, plots and config and, where the step has per-question outcomes, a question browser.

A run is read in a browser long after it ran, on a laptop without the cluster's files, so everything the page
shows is inside it. The tables are the reducer's own markdown, rendered here: whatever rows and tables a
reducer writes show up without this module knowing them. Model text is untrusted: every string reaches the
page escaped (HTML) or as JSON that the page's script only ever puts into ``textContent``.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipeline.config import to_yaml
from pipeline.files import write_atomic
from pipeline.jobs import ReduceTask
from pipeline.reduce.outcomes import Outcomes
from pipeline.run_config import RunConfig

# A single-stage run's page; each step of a ``stage=all`` chain writes ``<where>_report.html`` and the
# chain's page (written with the run README) links them.
REPORT = "report.html"


def step_report(where: str) -> str:
    """The file name of one step's page inside a chain."""
    return f"{where}_report.html"


def report_path(task: ReduceTask) -> Path:
    """Where a step's reducer writes its page: ``report.html`` for a run of one stage, else the step's own."""
    return task.run.root / (step_report(task.where) if task.chain else REPORT)


@dataclass(frozen=True)
class Questions:
    """What the question browser shows: each method's answer and verdict per question and, per question,
    ``details``: ``question`` text, ``turns`` (each a ``title``, ``answer``, ``right`` and ``text``: a debate's
    turns, an eval's responses) and ``flags`` (keys of ``filters``)."""

    outcomes: Outcomes
    details: dict[int, dict[str, Any]] = field(default_factory=dict)
    # (key, label, what it means) of each filter the page offers beside "all".
    filters: tuple[tuple[str, str, str], ...] = ()


_INLINE = re.compile(r"\\([!-/:-@\[-`{-~])|\*\*(.+?)\*\*|(`+)(.+?)\3|\[([^\]]+)\]\(([^)\s]+)\)")
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
# The only links the page makes: to an anchor of itself, or to a file of the run folder by its bare name (the
# chain's README linking each step's page). Anything else a line says (``javascript:``, a URL) stays text.
_LOCAL_LINK = re.compile(r"#[\w-]+|\w[\w.-]*\.(?:html|md|yaml|png|csv|json)")


def _inline(text: str) -> str:
    """Bold, code and links of one markdown line, backslash escapes honoured (``pipeline.markdown``),
    everything else escaped."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        escaped, bold, _, code, label, href = m.groups()
        if escaped is not None:
            out.append(html.escape(escaped))
        elif bold is not None:
            out.append(f"<strong>{_inline(bold)}</strong>")
        elif code is not None:
            out.append(f"<code>{html.escape(code[1:-1] if len(code) > 2 and code[0] == code[-1] == ' ' else code)}</code>")
        elif _LOCAL_LINK.fullmatch(href):
            out.append(f'<a href="{html.escape(href)}">{_inline(label)}</a>')
        else:
            out.append(html.escape(m.group(0)))
        pos = m.end()
    return "".join(out) + html.escape(text[pos:])


def _cells(line: str) -> list[str]:
    """A table row's cells: split at every ``|`` but an escaped one (``\\|``, a name's)."""
    row = line.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return [c.strip() for c in re.split(r"(?<!\\)\|", row)]


def _image(line: str) -> str | None:
    """The file name of an image line (``![name](name)``) that names a file of the run folder, else None."""
    m = _IMAGE.match(line)
    return m.group(2) if m and _LOCAL_LINK.fullmatch(m.group(2)) else None


def png_tag(path: Path) -> str:
    """A PNG as an ``<img>`` with its bytes inline; a missing file is said, not a broken image."""
    if not path.exists():
        return f"<p><em>{html.escape(path.name)}: not written</em></p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(path.name)}</figcaption></figure>'


def markdown_html(text: str, images: Path) -> str:
    """The reducers' markdown (headings, pipe tables, paragraphs, image lines) as HTML; images are read
    from the folder ``images`` and inlined."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line:
            i += 1
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 6)
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
            i += 1
        elif _image(line):
            out.append(png_tag(images / _image(line)))
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            body = [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
            head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
            cells = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
            out.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table></div>')
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].strip().startswith(("#", "|")) and not _image(lines[i].strip()):
                para.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(out)


def _browser_data(questions: Questions) -> dict[str, Any]:
    """The browser's rows as plain data: one per question, each method's answer and verdict in column order."""
    methods = list(questions.outcomes.methods)
    rows = []
    for index in sorted(questions.outcomes.gold):
        verdicts = [questions.outcomes.methods[m].get(index) for m in methods]
        detail = questions.details.get(index, {})
        rows.append({
            "index": index,
            "gold": questions.outcomes.gold[index],
            "answers": [None if v is None else [v[0], v[1]] for v in verdicts],
            "question": detail.get("question", ""),
            "flags": detail.get("flags", []),
            "turns": detail.get("turns", []),
        })
    return {"methods": methods, "filters": [list(f) for f in questions.filters], "rows": rows}


def script_json(data: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` that could end the
    element or open a comment, whatever the model wrote."""
    return json.dumps(data, ensure_ascii=False).replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1em 1.5em;color:#222}
h1{font-size:1.5em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.scroll{overflow-x:auto}figure{margin:1em 0}img{max-width:100%}figcaption{color:#666;font-size:.85em}
pre{background:#f7f7f7;padding:.6em;white-space:pre-wrap;word-break:break-word;max-height:40em;overflow:auto}
nav a{margin-right:1em}.right{background:#e3f5e1}.wrong{background:#fbe3e3}.none{color:#999}
#filters button{margin:0 .4em .4em 0;padding:.3em .7em;border:1px solid #aaa;border-radius:4px;background:#fff;cursor:pointer}
#filters button.on{background:#2b5fad;color:#fff;border-color:#2b5fad}
#questions tr.q{cursor:pointer}#questions tr.q:hover{outline:2px solid #2b5fad}
.turn{margin:.5em 0 1em}.turn h4{margin:.2em 0}.flag{display:inline-block;font-size:.8em;background:#eee;border-radius:3px;padding:0 4px;margin:1px}
td.question{max-width:28em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
"""

# The browser: rows are built from the JSON block; the URL's hash (#filter=<key>&q=<index>) picks the filter
# and the opened question, so a filtered view is a link someone can be sent.
_SCRIPT = """
(function(){
const data = JSON.parse(document.getElementById('questions-data').textContent);
const body = document.querySelector('#questions tbody');
const count = document.getElementById('shown');
const filterBox = document.getElementById('filters');
const labels = Object.fromEntries(data.filters.map(f => [f[0], f[1]]));
function el(tag, text, cls){ const e = document.createElement(tag); if (text !== undefined && text !== null) e.textContent = String(text); if (cls) e.className = cls; return e; }
function state(){ const p = new URLSearchParams(location.hash.slice(1)); return {filter: p.get('filter') || 'all', q: p.get('q')}; }
function go(filter, q){ const p = new URLSearchParams(); if (filter !== 'all') p.set('filter', filter); if (q !== null) p.set('q', q); location.hash = p.toString(); }
function answerCell(v){ if (!v) return el('td', '-', 'none'); return el('td', (v[0] === null ? 'unparsable' : v[0]) + (v[1] ? ' \\u2713' : ' \\u2717'), v[1] ? 'right' : 'wrong'); }
function exchange(row){
  const box = el('div');
  box.appendChild(el('h4', 'Question ' + row.index + ' (gold ' + row.gold + ')'));
  box.appendChild(el('pre', row.question));
  for (const t of row.turns){
    const turn = el('div', null, 'turn');
    const verdict = t.answer === null ? 'unparsable' : t.answer + (t.right ? ' \\u2713' : ' \\u2717');
    turn.appendChild(el('h4', t.title + ' \\u00b7 answer ' + verdict));
    turn.appendChild(el('pre', t.text));
    box.appendChild(turn);
  }
  return box;
}
function render(scroll){
  const s = state();
  for (const b of filterBox.querySelectorAll('button')) b.classList.toggle('on', b.dataset.filter === s.filter);
  const rows = data.rows.filter(r => s.filter === 'all' || r.flags.includes(s.filter));
  body.replaceChildren();
  for (const r of rows){
    const tr = el('tr', null, 'q'); tr.dataset.index = r.index;
    tr.appendChild(el('td', r.index)); tr.appendChild(el('td', r.question, 'question')); tr.appendChild(el('td', r.gold));
    r.answers.forEach(v => tr.appendChild(answerCell(v)));
    const tags = el('td'); r.flags.forEach(f => tags.appendChild(el('span', labels[f] || f, 'flag'))); tr.appendChild(tags);
    tr.addEventListener('click', () => go(s.filter, String(r.index) === s.q ? null : String(r.index)));
    body.appendChild(tr);
    if (String(r.index) === s.q){
      const open = el('tr', null, 'exchange'); open.dataset.index = r.index;
      const td = el('td'); td.colSpan = 4 + data.methods.length; td.appendChild(exchange(r)); open.appendChild(td);
      body.appendChild(open);
      if (scroll && tr.getBoundingClientRect().top > innerHeight) tr.scrollIntoView();
    }
  }
  count.textContent = rows.length + ' of ' + data.rows.length + ' questions' + (s.filter === 'all' ? '' : ': ' + (labels[s.filter] || s.filter));
}
const head = document.querySelector('#questions thead tr');
['#', 'question', 'gold'].concat(data.methods, ['flags']).forEach(h => head.appendChild(el('th', h)));
[['all', 'all questions', 'every question']].concat(data.filters).forEach(f => {
  const n = f[0] === 'all' ? data.rows.length : data.rows.filter(r => r.flags.includes(f[0])).length;
  const b = el('button', f[1] + ' (' + n + ')'); b.dataset.filter = f[0]; b.title = f[2];
  b.addEventListener('click', () => go(f[0], null)); filterBox.appendChild(b);
});
window.addEventListener('hashchange', () => render(false));
render(true);
})();
"""


def _browser(questions: Questions) -> str:
    legend = "".join(f"<li><strong>{html.escape(label)}</strong>: {html.escape(meaning)}</li>" for _, label, meaning in questions.filters)
    return (
        '<h2 id="browser">Questions</h2>'
        "<p>One row per question: the gold answer and each method's answer (\u2713 right, \u2717 wrong). Click a row for its "
        "full exchange; the address (<code>#filter=...&amp;q=...</code>) keeps the filter and the open question.</p>"
        f"{'<ul>' + legend + '</ul>' if legend else ''}"
        '<div id="filters"></div><p id="shown"></p>'
        '<div class="scroll"><table id="questions"><thead><tr></tr></thead><tbody></tbody></table></div>'
        f'<script type="application/json" id="questions-data">{script_json(_browser_data(questions))}</script>'
        f"<script>{_SCRIPT}</script>"
    )


def page(title: str, body: str) -> str:
    """A whole HTML document around ``body``: its style inline, no external resource."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; style-src \'unsafe-inline\'; script-src \'unsafe-inline\'">'
        f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def _config(config: RunConfig) -> str:
    """The config as its YAML, less the sections of the stages it does not run (a debate step's page leaves
    out ``eval.*`` and ``train.*``; a chain's page shows every stage's)."""
    others = set(config.sections) - {config.stage} if config.stage in config.sections else set()
    shown = {key: value for key, value in config.plain().items() if key not in others}
    return f'<h2 id="config">Config</h2><pre>{html.escape(to_yaml(shown))}</pre>'


def write_report(task: ReduceTask, table: str, plots: Sequence[str], questions: Questions | None = None) -> Path:
    """A step's page: its table (the reducer's markdown), its plots that exist, the browser, its config (the
    task's)."""
    run, where = task.run, task.where
    browse = questions is not None and bool(questions.outcomes.gold)
    nav = ('<a href="#browser">Questions</a>' if browse else "") + '<a href="#config">Config</a>'
    parts = [f"<nav>{nav}</nav>", markdown_html(table, run.root)]
    parts += [png_tag(run.root / name) for name in plots if (run.root / name).exists()]
    if browse:
        parts.append(_browser(questions))
    parts.append(_config(task.config))
    path = report_path(task)
    write_atomic(path, page(f"{run.run_id}: {where}", "\n".join(parts)))
    return path


def write_chain_report(task: ReduceTask, readme: str) -> Path:
    """A ``stage=all`` chain's page: its README (every step's table and plots, with links to the steps'
    pages) and the run's config (the summary task's)."""
    run = task.run
    body = markdown_html(readme, run.root) + _config(task.config)
    path = run.root / REPORT
    write_atomic(path, page(f"{run.run_id}: stage=all", body))
    return path
