"""Hydra's and OmegaConf's errors, said for a recipe: a wrong type names the type expected, a
misspelled key gets "did you mean", a missing group option lists the options. And the one
check Hydra does not make: a `+key=value` override (Hydra's own advice for a key the schema
lacks) adds a key to a typed section, which OmegaConf then drops silently; here every key of
a typed section must be a field of its dataclass."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator
from typing import Any

from hydra.errors import MissingConfigException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError
from omegaconf.nodes import BooleanNode, EnumNode, FloatNode, IntegerNode, StringNode

from exaone_train.errors import ConfigError

_KINDS = {IntegerNode: "an integer", FloatNode: "a number", BooleanNode: "true or false",
          StringNode: "a string", EnumNode: "one of the enum's names"}


def _did_you_mean(word: str, choices: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(prefix + c for c in close)}?)" if close else ""


def _expected(node: Any) -> str:
    kind = next((k for t, k in _KINDS.items() if isinstance(node, t)), None)
    if kind is None:
        return ""
    return f"expected {kind}{' or null' if node._is_optional() else ''}: "


def _find(e: BaseException, kind: type | tuple[type, ...]) -> Any:
    """`e`, or the first exception of `kind` in its cause/context chain."""
    while e is not None and not isinstance(e, kind):
        e = e.__cause__ or e.__context__
    return e


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _override_value(full_key: str, overrides: list[str] | None) -> str | None:
    for o in overrides or []:
        key, _, value = o.partition("=")
        if key.lstrip("+~") == full_key:
            return value
    return None


def explain(e: BaseException, what: str, overrides: list[str] | None = None) -> ConfigError | None:
    """A ConfigError naming the field for the errors a user makes on the command line (wrong
    type, unknown key, unknown group option); None for others."""
    if isinstance(e, MissingConfigException) and e.missing_cfg_file:
        group, _, name = str(e.missing_cfg_file).rpartition("/")
        options = [o for o in (e.options or []) if not o.endswith("_schema")]
        if not options:
            return None
        return ConfigError(group or what, name, f"no such {group} recipe{_did_you_mean(name, options)}; "
                           f"the options are {', '.join(options)}")
    bad_type = _find(e, ValidationError)
    if bad_type is not None and getattr(bad_type, "full_key", None):
        return ConfigError(bad_type.full_key, getattr(bad_type, "value", None),
                           _expected(getattr(bad_type, "child_node", None))
                           + _first_line(bad_type))
    missing = _find(e, (ConfigKeyError, ConfigAttributeError))
    if missing is not None and getattr(missing, "full_key", None):
        parent = getattr(missing, "parent_node", None)
        keys = [str(k) for k in parent.keys()] if isinstance(parent, DictConfig) else []
        return unknown_key_error(missing.full_key, keys,
                                 _override_value(missing.full_key, overrides))
    return None


def unknown_key_error(full_key: str, keys: list[str], value: object) -> ConfigError:
    section, _, key = full_key.rpartition(".")
    keys = [k for k in keys if k != "hydra"]
    hint = _did_you_mean(key, keys, f"{section}." if section else "")
    listed = hint or f"; its keys are {', '.join(sorted(keys))}"
    return ConfigError(full_key, value, f"is not a key of {f'section {section}' if section else 'the recipe'}"
                       f"{listed} (the schema's keys only, with or without '+')")


def unknown_keys(node: Any, path: str = "") -> Iterator[tuple[str, list[str], Any]]:
    """(full key, the section's known keys, value) for every key of a typed (dataclass) section that
    its dataclass does not have; sections typed as dicts may hold any key."""
    if isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from unknown_keys(node._get_node(i), f"{path}[{i}]")
        return
    if not isinstance(node, DictConfig) or node._is_none() or node._is_missing():
        return
    t = OmegaConf.get_type(node)
    known = [f.name for f in dataclasses.fields(t)] if dataclasses.is_dataclass(t) else None
    for key in node.keys():
        full = f"{path}.{key}" if path else str(key)
        if known is not None and key not in known:
            yield full, known, node._get_node(key)._value()
        else:
            yield from unknown_keys(node._get_node(key), full)


def check_known_keys(cfg: DictConfig) -> None:
    """ConfigError for the first key no schema dataclass has (see the module docstring)."""
    for full_key, keys, value in unknown_keys(cfg):
        raise unknown_key_error(full_key, keys, value)


def compose_error(e: BaseException, what: str, overrides: list[str] | None) -> ConfigError:
    """The ConfigError a failed compose raises: `explain`'s, else Hydra's message as it is."""
    return explain(e, what, overrides) or ConfigError(what, overrides, f"could not be composed: {e}")
