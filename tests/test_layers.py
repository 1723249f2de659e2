"""The house is layered: every import in ``pipeline/`` goes to its own layer or a lower one, never up.

The layers, bottom to top (``docs/architecture.md`` draws them):
0. config, settings, run_config, files, answers, markdown: what everything reads and writes through (a run's
   config tree: its root keys and common sections);
1. data, shards, progress, runs, the engine's choices, what a stage is (stage), wandb_run: records, run folders, what a task
   reports, where wandb logs;
2. tasks (the job bodies), models: what any stage runs and loads;
3. the engine: batched generation over the static decoder;
4. the stages: debate, harness (eval), train;
5. reduce: the tables, reading the stages' records;
6. launch: the backends (local, slurm, debug), each with its settings (``cluster.*``);
7. stages: the stage table, naming each stage's checks, units, task and reducer, and the config tree the
   stages and the backends make;
8. the commands' library: submit, watch, monitor, summary, usage, cli.
A module in no layer fails the test: a new one must be placed.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"

LAYERS = {
    "config": 0, "settings": 0, "run_config": 0, "files": 0, "answers": 0, "markdown": 0,
    "data": 1, "shards": 1, "progress": 1, "runs": 1, "engine": 1, "stage": 1, "wandb_run": 1,
    "jobs": 2, "models": 2,
    "engine.": 3,
    "debate": 4, "harness": 4, "train": 4,
    "reduce": 5,
    "launch": 6,
    "stages": 7,
    "submit": 8, "watch": 8, "monitor": 8, "summary": 8, "usage": 8, "cli": 8,
}


def layer(module: str) -> int:
    """``pipeline.engine.decode`` -> 3 (the engine's modules), ``pipeline.engine`` -> 1 (its choices)."""
    name = module.removeprefix("pipeline.")
    if name.startswith("engine."):
        return LAYERS["engine."]
    head = name.split(".")[0]
    assert head in LAYERS, f"{module} is in no layer: place it in tests/test_layers.py and docs/architecture.md"
    return LAYERS[head]


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            found += [node.module] if node.module != "pipeline" else [f"pipeline.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("pipeline")]
    return found


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        if module == "pipeline":
            continue
        for target in imports(path):
            if layer(target) > layer(module):
                upward.append(f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})")
    assert upward == []
