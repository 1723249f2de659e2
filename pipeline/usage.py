"""``python jobs/submit.py --help``: the stages, the config groups and every key with its default, read
from ``configs/`` and the stages' typed settings themselves, so the help cannot drift from what the submitter
accepts; ``--help <section>`` (debate, eval, train) says what each of a section's keys does."""

from __future__ import annotations

import textwrap
from typing import Any

from omegaconf import OmegaConf

from pipeline.config import CONFIG_DIR, show_scalar
from pipeline.settings import describe
from pipeline.stages import STAGES, load_defaults

GROUPS = ("stage", "cluster", "models")
# Defaults longer than this (the prompts) are cut short in the overview.
LONGEST = 40
EXAMPLES = (
    ("bash jobs/demo.sh", "the main job end to end on this machine, the merged table printed"),
    ("python jobs/submit.py stage=debate shards=8", "a debate of the default pair, 8 array tasks"),
    ("python jobs/submit.py stage=eval models=tiny limit=20 wait=true", "lm-eval on the tiny pair, waiting for the table"),
    ("python jobs/submit.py stage=all cluster=slurm", "eval -> train -> eval fine-tuned -> debate on SLURM"),
    ("python jobs/submit.py run_id=<run id>", "resume a run: only its unfinished work is submitted"),
)


def _first_comment(path: Any) -> str:
    """The first comment line of a config file (what the file is for)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# ") and not line.startswith("# @package"):
            return line[2:].strip()
    return ""


def _shown(value: Any) -> str:
    """A default as the command line writes it; a long text (a prompt) cut short."""
    if isinstance(value, list):
        return "[" + ",".join(_shown(v) for v in value) + "]"
    text = show_scalar(value).replace("\n", " ")
    return text if len(text) <= LONGEST else text[: LONGEST - 3] + "..."


def _leaves(node: Any, prefix: str) -> list[str]:
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in _leaves(value, f"{prefix}{key}.")]
    return [f"{prefix[:-1]}={_shown(node)}"]


def usage(width: int = 100) -> str:
    """The help text."""
    lines = ["usage: python jobs/submit.py [key=value ...]", "",
             "Submits one stage of gsm8k-slurm (or the whole chain) through submitit; every setting is a key=value",
             "override of the YAML under configs/. Errors are one line and exit 2; nothing is submitted then.", ""]
    for group in GROUPS:
        lines.append(f"{group}=NAME  (configs/{group}/NAME.yaml)")
        for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
            lines.append(f"  {path.stem:<8} {_first_comment(path)}"[:width])
        lines.append("")
    config = OmegaConf.to_container(load_defaults(), resolve=False)
    lines.append(f"keys, with their defaults (what each does: --help {' | --help '.join(_described())}; the rest: configs/config.yaml):")
    scalars = [leaf for key, value in config.items() if key != "stage" and not isinstance(value, dict) for leaf in _leaves(value, f"{key}.")]
    sections = [_leaves(value, f"{key}.") for key, value in config.items() if isinstance(value, dict)]
    for leaves in (scalars, *sections):
        lines += textwrap.wrap("  ".join(leaves), width, initial_indent="  ", subsequent_indent="      ", break_on_hyphens=False)
    lines += ["", "examples:"]
    lines += [f"  {command}\n      {what}" for command, what in EXAMPLES]
    lines += ["", "watch a run: python jobs/status.py [run id]   cancel it: python jobs/cancel.py <run id>"]
    return "\n".join(lines)


def _described() -> list[str]:
    return [name for name, stage in STAGES.items() if stage.settings is not None]


def section_usage(name: str, width: int = 100) -> str:
    """``--help <section>``: each key of a stage's section, its default, and what it does and takes."""
    stage = STAGES.get(name)
    if stage is None or stage.settings is None:
        raise KeyError(f"no section '{name}'; sections: {', '.join(_described())}")
    summary = " ".join((stage.settings.__doc__ or "").replace("``", "`").split()).split(". ")[0].rstrip(".")
    lines = [f"{name}.*: {summary}.", ""]
    for key, default, text in describe(stage.settings, name):
        lines.append(f"  {key}={_shown(default) if not default.startswith('[') else default}")
        lines += textwrap.wrap(text, width, initial_indent="      ", subsequent_indent="      ", break_on_hyphens=False)
    return "\n".join(lines)

