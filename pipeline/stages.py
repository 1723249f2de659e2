"""The sharded stages of the suite, by name: what their array is, what a shard runs, what merges them.

The submitter, the status command and ``stage=all`` see a stage only through this table, so a stage is
added in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pipeline.debate.shard import debate_units, run_debate_shard
from pipeline.harness.shard import eval_units, run_eval_shard
from pipeline.reduce.debate import reduce_debate
from pipeline.reduce.eval import reduce_eval
from pipeline.shards import Unit
from pipeline.tasks import ShardTask


@dataclass(frozen=True)
class Stage:
    """A sharded stage: its units (array items), the shard callable, the reducer and its main table."""

    name: str
    units: Callable[[dict[str, Any]], list[Unit]]
    run_shard: Callable[[ShardTask], dict[str, Any]]
    reduce: Callable[[str], dict[str, Any]]
    table: str
    what: str


STAGES: dict[str, Stage] = {
    "debate": Stage("debate", debate_units, run_debate_shard, reduce_debate, "debate_accuracy.md", "problems"),
    "eval": Stage("eval", eval_units, run_eval_shard, reduce_eval, "eval_accuracy.md", "samples"),
}
