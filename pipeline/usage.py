"""``python jobs/submit.py --help``: the stages, the config groups and every key with its default, read
from ``configs/`` and the stages' typed settings themselves, so the help cannot drift from what the submitter
accepts; ``--help <section>`` (debate, eval, train) says what each of a section's keys does."""

from __future__ import annotations

import textwrap
from typing import Any

from omegaconf import OmegaConf

from pipeline.config import CONFIG_DIR, GROUPS, show_scalar
from pipeline.launch import LAUNCHERS
from pipeline.run_config import RunConfig
from pipeline.settings import describe
from pipeline.stages import GROUP_SETTINGS, STAGES, load_defaults

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


def _options(group: str) -> dict[str, str]:
    """A group's choices and what each is: its YAML files' first comments, and the options that are settings
    classes (each backend of ``cluster``) their docstrings' first line."""
    options = {path.stem: _first_comment(path) for path in (CONFIG_DIR / group).glob("*.yaml")}
    options.update({name: (settings.__doc__ or "").split("\n")[0] for name, settings in GROUP_SETTINGS.get(group, {}).items()})
    return options


def _options_from(group: str) -> str:
    if group in GROUP_SETTINGS:
        return f"one declared in code: --help NAME lists its keys; or a preset configs/{group}/NAME.yaml"
    return f"configs/{group}/NAME.yaml"


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
        lines.append(f"{group}=NAME  ({_options_from(group)})")
        for name, what in sorted(_options(group).items()):
            lines.append(f"  {name:<8} {what}"[:width])
        lines.append("")
    config = OmegaConf.to_container(load_defaults(), resolve=False)
    lines.append(f"keys, with their defaults (what each does: --help {' | --help '.join(_described())}):")
    scalars = [leaf for key, value in config.items() if key != "stage" and not isinstance(value, dict) for leaf in _leaves(value, f"{key}.")]
    sections = [_leaves(value, f"{key}.") for key, value in config.items() if isinstance(value, dict)]
    for leaves in (scalars, *sections):
        lines += textwrap.wrap("  ".join(leaves), width, initial_indent="  ", subsequent_indent="      ", break_on_hyphens=False)
    lines += ["", "examples:"]
    lines += [f"  {command}\n      {what}" for command, what in EXAMPLES]
    lines += ["", "watch a run: python jobs/status.py [run id]   cancel it: python jobs/cancel.py <run id>"]
    return "\n".join(lines)


def _sections() -> dict[str, tuple[type, str]]:
    """What ``--help <name>`` describes: its settings and the prefix of their keys. ``run``: the root keys and
    the common sections; each stage's section; each backend's (``cluster.*``, by the backend's name)."""
    return {"run": (RunConfig, ""),
            **{name: (stage.settings, name) for name, stage in STAGES.items() if stage.settings is not None},
            **{kind: (launcher.settings, "cluster") for kind, launcher in LAUNCHERS.items()}}


def _described() -> list[str]:
    return list(_sections())


def section_usage(name: str, width: int = 100) -> str:
    """``--help <section>``: each key of a section, its default, and what it does and takes (and whether it
    can change a result)."""
    if name not in _sections():
        raise KeyError(f"no section '{name}'; sections: {', '.join(_described())}")
    settings, prefix = _sections()[name]
    summary = " ".join((settings.__doc__ or "").replace("``", "`").split()).split(". ")[0].rstrip(".")
    lines = [f"{prefix + '.*' if prefix else 'root keys'}: {summary}.", ""]
    for key, default, text in describe(settings, prefix):
        lines.append(f"  {key}={_shown(default) if not default.startswith('[') else default}")
        lines += textwrap.wrap(text, width, initial_indent="      ", subsequent_indent="      ", break_on_hyphens=False)
    return "\n".join(lines)

