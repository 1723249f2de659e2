"""The model registry (``configs/registry/models.yaml``) and the resolution of ``models.a`` / ``models.b``.

A model is named either by a registry entry or by a local folder (a Hugging Face model folder). Resolution
and the checks that need no model weights happen in the submitting process, so a missing model is an
error before anything is submitted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from omegaconf import OmegaConf

from pipeline.config import CONFIG_DIR, ConfigError, project_path

REGISTRY_PATH = CONFIG_DIR / "registry" / "models.yaml"
SOURCES = ("local", "hub", "gguf")


@dataclass(frozen=True)
class ModelSpec:
    """What to load for one model, and how."""

    name: str
    source: str
    path: str | None = None
    hub_id: str | None = None
    revision: str | None = None
    load_in_4bit: bool = False
    stop_tokens: tuple[str, ...] = ()
    gguf: Mapping[str, Any] = field(default_factory=dict)
    # A PEFT adapter folder applied on top of the model above (a fine-tuned model of the train stage).
    adapter: str | None = None

    @property
    def label(self) -> str:
        """How logs name the model: a fine-tuned one as its base and its adapter, never as the base alone."""
        return f"{self.name} + adapter ({self.adapter})" if self.adapter else self.name


def display_name(model: str) -> str:
    """A short name for a ``models.*`` value, for folder names: a registered name as it is, a model folder
    by its last path part."""
    return Path(model).name if "/" in model else model


def model_label(value: str, results_dir: str | Path | None = None) -> str:
    """How tables name a ``models.*`` value: a registered name or model folder by its short name; a PEFT
    adapter folder as ``<base> + adapter (<folder>)``, the folder relative to the results folder when
    inside it, so a fine-tuned model is never read as its base."""
    folder = project_path(value)
    if not folder.is_dir() and results_dir is not None:
        folder = project_path(results_dir) / value
    try:
        base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        return display_name(value)
    shown = folder
    if results_dir is not None and folder.is_relative_to(project_path(results_dir)):
        shown = folder.relative_to(project_path(results_dir))
    return f"{display_name(str(base))} + adapter ({shown})"


def load_registry(path: Path = REGISTRY_PATH) -> dict[str, ModelSpec]:
    """Every registered model, by name."""
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    specs: dict[str, ModelSpec] = {}
    for name, entry in raw.items():
        source = entry.get("source")
        if source not in SOURCES:
            raise ConfigError(f"{path}: model '{name}' has source={source}; valid sources: {', '.join(SOURCES)}")
        specs[name] = ModelSpec(
            name=name,
            source=source,
            path=entry.get("path"),
            hub_id=entry.get("id"),
            revision=entry.get("revision"),
            load_in_4bit=bool(entry.get("load_in_4bit", False)),
            stop_tokens=tuple(entry.get("stop_tokens", ())),
            gguf=entry.get("gguf", {}),
        )
    return specs


def resolve_model(key: str, value: str, registry: Mapping[str, ModelSpec], results_dir: str | Path | None = None) -> ModelSpec:
    """``models.a=<value>``: a registered name, else a local model or adapter folder (a path, or a path inside
    the results folder such as ``<run_id>/train/<model>``); anything else is a clear error."""
    if value in registry:
        spec = registry[value]
        if spec.source == "local" and (project_path(spec.path or "") / "adapter_config.json").is_file():
            return _adapter_spec(key, project_path(spec.path or ""), registry)
        return spec
    folder = project_path(value)
    if not folder.exists() and results_dir is not None and (project_path(results_dir) / value).is_dir():
        folder = project_path(results_dir) / value
    if folder.is_file():
        raise ConfigError(f"{key}={value}: is a file; give a model folder (with config.json) or a registered name")
    if folder.is_dir():
        if (folder / "adapter_config.json").is_file():
            return _adapter_spec(key, folder, registry)
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"{key}={value}: the folder has neither config.json nor adapter_config.json, so it is not a Hugging Face model or PEFT adapter folder"
            )
        return ModelSpec(name=folder.name, source="local", path=str(folder))
    raise ConfigError(
        f"{key}={value}: no such model folder and not a registered model; registered: {', '.join(sorted(registry))}"
    )


def _adapter_spec(key: str, folder: Path, registry: Mapping[str, ModelSpec]) -> ModelSpec:
    """A PEFT adapter: its base model is named in ``adapter_config.json`` (a registered name, a folder or a
    hub id), and it is loaded the way that base would be (dtype, 4-bit), with the adapter on top."""
    try:
        base_ref = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"{key}={folder}: adapter_config.json has no readable base_model_name_or_path ({err})") from None
    if base_ref in registry or project_path(base_ref).is_dir():
        base = resolve_model(f"{key} (base of the adapter)", base_ref, registry)
    else:
        base = ModelSpec(name=base_ref, source="hub", hub_id=base_ref)
    if base.adapter:
        raise ConfigError(f"{key}={folder}: its base {base_ref} is itself an adapter; merge it first")
    return replace(base, adapter=str(folder))


def check_available(key: str, spec: ModelSpec) -> None:
    """Fails before submission when a model cannot possibly load here (offline and not cached, missing folder)."""
    if spec.adapter and not (Path(spec.adapter) / "adapter_config.json").is_file():
        raise ConfigError(f"{key}={spec.adapter}: the adapter folder is missing or has no adapter_config.json")
    if spec.source == "local" and not (project_path(spec.path or "") / "config.json").is_file():
        raise ConfigError(f"{key}={spec.name}: model folder {project_path(spec.path or '')} is missing or has no config.json")
    if spec.source == "hub" and os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(spec.hub_id, "config.json", revision=spec.revision), str):
            raise ConfigError(
                f"{key}={spec.name}: {spec.hub_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; "
                "download it on a machine with hub access first (huggingface-cli download)"
            )
