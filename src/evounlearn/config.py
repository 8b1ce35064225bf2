"""The one configuration path: OmegaConf structured configs.

Every command's options are a dataclass. `load_config` builds one from (in order) the dataclass
defaults, zero or more YAML files (method defaults, a benchmark's defaults, the user's `--config`),
then `key=value` strings from the command line. Each layer is merged by OmegaConf against the
dataclass schema, so types are checked the same way everywhere; nested dataclasses take dotted
keys (`train.lr=1e-4`), dict fields accept new keys (`loss.beta=0.2`), and an unknown key is a
`ConfigError` naming the key and the known ones at that level (checked here first, because
OmegaConf's own message names neither the full key nor the alternatives).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError
from .files import atomic_write_text

T = TypeVar("T")

__all__ = [
    "apply_overrides",
    "load_config",
    "load_yaml",
    "nest",
    "parse_overrides",
    "parse_value",
    "save_config",
    "to_dict",
]


def parse_value(text: str) -> Any:
    """Parse a command-line value with YAML rules: 1e-4 -> float, true -> bool, [1,2] -> list."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads "1e-4" as a string; numbers in scientific notation are common here.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ["a.b=1", "c=x"] into {"a.b": 1, "c": "x"}; a malformed item is a ConfigError."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        out[key] = parse_value(text)
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a.b": 1, "c": {"d": 2}} -> {"a": {"b": 1}, "c": {"d": 2}} (later keys merge into earlier ones)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *heads, last = str(key).split(".")
        for h in heads:
            nxt = node.get(h)
            if not isinstance(nxt, dict):
                nxt = node[h] = {}
            node = nxt
        if isinstance(value, Mapping) and isinstance(node.get(last), dict):
            node[last] = {**node[last], **nest(value)}
        elif isinstance(value, Mapping):
            node[last] = nest(value)
        else:
            node[last] = value
    return out


def _check_keys(schema: Any, data: Mapping[str, Any], prefix: str = "") -> None:
    """Reject keys the dataclass does not have, naming the full key and the known ones."""
    names = {f.name for f in dataclasses.fields(schema)}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown option {full!r} (known here: {', '.join(sorted(names))})")
        current = getattr(schema, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"option {full!r} is a section; set its fields as {full}.NAME=VALUE")
            _check_keys(current, value, full + ".")
        elif isinstance(value, Mapping) and not isinstance(current, dict) and current is not None:
            raise ConfigError(f"option {full!r} is not a section")


def _coerce_ints(schema: Any, data: Mapping[str, Any]) -> dict[str, Any]:
    """YAML and the command line write `2.0` or `1e3` for integers; OmegaConf refuses floats for int fields."""
    import typing

    hints = typing.get_type_hints(type(schema))
    out = dict(data)
    for key, value in data.items():
        current = getattr(schema, key, None)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            out[key] = _coerce_ints(current, value)
        elif hints.get(key) is int and isinstance(value, float) and value.is_integer():
            out[key] = int(value)
    return out


def _one_line(exc: Exception) -> str:
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, OmegaConfBaseException):
        key = getattr(exc, "full_key", "") or ""
        msg = str(exc).splitlines()[0]
        kinds = {"Integer": "a number (an integer)", "Float": "a number", "Boolean": "true/false"}
        for word, kind in kinds.items():
            if f"converted to {word}" in msg or (word == "Boolean" and "not a valid bool" in msg):
                return f"option {key} expects {kind}, got {getattr(exc, 'value', None)!r}"
        return f"option {key}: {msg}" if key else msg
    return " ".join(str(exc).split())


def apply_overrides(cfg: T, overrides: Mapping[str, Any]) -> T:
    """Merge dotted-key (or nested) overrides into a dataclass instance in place and return it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    data = _coerce_ints(cfg, nest(overrides))
    _check_keys(cfg, data)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cfg), data)
        new = OmegaConf.to_object(merged)
    except (OmegaConfBaseException, ValueError, TypeError) as exc:
        raise ConfigError(_one_line(exc)) from None
    _copy_into(cfg, new)
    return cfg


def _copy_into(dst: Any, src: Any) -> None:
    """In place, recursively: callers (and nested sections they took out) hold the instances."""
    for f in dataclasses.fields(dst):
        old, value = getattr(dst, f.name), getattr(src, f.name)
        if dataclasses.is_dataclass(old) and type(old) is type(value):
            _copy_into(old, value)
        else:
            setattr(dst, f.name, value)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping (empty file = {}); a one-line ConfigError otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return dict(data)


def load_config(
    cls: type[T],
    path: str | Path | Iterable[str | Path | Mapping[str, Any]] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> T:
    """Build `cls` from its defaults, then each layer in order (a YAML file, or a mapping already
    read, e.g. the part of another command's YAML this one shares), then key=value overrides."""
    cfg = cls()
    paths = [path] if isinstance(path, (str, Path)) else list(path or [])
    for p in paths:
        apply_overrides(cfg, p if isinstance(p, Mapping) else load_yaml(p))
    apply_overrides(cfg, overrides if isinstance(overrides, Mapping) else parse_overrides(overrides))
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON/YAML-ready dict of a dataclass config (Paths become strings)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """`cfg` as YAML, written atomically (a reader never sees half a config)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
