"""Typed settings: a stage's section of the config (``debate.*``, ``eval.*``, ``train.*``) as a frozen dataclass.

Each setting is one field, written once, as TRL writes ``ORPOConfig``: its type, its default, its help and
its range, and any check of its own (a prompt template's placeholders, a callable for what another library
decides). From that one field come the section's defaults that Hydra composes (no YAML repeats them), the
check every submission runs (one-line :class:`ConfigError`, the same words for every key), the typed object
a job reads (no hand-copied ``from_config``) and the ``--help`` text. A field that is another library's
setting under that library's name says so (``passes_to``) and reaches it as is. A field that cannot change a
result (where files go, how progress is shown) says so (``results=False``, or a whole ``section(...,
results=False)``). A field that changes results only where the numbers depend on the batch (how the work is
batched, replayed or placed: measured to change no token in a batch-invariant run, and many without one)
names the section's switch that makes it run-only (``run_only_when="batch_invariant"``): it is run-only in a
run whose switch is ``true``, and a result setting otherwise (``null`` too: it may mean off). A result setting
added after runs were made, whose default is what those runs did, enters the records' fingerprint only at
another value (``only_when_changed=True``), so those runs still resume; a default changed after runs were made
names the one they had (``earlier_default``), which a saved config without the key means and the fingerprint
leaves out in place of today's. The records' fingerprint, the resume
check and the docs read these flags (:func:`run_only`, :func:`result_values`).
"""

from __future__ import annotations

import dataclasses
import string
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Callable, Iterable, Mapping, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from pipeline.config import ConfigError, require_bool, require_choice, require_int, require_number, show_scalar

T = TypeVar("T")

# The two models of a pair (models.a, models.b): what a stage's list of models may name.
PAIR = ("a", "b")
# A knob's ``earlier_default`` when its default never changed (None is a value a default may have been).
UNCHANGED: Any = object()


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
    # A text that is a ``str.format`` template: the names it is formatted with, and those it must contain.
    format_fields: tuple[str, ...] | None = None
    placeholders: tuple[str, ...] = ()
    # What no type or range can say (a value another library must know): called with the key and the set
    # (non-null) value as plain data; raises ConfigError.
    check: Callable[[str, Any], None] | None = None
    # Whether another value can change a result (a record, a table): false for what never touches a number
    # (where files go, the backend, the progress display). Off, the key is left out of the records' fingerprint
    # and may take another value when a run is resumed.
    results: bool = True
    # A setting that changes results unless the run is batch-invariant (the batch size, CUDA graphs, the
    # devices): the name of the section's boolean setting whose ``true`` makes it run-only, as ``results=False``
    # would. Any other value of the switch (``null`` too, which may mean off) keeps it a result setting.
    run_only_when: str | None = None
    # A result setting that enters the records' fingerprint only at a value other than its default: one added
    # after runs were made (its default being what they did), so their fingerprint stays and they still resume.
    only_when_changed: bool = False
    # A default changed after runs were made: the default those runs had. A saved config without the key means
    # it, and (with ``only_when_changed``) the fingerprint leaves the key out at it in place of today's default,
    # so the earlier runs keep their fingerprint and resume as they were made, and today's default enters it.
    earlier_default: Any = UNCHANGED
    # Texts: what the one-line error for an empty (or null) value tells the user; the help when unset.
    when_empty: str | None = None


def knob(default: Any, help: str, **limits: Any) -> Any:
    """A setting: its default and help, and the limits :func:`check` enforces (see :class:`Knob`)."""
    for name in ("choices", "format_fields", "placeholders"):
        if name in limits:
            limits[name] = tuple(limits[name])
    meta = {"knob": Knob(help=help, **limits)}
    if isinstance(default, dict):  # a mapping of any keys (passed on as is): each object its own copy
        return field(default_factory=lambda: dict(default), metadata=meta)
    # A list setting is a tuple in the frozen object (and a list again in the composed config).
    return field(default=tuple(default) if isinstance(default, list) else default, metadata=meta)


def section(cls: type[T], help: str, results: bool = True) -> Any:
    """A nested section (``debate.prompts``), with its defaults; ``results=False``: none of its keys can
    change a result (``progress.*``)."""
    return field(default_factory=cls, metadata={"knob": Knob(help=help, results=results)})


def _knob(f: dataclasses.Field) -> Knob:
    return f.metadata["knob"]


def _knobs(cls: type) -> list[dataclasses.Field]:
    """The section's settings: its fields that are knobs (a run's config also holds parts built elsewhere)."""
    return [f for f in fields(cls) if "knob" in f.metadata]


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _changes_results(k: Knob, values: Mapping[str, Any]) -> bool:
    """Whether the setting can change a result in a section of these values (plain data)."""
    return k.results and not (k.run_only_when is not None and values.get(k.run_only_when) is True)


def run_only(cls: type, prefix: str, values: Mapping[str, Any]) -> frozenset[str]:
    """The dotted keys of the section that cannot change a result in a run of these values (the section's,
    as plain data): ``results=False`` (a run-only section is named whole), and ``run_only_when`` where the
    values set its switch to true. What the fingerprint leaves out and a resume may change."""
    hints, keys = _types(cls), set()
    for f in _knobs(cls):
        key = _key(prefix, f.name)
        if not _changes_results(_knob(f), values):
            keys.add(key)
        elif _is_section(hints[f.name]):
            keys |= run_only(hints[f.name], key, values[f.name])
    return frozenset(keys)


def run_only_when(cls: type, prefix: str) -> dict[str, str]:
    """The dotted keys of the section that are run-only only where a switch is true, each with that switch's
    dotted key (``debate.batch_size``: ``debate.batch_invariant``): what a refused resume tells the user."""
    hints, keys = _types(cls), {}
    for f in _knobs(cls):
        key, k = _key(prefix, f.name), _knob(f)
        if k.run_only_when is not None:
            keys[key] = _key(prefix, k.run_only_when)
        elif _is_section(hints[f.name]):
            keys |= run_only_when(hints[f.name], key)
    return keys


def result_values(settings: Any) -> dict[str, Any]:
    """The section's values as plain data without those that cannot change a result in this run, nor those
    that enter the fingerprint only when changed and are at their default: what decides a record, as the
    records' fingerprint holds it."""
    values = plain(settings)
    return {f.name: result_values(v) if is_dataclass(v := getattr(settings, f.name)) else _plain(v)
            for f in _knobs(type(settings)) if _changes_results(_knob(f), values)
            and not (_knob(f).only_when_changed and values[f.name] == _earlier(f))}


def plain(settings: Any) -> dict[str, Any]:
    """The section's values as plain data (lists as lists), as the composed config holds them: for YAML."""
    return {f.name: plain(v) if is_dataclass(v := getattr(settings, f.name)) else _plain(v) for f in _knobs(type(settings))}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


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


def _default(f: dataclasses.Field) -> Any:
    """A setting's default as plain data (a section's as its defaults)."""
    value = f.default_factory() if f.default is MISSING else f.default
    return defaults(type(value)) if is_dataclass(value) else _plain(value)


def _earlier(f: dataclasses.Field) -> Any:
    """What runs made before the setting's default changed had (its ``earlier_default``), else its default."""
    earlier = _knob(f).earlier_default
    return _default(f) if earlier is UNCHANGED else earlier


def defaults(cls: type) -> dict[str, Any]:
    """The section's defaults as plain data (what Hydra composes, lists as lists)."""
    return {f.name: _default(f) for f in _knobs(cls)}


def loose_keys(cls: type, prefix: str) -> set[str]:
    """The section's keys typed as a union of several types (``int | str``: a number or ``auto``), which a
    check against the default's type would refuse."""
    hints, keys = _types(cls), set()
    for f in _knobs(cls):
        key, tp = _key(prefix, f.name), hints[f.name]
        if _is_section(tp):
            keys |= loose_keys(tp, key)
        elif typing.get_origin(tp) in (typing.Union, types.UnionType) and len([a for a in typing.get_args(tp) if a is not type(None)]) > 1:
            keys.add(key)
    return keys


def free_keys(cls: type, prefix: str) -> set[str]:
    """The section's keys that hold a mapping of any keys (passed as is to another tool: sbatch's flags)."""
    hints, keys = _types(cls), set()
    for f in _knobs(cls):
        key, tp = _key(prefix, f.name), hints[f.name]
        if _is_section(tp):
            keys |= free_keys(tp, key)
        elif typing.get_origin(_base(tp)[0]) is dict:
            keys.add(key)
    return keys


def check(cfg: DictConfig, prefix: str, cls: type) -> None:
    """Checks every field of the section at ``prefix`` (``""``: the root) against its type and limits (types
    were checked against the defaults when the config was composed, but for settings whose default is null:
    here), then the field's own ``check``, then what no single field can say: the section's own
    ``validate(prefix)``, on the typed section."""
    hints = _types(cls)
    for f in _knobs(cls):
        key, tp = _key(prefix, f.name), hints[f.name]
        if _is_section(tp):
            check(cfg, key, tp)
            continue
        k, (base, nullable) = _knob(f), _base(tp)
        value = OmegaConf.select(cfg, key)
        if nullable and value is None:
            continue
        _check_value(cfg, key, value, base, nullable, k)
        if k.format_fields is not None:
            check_template(key, value, k.format_fields, k.placeholders)
        if k.check is not None:
            k.check(key, OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value)
    if hasattr(cls, "validate"):
        build(cls, OmegaConf.select(cfg, prefix) if prefix else cfg).validate(prefix)


def _check_value(cfg: DictConfig, key: str, value: Any, base: Any, nullable: bool, k: Knob) -> None:
    if base is str and k.nonempty and (value is None or (isinstance(value, str) and not value.strip())):
        raise ConfigError(f"{key} is empty: {k.when_empty or k.help}")
    if base is bool and nullable and not isinstance(value, bool):
        raise ConfigError(f"{key}={show_scalar(value)}: must be true, false or null")
    if base is bool:
        require_bool(cfg, key)
    elif base is int:
        require_int(cfg, key, int(k.minimum if k.minimum is not None else -(2**31)), nullable=nullable,
                    **({"maximum": int(k.maximum)} if k.maximum is not None else {}))
    elif base is float:
        require_number(cfg, key, k.minimum if k.minimum is not None else float("-inf"), strict=k.strict, high=k.below)
    elif base is str and not isinstance(value, str):
        raise ConfigError(f"{key}={show_scalar(value)}: must be a text (quote it: {key}='...')" + (" or null" if nullable else ""))
    elif k.choices is not None and typing.get_origin(base) is tuple:
        _check_entries(key, list(value), k)
    elif k.choices is not None:
        require_choice(cfg, key, k.choices)
    elif typing.get_origin(base) is tuple:
        entries = list(value)
        if k.nonempty and not entries:
            raise ConfigError(f"{key} is empty: {k.help}")
        bad = [e for e in entries if not isinstance(e, str) or not e.strip()]
        if bad:
            raise ConfigError(f"{key}={entries}: {show_scalar(bad[0])!r} is not a name; list names, e.g. {key}=[...]")
        if len(set(entries)) != len(entries):
            raise ConfigError(f"{key}={entries}: {_twice(entries)!r} is listed twice; list each once")


def _check_entries(key: str, entries: list[Any], k: Knob) -> None:
    assert k.choices is not None
    bad = [e for e in entries if e not in k.choices]
    if bad and k.nonempty:
        raise ConfigError(f"{key}={entries}: list {' and/or '.join(k.choices)} ({k.help}), each once")
    if bad:
        raise ConfigError(f"{key} has '{bad[0]}'; valid entries: {', '.join(k.choices)}")
    if k.nonempty and (not entries or len(set(entries)) != len(entries)):
        raise ConfigError(f"{key}={entries}: list {' and/or '.join(k.choices)} ({k.help}), each once")
    if len(set(entries)) != len(entries):
        raise ConfigError(f"{key}={entries}: {_twice(entries)} is listed twice (its work would be done twice); list each once")


def _twice(entries: list[Any]) -> Any:
    return next(e for i, e in enumerate(entries) if e in entries[:i])


def check_template(key: str, text: str, names: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
    """A prompt template that ``str.format(**{name: ...})`` can fill with ``names``: every placeholder one of
    them by name (no ``{0}``, ``{}``, ``{foo}``), every brace paired or doubled (``{{``), the ``required`` ones there."""
    allowed = ", ".join("{" + n + "}" for n in names)
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as err:
        raise ConfigError(f"{key}: {err} (a literal brace is written {{{{ or }}}}; placeholders: {allowed})") from None
    for _, field_name, spec, _ in parsed:
        if field_name is None:
            continue
        if field_name not in names or (spec and "{" in spec):
            shown = "{" + field_name + (":" + spec if spec else "") + "}"
            raise ConfigError(f"{key} has the placeholder {shown}; the only ones it may hold: {allowed} (a literal brace is written {{{{ or }}}})")
    try:
        text.format(**{n: "" for n in names})
    except (ValueError, IndexError, KeyError, AttributeError) as err:
        raise ConfigError(f"{key}: cannot be filled in ({type(err).__name__}: {err}); placeholders: {allowed}") from None
    for name in required:
        if name not in {p[1] for p in parsed}:
            raise ConfigError(f"{key} must contain the placeholder {{{name}}}")


def build(cls: type[T], node: Mapping[str, Any] | DictConfig) -> T:
    """The typed section from a config node (a job's resolved config, a run's saved one): lists become tuples,
    nested sections their dataclasses; a key the node lacks (added since the run was made) takes the default
    such runs had (``earlier_default``, else today's)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    hints = _types(cls)
    values: dict[str, Any] = {}
    for f in _knobs(cls):
        if f.name not in node:
            if _knob(f).earlier_default is not UNCHANGED:
                values[f.name] = _knob(f).earlier_default
            continue
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


def describe(cls: type, prefix: str, results: bool = True) -> Iterable[tuple[str, str, str]]:
    """(key, default, help) for every setting of the section, nested ones included (``--help <section>``);
    ``results=False``: the section is run-only, and so each of its keys."""
    hints = _types(cls)
    for f in _knobs(cls):
        key, k = _key(prefix, f.name), _knob(f)
        if _is_section(hints[f.name]):
            yield from describe(hints[f.name], key, results and k.results)
            continue
        default = f.default_factory() if f.default is MISSING else f.default
        shown = "[" + ",".join(map(show_scalar, default)) + "]" if isinstance(default, (list, tuple)) else show_scalar(default)
        limits = [f"one of {', '.join(k.choices)}" if k.choices else "",
                  f"{'>' if k.strict else '>='} {k.minimum:g}" if k.minimum is not None else "",
                  f"<= {k.maximum}" if k.maximum is not None else "",
                  f"< {k.below:g}" if k.below is not None else "",
                  f"{k.passes_to}'s own setting" if k.passes_to else "",
                  "run-only: changes no result" if not (results and k.results) else "",
                  f"run-only with {_key(prefix, k.run_only_when)}=true, else it changes results" if k.run_only_when else ""]
        note = "; ".join(x for x in limits if x)
        yield key, shown, k.help + (f" ({note})" if note else "")
