"""Typed settings: a stage's section of the config (``debate.*``, ``eval.*``, ``train.*``) as a frozen dataclass.

Each setting is one field, written once, as TRL writes ``ORPOConfig``: its type, its default, its help and
its range. From that one field come the section's defaults that Hydra composes (no YAML repeats them), the
check every submission runs (one-line :class:`ConfigError`, the same words for every key), the typed object
a job reads (no hand-copied ``from_config``) and the ``--help`` text. A field that is another library's
setting under that library's name says so (``passes_to``) and reaches it as is.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Iterable, Mapping, TypeVar

from omegaconf import DictConfig, OmegaConf

from pipeline.config import ConfigError, require_bool, require_choice, require_int, require_number, show_scalar

T = TypeVar("T")

# The two models of a pair (models.a, models.b): what a stage's list of models may name.
PAIR = ("a", "b")


@dataclass(frozen=True)
class Knob:
    """What a field's metadata says beyond its type: the help, and the values it may take."""

    help: str
    minimum: float | None = None
    maximum: float | None = None
    # Numbers: the minimum itself is refused (a rate of 0).
    strict: bool = False
    # Numbers: values at or above this are refused (a dropout of 1).
    below: float | None = None
    choices: tuple[str, ...] | None = None
    # Lists: at least one entry, each entry once.
    nonempty: bool = False
    # The library whose setting of the same name this is (TRL's ORPOConfig, PEFT's LoraConfig).
    passes_to: str | None = None


def knob(default: Any, help: str, **limits: Any) -> Any:
    """A setting: its default and help, and the limits :func:`check` enforces (see :class:`Knob`)."""
    if "choices" in limits:
        limits["choices"] = tuple(limits["choices"])
    meta = {"knob": Knob(help=help, **limits)}
    # A list setting is a tuple in the frozen object (and a list again in the composed config).
    return field(default=tuple(default) if isinstance(default, list) else default, metadata=meta)


def section(cls: type[T], help: str) -> Any:
    """A nested section (``debate.prompts``), with its defaults."""
    return field(default_factory=cls, metadata={"knob": Knob(help=help)})


def _knob(f: dataclasses.Field) -> Knob:
    return f.metadata["knob"]


def _types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and is_dataclass(tp)


def _base(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, nullable)."""
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def defaults(cls: type) -> dict[str, Any]:
    """The section's defaults as plain data (what Hydra composes, lists as lists)."""
    out: dict[str, Any] = {}
    for f in fields(cls):
        value = f.default_factory() if f.default is MISSING else f.default
        out[f.name] = defaults(type(value)) if is_dataclass(value) else (list(value) if isinstance(value, tuple) else value)
    return out


def loose_keys(cls: type, prefix: str) -> set[str]:
    """The section's keys typed as a union of several types (``int | str``: a number or ``auto``), which a
    check against the default's type would refuse."""
    hints, keys = _types(cls), set()
    for f in fields(cls):
        key, tp = f"{prefix}.{f.name}", hints[f.name]
        if _is_section(tp):
            keys |= loose_keys(tp, key)
        elif typing.get_origin(tp) in (typing.Union, types.UnionType) and len([a for a in typing.get_args(tp) if a is not type(None)]) > 1:
            keys.add(key)
    return keys


def check(cfg: DictConfig, prefix: str, cls: type) -> None:
    """Checks every field of the section at ``prefix`` against its type and limits (types were checked against
    the defaults when the config was composed; here: ranges, choices, lists)."""
    hints = _types(cls)
    for f in fields(cls):
        key, tp = f"{prefix}.{f.name}", hints[f.name]
        if _is_section(tp):
            check(cfg, key, tp)
            continue
        k, (base, nullable) = _knob(f), _base(tp)
        if nullable and OmegaConf.select(cfg, key) is None:
            continue
        if base is bool and nullable and not isinstance(OmegaConf.select(cfg, key), bool):
            raise ConfigError(f"{key}={show_scalar(OmegaConf.select(cfg, key))}: must be true, false or null")
        if base is bool:
            require_bool(cfg, key)
        elif base is int:
            require_int(cfg, key, int(k.minimum if k.minimum is not None else -(2**31)), nullable=nullable,
                        **({"maximum": int(k.maximum)} if k.maximum is not None else {}))
        elif base is float:
            require_number(cfg, key, k.minimum if k.minimum is not None else float("-inf"), strict=k.strict, high=k.below)
        elif k.choices is not None and typing.get_origin(base) is tuple:
            _check_entries(key, list(OmegaConf.select(cfg, key)), k)
        elif k.choices is not None:
            require_choice(cfg, key, k.choices)
        elif typing.get_origin(base) is tuple and k.nonempty and not list(OmegaConf.select(cfg, key)):
            raise ConfigError(f"{key} is empty: {k.help}")
        elif base is str and k.nonempty and not str(OmegaConf.select(cfg, key)).strip():
            raise ConfigError(f"{key} is empty: {k.help}")


def _check_entries(key: str, entries: list[Any], k: Knob) -> None:
    assert k.choices is not None
    bad = [e for e in entries if e not in k.choices]
    if bad and k.nonempty:
        raise ConfigError(f"{key}={entries}: list {' and/or '.join(k.choices)} ({k.help}), each once")
    if bad:
        raise ConfigError(f"{key} has '{bad[0]}'; valid entries: {', '.join(k.choices)}")
    if k.nonempty and (not entries or len(set(entries)) != len(entries)):
        raise ConfigError(f"{key}={entries}: list {' and/or '.join(k.choices)} ({k.help}), each once")


def build(cls: type[T], node: Mapping[str, Any] | DictConfig) -> T:
    """The typed section from a config node (a job's resolved config): lists become tuples, nested sections
    their dataclasses."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    hints = _types(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        value, tp = node[f.name], hints[f.name]
        if _is_section(tp):
            value = build(tp, value)
        elif isinstance(value, list):
            value = tuple(value)
        elif _base(tp)[0] is float and isinstance(value, int):
            value = float(value)
        values[f.name] = value
    return cls(**values)


def passed_to(settings: Any, library: str) -> dict[str, Any]:
    """The fields that are ``library``'s own settings, by their (shared) names, lists as lists."""
    return {f.name: list(v) if isinstance(v := getattr(settings, f.name), tuple) else v
            for f in fields(settings) if _knob(f).passes_to == library}


def describe(cls: type, prefix: str) -> Iterable[tuple[str, str, str]]:
    """(key, default, help) for every setting of the section, nested ones included (``--help <section>``)."""
    hints = _types(cls)
    for f in fields(cls):
        key = f"{prefix}.{f.name}"
        if _is_section(hints[f.name]):
            yield from describe(hints[f.name], key)
            continue
        k = _knob(f)
        default = f.default_factory() if f.default is MISSING else f.default
        shown = "[" + ",".join(map(show_scalar, default)) + "]" if isinstance(default, (list, tuple)) else show_scalar(default)
        limits = [f"one of {', '.join(k.choices)}" if k.choices else "",
                  f"{'>' if k.strict else '>='} {k.minimum:g}" if k.minimum is not None else "",
                  f"<= {k.maximum:g}" if k.maximum is not None else "",
                  f"< {k.below:g}" if k.below is not None else "",
                  f"{k.passes_to}'s own setting" if k.passes_to else ""]
        note = "; ".join(x for x in limits if x)
        yield key, shown, k.help + (f" ({note})" if note else "")
