"""Loading and validating the suite's configuration: the one place that knows the keys.

Configs are YAML under ``configs/`` composed by Hydra's compose API, with ``key=value`` overrides from the
command line. The keys' defaults are not YAML: each key is a typed ``knob()`` field of the run's config tree
(``pipeline.run_config``, the stages' and the backends' settings), whose defaults the caller hands in as
``nodes`` (the stage table, ``pipeline.stages``, does), so this module knows no key, stage or backend. It
composes, checks every value's type against its default's, and refuses secrets; each section then checks
its own values. Every mistake a user can make on the command line becomes a :class:`ConfigError` whose
message is one line naming the bad value and the valid choices; the entry points print it and exit 2
before anything is submitted.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"

GROUPS = ("stage", "cluster", "models")


class ConfigError(ValueError):
    """A bad value from the command line or a config file; the message is one line for the user."""


def project_path(path: str | Path) -> Path:
    """Resolves a config path: ``~`` is expanded and a relative path is taken from the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


# Defaults by the config's name (``debate``; ``cluster/slurm``: an option of a group): plain data, composed where
# ``configs/config.yaml``'s defaults list (or a group choice) names it.
Sections = Mapping[str, Mapping[str, Any]]


def _compose(overrides: list[str], sections: Sections) -> DictConfig:
    store = ConfigStore.instance()
    for path, values in sections.items():
        group, _, name = path.rpartition("/")
        store.store(group=group or None, name=name, node=dict(values))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="config", overrides=overrides)


def load_defaults(sections: Sections) -> DictConfig:
    """The config with no override (what ``--help`` lists), unresolved: interpolations read as written."""
    return _compose([], sections)


def printable(text: str) -> str:
    """Text for a one-line message: control characters (a pasted newline) shown as escapes."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _translate_hydra_error(err: Exception, overrides: list[str], sections: Sections, free: frozenset[str]) -> ConfigError:
    """Turns Hydra's multi-line messages into one line that names the bad value and the choices."""
    text = str(err)
    missing = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if isinstance(err, MissingConfigException) and missing:
        group, name = missing.groups()
        options = re.findall(r"^\t(\S+)$", text.split("Config search path")[0], flags=re.M)
        return ConfigError(f"unknown {group} '{name}'; valid choices: {', '.join(options)}")
    unknown = re.search(r"Could not override '([^']+)'", text)
    if unknown:
        key = unknown.group(1)
        if any(key.startswith(mapping + ".") for mapping in free):
            return ConfigError(f"{key} is a new key: add it with a leading '+', as +{key}=...")
        return ConfigError(f"unknown key '{key}'; valid keys here: {', '.join(_sibling_keys(key, sections))}")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        return ConfigError(f"'{printable(bad[0])}' is not a key=value override")
    for override in overrides:
        try:
            OverridesParser.create().parse_overrides([override])
        except HydraException as parse_err:
            return ConfigError(
                f"cannot parse the override '{printable(override)}' ({_first_line(str(parse_err))}); quote a value with special characters: key='...'"
            )
    return ConfigError(f"cannot parse the overrides {printable(' '.join(overrides))}: {_first_line(text)}")


def _sibling_keys(dotted: str, sections: Sections) -> list[str]:
    node: Any = _compose([], sections)
    for part in dotted.split(".")[:-1]:
        node = node.get(part) if isinstance(node, DictConfig) else None
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def _check_same_shape(value: Any, default: Any, where: str, loose: frozenset[str], free: frozenset[str]) -> None:
    """Rejects keys the defaults do not have and values whose type differs from the default's (``loose``
    keys take a value of more than one type: their section checks them; ``free`` keys hold a mapping of
    any keys)."""
    if isinstance(default, DictConfig):
        if not isinstance(value, DictConfig):
            raise ConfigError(f"{where}={_show(value)}: must be a mapping of keys {', '.join(sorted(default))}")
        extra = sorted(set(value) - set(default))
        if extra and where not in free:
            raise ConfigError(f"unknown key '{where + '.' if where else ''}{extra[0]}'; valid keys here: {', '.join(sorted(default))}")
        for key in default:
            _check_same_shape(value[key], default[key], f"{where}.{key}" if where else str(key), loose, free)
        return
    if default is None or where in free or where in loose:
        return
    expected = _type_name(default)
    ok = {
        "mapping": lambda v: isinstance(v, DictConfig),
        "list": lambda v: isinstance(v, ListConfig),
        "boolean": lambda v: isinstance(v, bool),
        "whole number": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "string": lambda v: isinstance(v, str),
    }[expected]
    if value is not None and not ok(value):
        raise ConfigError(f"{where}={_show(value)}: must be a {expected}")


def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "boolean"
    if isinstance(default, int):
        return "whole number"
    if isinstance(default, float):
        return "number"
    if isinstance(default, ListConfig):
        return "list"
    if isinstance(default, DictConfig):
        return "mapping"
    return "string"


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        return str(OmegaConf.to_container(value))
    return str(value)


# The largest whole number a setting may take unless it says otherwise: counts beyond it cannot be
# allocated or looped over, and C/CUDA code downstream takes 32-bit integers.
INT_MAX = 2**31 - 1
# Seeds reach numpy's legacy seeding (transformers' set_seed), which takes 0..2**32 - 1.
SEED_MAX = 2**32 - 1


def show_scalar(value: Any) -> str:
    """A value as the user would type it: null, true/false, the number or the text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return _show(value)


def require_int(cfg: DictConfig, key: str, minimum: int, *, nullable: bool = False, maximum: int = INT_MAX) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and nullable:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key}={show_scalar(value)}: must be a whole number >= {minimum}" + (" or null" if nullable else ""))
    if value > maximum:
        raise ConfigError(f"{key}={value}: must be a whole number from {minimum} to {maximum}")


def require_number(cfg: DictConfig, key: str, low: float, *, strict: bool = False, high: float | None = None) -> float:
    """A finite number above ``low`` (or at it, unless ``strict``) and below ``high``: NaN and infinity pass
    every comparison test a range check makes, so they are refused by name."""
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{key}={show_scalar(value)}: must be a finite number" + (f" > {low:g}" if strict else f" >= {low:g}"))
    if value < low or (strict and value == low):
        raise ConfigError(f"{key}={value}: must be a number {'>' if strict else '>='} {low:g}")
    if high is not None and value >= high:
        raise ConfigError(f"{key}={value}: must be a number below {high:g}")
    return float(value)


def require_bool(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value}: must be true or false")


def require_choice(cfg: DictConfig, key: str, choices: Iterable[str]) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in tuple(choices):
        raise ConfigError(f"{key}={value}: not one of {', '.join(choices)}")


def _check_override_forms(overrides: list[str]) -> None:
    """What Hydra would accept but the suite does not mean: deleting a key (``~key``) leaves the code without
    a setting it reads."""
    for override in overrides:
        if override.startswith("~"):
            raise ConfigError(f"'{override}': deleting a key is not supported; set it to null (key=null) or leave it out")


def check_given_once(overrides: list[str]) -> None:
    """A key typed twice on one command line: Hydra would silently keep the last value, which is rarely
    what the person meant (the command line only; programs layer overrides on purpose)."""
    seen: dict[str, str] = {}
    for override in overrides:
        key = override.lstrip("+").split("=", 1)[0]
        if "=" in override and key in seen:
            raise ConfigError(f"{key} is given twice ({seen[key]} and {override}); give it once")
        seen[key] = override


def load_config(overrides: list[str], sections: Sections, loose: frozenset[str] = frozenset(),
                free: frozenset[str] = frozenset()) -> DictConfig:
    """Composes ``configs/`` and the sections' defaults with the overrides, checks each value's type against
    its default's and refuses secrets; the sections check their own values (``loose``: keys that take a
    value of more than one type, e.g. a number or ``auto``; ``free``: mappings of any keys)."""
    _check_override_forms(overrides)
    try:
        cfg = _compose(list(overrides), sections)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise _translate_hydra_error(err, list(overrides), sections, free) from None
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve the config: {_first_line(str(err))}") from None
    group_choices = [o for o in overrides if o.split("=", 1)[0] in GROUPS]
    _check_same_shape(cfg, _compose(group_choices, sections), "", loose, free)
    _refuse_secret_values(OmegaConf.to_container(cfg, resolve=True))
    return cfg


def to_yaml(values: Mapping[str, Any]) -> str:
    """A config as plain data (``RunConfig.plain``) as YAML, in its order, with any key that looks like a
    secret removed."""
    return OmegaConf.to_yaml(OmegaConf.create(_drop_secrets(dict(values))))


_SECRET_KEY = re.compile(r"(^|_)(token|secret|password|api_key|apikey|key)$", re.I)
_SECRET_ENV = re.compile(r"(token|secret|passw|api_?key|_key$|credential)", re.I)
# Shorter values ("1", "true") would match ordinary settings by coincidence.
_SECRET_MIN_LENGTH = 6


def _drop_secrets(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_secrets(v) for k, v in node.items() if not _SECRET_KEY.search(str(k))}
    if isinstance(node, list):
        return [_drop_secrets(v) for v in node]
    return node


def _refuse_secret_values(node: Any, where: str = "") -> None:
    """A setting that holds the value of a secret environment variable (``${oc.env:HF_TOKEN}`` put into a
    prompt) would be written into the run folder (its config, the jobs' files): refused, naming the key and
    the variable, never the value."""
    if isinstance(node, dict):
        for key, value in node.items():
            _refuse_secret_values(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_secret_values(value, f"{where}[{i}]")
    elif isinstance(node, str) and not _SECRET_KEY.search(where.rsplit(".", 1)[-1]):
        for name, value in os.environ.items():
            if _SECRET_ENV.search(name) and len(value) >= _SECRET_MIN_LENGTH and value in node:
                raise ConfigError(f"{where} holds the value of the secret ${name}; secrets stay in the environment "
                                  "and out of settings (they would be written into the run folder)")
