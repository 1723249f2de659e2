"""The README's example outputs are real: each marked block has the shape of what the current code prints
for the command the README gives (numbers, ids, paths and timing aside), so none can go stale silently.
The SLURM block is checked in tests/test_slurm.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.readme_blocks import README, block, shape

DEBATE = ["stage=debate", "models=tiny", "limit=16", "shards=4", "debate.max_new_tokens=96", "debate.max_rounds=2", "run_id=tiny-example", "wait=true"]
EVAL = ["stage=eval", "models=tiny", "tasks=[gsm8k]", "limit=8", "shards=2", "eval.max_gen_toks=64", "run_id=eval-tiny", "wait=true"]


def _run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / script), *args], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_readme_commands_are_the_ones_checked() -> None:
    text = README.read_text(encoding="utf-8")
    assert "python jobs/submit.py " + " ".join(DEBATE[:4]) + "\ndebate.max_new_tokens=96 debate.max_rounds=2 run_id=tiny-example wait=true | cat" in text
    assert "python jobs/submit.py stage=eval models=tiny 'tasks=[gsm8k]' limit=8 shards=2 eval.max_gen_toks=64 run_id=eval-tiny wait=true | cat" in text


def test_the_debate_eval_and_status_blocks_match_real_runs(results: Path) -> None:
    debate = _run("submit.py", *DEBATE, f"results_dir={results}")
    assert shape(debate) == shape(block("tiny-debate"))
    status = _run("status.py", "tiny-example", "--results-dir", str(results))
    assert shape(status) == shape(block("status-done"))
    evaluated = _run("submit.py", *EVAL, f"results_dir={results}")
    assert shape(evaluated) == shape(block("tiny-eval"))
