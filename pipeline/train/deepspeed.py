"""Which DeepSpeed config a train job takes: a name under ``configs/deepspeed/`` or a path, checked before
anything is submitted (without importing DeepSpeed or torch)."""

from __future__ import annotations

import json

from pipeline.config import CONFIG_DIR, ConfigError, project_path


def deepspeed_config(value: str | None) -> str | None:
    """``zero2`` / ``zero3`` -> ``configs/deepspeed/<name>.json``; a path stays a path; it must parse as JSON."""
    if not value:
        return None
    path = CONFIG_DIR / "deepspeed" / f"{value}.json" if "/" not in value and not value.endswith(".json") else project_path(value)
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in (CONFIG_DIR / "deepspeed").glob("*.json")))
        raise ConfigError(f"train.deepspeed={value}: no such file; use {names}, or a path to a DeepSpeed JSON config")
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"train.deepspeed={value}: {path} does not parse as JSON ({err})") from None
    if not isinstance(settings, dict) or "zero_optimization" not in settings:
        raise ConfigError(f"train.deepspeed={value}: {path} has no zero_optimization section")
    return str(path)
