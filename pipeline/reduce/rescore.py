"""Score a finished debate step again from the texts its records keep: every reply read with today's reading,
every verdict derived again, the shards rewritten and the tables remade.

A number is only as good as its scoring, and a scoring rule can be wrong (the suite once read a Markdown
heading's step number as the answer). Records keep every generation's text and stop reason, so fixing the
reading never needs the GPU again: ``python jobs/rescore.py <run_id>``. The tables the step had are kept beside
the new ones (``*.before-rescore.*``), so a change of scoring can be shown side by side.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from pipeline.debate.scoring import replies_of, rescore
from pipeline.debate.units import TABLE, debate_schema, debate_units
from pipeline.files import write_atomic
from pipeline.jobs import ReduceTask
from pipeline.reduce.debate import reduce_debate
from pipeline.runs import Run
from pipeline.shards import ShardWriter


class RescoreError(ValueError):
    """A step that cannot be scored again (not a debate step, shards still running, records without texts)."""


def _keep_before(run: Run, where: str) -> list[str]:
    """The step's current table and outcomes, copied beside them as ``*.before-rescore.*`` (once: a second
    rescore keeps the first one's "before")."""
    kept = []
    for name in (TABLE.format(where=where), f"{where}_outcomes.csv", f"{where}_accuracy.json"):
        path = run.root / name
        before = path.with_name(path.name.replace(".", ".before-rescore.", 1))
        if path.exists() and not before.exists():
            write_atomic(before, path.read_bytes())
            kept.append(before.name)
    return kept


def rescore_step(task: ReduceTask) -> dict[str, Any]:
    """Reads every shard of the step again (holding each shard's writer lock, so no job writes it meanwhile),
    rewrites it atomically with the new readings, and runs the step's reducer with the task (a saved run's:
    ``stages.saved_task``). Returns the counts the command prints and the reducer's result."""
    run, where, config = task.run, task.where, task.config
    if config.stage != "debate" or not run.stage_dir(where).is_dir():
        raise RescoreError(f"{run.root}: no debate step {where!r} to score again (rescore reads debate records)")
    rule, max_rounds = config.debate.final_answer, config.debate.max_rounds
    counts: Counter[str] = Counter()
    kept = _keep_before(run, where)
    for unit in debate_units(config):
        path = run.stage_dir(where) / f"{unit.label}.jsonl"
        if not path.exists():
            continue
        with ShardWriter(path, debate_schema(config, unit)) as writer:
            lines = []
            for record in writer.records:
                without_text = [r for r in replies_of(record) if "text" not in r]
                if without_text or any("replies" not in v for v in record["vote"].values()):
                    raise RescoreError(f"{path}: question {record['index']} was recorded before every reply's text was kept; "
                                       "its answers cannot be read again (rerun the step)")
                new, changed, stop_differs = rescore(record, rule, max_rounds)
                counts["replies"] += len(replies_of(new))
                counts["answers_changed"] += changed
                counts["verdicts_changed"] += new["correct"] != record["correct"]
                counts["stop_differs"] += stop_differs
                counts["questions"] += 1
                lines.append(json.dumps(new, ensure_ascii=False) + "\n")
            write_atomic(path, "".join(lines))
    result = reduce_debate(task)
    return {**counts, "kept": kept, "result": result}
