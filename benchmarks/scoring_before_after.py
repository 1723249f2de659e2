"""The same records scored by an older answer reading and by today's: `docs/results.md`'s before/after table.

    python benchmarks/scoring_before_after.py RECORDS.jsonl CONFIG.yaml --before f5e12b7 --out docs/results/NAME

RECORDS is a debate step's shard records (one JSON object a line, texts kept), CONFIG the step's `stage.yaml`
or the run's `config.yaml`. The older reading is `pipeline/answers.py::extract_answer` as it was at the git
revision `--before` (it took the first number on any `####` line, the models' Markdown headings included, and
read a cut-off reply like a finished one); every reply is read by it, and the verdicts are derived by today's
`score_record` (agreement, final answer, votes), so the two tables differ by the reading alone. The debate's
turns are the ones the run generated (it stopped under today's reading); under the older one, its agreement
test is applied to those same turns. Writes `<out>.before.md` / `<out>.after.md` and the outcomes CSVs
`<out>_before_outcomes.csv` / `<out>_outcomes.csv`, and prints how many replies each reading reads differently.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from pipeline.debate import scoring  # noqa: E402
from pipeline.reduce.debate_stats import outcomes, summarize  # noqa: E402
from pipeline.reduce.outcomes import to_csv  # noqa: E402
from pipeline.debate.settings import DebateSettings  # noqa: E402
from pipeline.reduce.sharded import model_labels  # noqa: E402
from pipeline.reduce.tables import debate_table  # noqa: E402
from pipeline.run_config import RunConfig, load  # noqa: E402


def older_reader(revision: str) -> types.ModuleType:
    """``pipeline/answers.py`` as it was at ``revision``, loaded as a module of its own."""
    source = subprocess.run(["git", "show", f"{revision}:pipeline/answers.py"], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent).stdout
    module = types.ModuleType("answers_before")
    exec(compile(source, f"answers.py@{revision}", "exec"), module.__dict__)
    return module


def scored(records: list[dict], config: RunConfig, reading) -> list[dict]:
    """Every record's replies read by ``reading`` and its verdicts derived again."""
    original = scoring.reading_of
    scoring.reading_of = reading
    try:
        return [scoring.rescore(json.loads(json.dumps(r)), config.debate.final_answer, config.debate.max_rounds)[0]
                for r in records]
    finally:
        scoring.reading_of = original


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", type=Path)
    parser.add_argument("config", type=Path)
    parser.add_argument("--before", required=True, help="git revision whose pipeline/answers.py is the older reading")
    parser.add_argument("--out", type=Path, required=True, help="path prefix of the files written")
    parser.add_argument("--run-id", default="")
    args = parser.parse_args()
    config = load(yaml.safe_load(args.config.read_text()), {"debate": DebateSettings})
    records = [json.loads(line) for line in args.records.read_text(encoding="utf-8").splitlines() if line.strip()]
    old = older_reader(args.before)

    def old_reading(text: str, stopped: bool) -> dict:
        answer = old.extract_answer(text)
        return {"answer": answer, "flexible": answer, "form": None}

    before, after = scored(records, config, old_reading), scored(records, config, scoring.reading_of)
    replies = [(b, a) for rb, ra in zip(before, after) for b, a in zip(scoring.replies_of(rb), scoring.replies_of(ra))]
    differ = sum(b["answer"] != a["answer"] for b, a in replies)
    print(f"{len(records)} questions, {len(replies)} replies: the two readings differ on {differ}")
    labels = model_labels(config)
    for name, chosen in (("before", before), ("after", after)):
        summary = summarize(chosen, labels, config.debate)
        suffix = "_before_outcomes.csv" if name == "before" else "_outcomes.csv"
        Path(f"{args.out}.{name}.md").write_text(debate_table(summary, args.run_id or args.records.stem, []))
        Path(f"{args.out}{suffix}").write_text(to_csv(outcomes(chosen, labels, config.debate)))
        debate = summary["methods"][0]
        print(f"{name}: debate {debate['correct']} / {debate['n']} ({100 * debate['accuracy']:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
