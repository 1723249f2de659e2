"""Shared test set-up: offline always, each test's results in its own folder, the tiny model pair."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import take_back_sigint

# Tests signal the processes they start with SIGINT (a local job's cancel): under a runner started with SIGINT
# ignored (a script's `cmd &`), those processes would inherit the ignore, as the suite's commands do not.
take_back_sigint()

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# wandb.mode=auto defers to this: no test logs to wandb but those that ask for it (wandb.mode=offline).
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (jobs/test.sh) the workers share the cores: each worker, and every job it starts, gets
# its share of threads. Oversubscribed, PyTorch's spinning threads made a 4 s test take 70 s.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def attention_backends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, bool, bool, bool]]:
    """Every ``scaled_dot_product_attention`` call from here on, as the backends it was free to take: (cuDNN's,
    memory-efficient, math, whether it was asked for grouped heads). transformers' models and the engine both call
    it through ``torch.nn.functional``."""
    import torch
    import torch.nn.functional as F

    seen: list[tuple[bool, bool, bool, bool]] = []
    attend = F.scaled_dot_product_attention

    def watched(*args, **kwargs):
        seen.append((torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
                     torch.backends.cuda.math_sdp_enabled(), bool(kwargs.get("enable_gqa"))))
        return attend(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", watched)
    return seen


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A fresh results folder for one test (the transcript log lives inside it too)."""
    folder = tmp_path / "results"
    folder.mkdir()
    return folder


def layered(overrides: list[str]) -> list[str]:
    """Defaults then a test's own overrides, as one command line: the last value of a key wins (the command
    line itself refuses a key given twice)."""
    last = {o.lstrip("+").split("=", 1)[0]: i for i, o in enumerate(overrides)}
    return [o for i, o in enumerate(overrides) if last[o.lstrip("+").split("=", 1)[0]] == i]


def tiny_overrides(results: Path, *extra: str) -> list[str]:
    """A fast debate on the tiny pair: few tokens, two rounds, small votes."""
    return layered([
        "stage=debate",
        "models=tiny",
        f"results_dir={results}",
        "debate.max_new_tokens=96",
        "debate.max_rounds=2",
        "debate.baselines.vote_k=3",
        "cluster.cpus_per_task=1",
        *extra,
    ])


class NamedModel:
    """What the debate engine reads of a loaded model where a test scripts its generation: its name."""

    def __init__(self, name: str) -> None:
        self.name = name


def copy_run(run: Path, name: str) -> Path:
    """A copy of a finished run under another id, beside it: a case can damage it without touching others."""
    import shutil

    target = run.parent / name
    shutil.copytree(run, target)
    config = (run / "config.yaml").read_text()
    (target / "config.yaml").write_text(config.replace(f"run_id: {run.name}", f"run_id: {name}"))
    return target


def run_submit(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python jobs/submit.py ...`` as a user runs it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "submit.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def comparable_tables(run_dir: Path) -> dict:
    """A run's merged table with the wall-time columns dropped: what must match between two runs."""
    import json

    summary = json.loads((run_dir / "debate_accuracy.json").read_text())
    for row in summary["methods"]:
        row.pop("seconds_per_question")
    return {k: summary[k] for k in ("methods", "per_round", "debate", "models", "n", "complete")}


def without_timings(records: list[dict]) -> list[dict]:
    """Records in problem order without their wall times (``seconds``, at any depth: turns, solo replies, vote
    samples): what must be the same between two runs that batch differently."""

    def drop(value):
        if isinstance(value, dict):
            return {k: drop(v) for k, v in value.items() if k != "seconds"}
        if isinstance(value, list):
            return [drop(v) for v in value]
        return value

    return [drop(r) for r in sorted(records, key=lambda r: r["index"])]


def run_interpreted(code: str, timeout: float) -> None:
    """``code`` in a fresh Python with ``TRITON_INTERPRET=1`` (Triton reads it at import, so the kernels run in its
    interpreter on this CPU); fails the test with the tail of its stderr. Skipped where a GPU is: the compiled
    kernels are tested there (the ``_on_the_gpu`` tests), and the interpreter's arithmetic is numpy's on the CPU,
    which on the lent GPU image (numpy 2.5) neither runs every kernel nor sums as the kernels do."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: its compiled kernels are tested instead of the interpreter")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
