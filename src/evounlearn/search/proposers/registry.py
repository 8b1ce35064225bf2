"""Proposer kinds by name, and building one from its options.

The table maps a kind to "module:Class" and is resolved on first use, so neither this module nor
`base` imports a proposer: the LLM proposers pull in prompts and parsing, and building the offline
one must not load them. Options are the proposer's config dataclass (`Proposer.config_class`),
filled by `evounlearn.config.apply_overrides`, the one configuration mechanism.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

from ...config import apply_overrides
from ...errors import ConfigError
from .base import Proposer

PROPOSERS: dict[str, str] = {
    "offline": "evounlearn.search.proposers.offline.proposer:OfflineProposer",
    "http": "evounlearn.search.proposers.llm.http:HTTPProposer",
    "hf": "evounlearn.search.proposers.llm.hf:HFLocalProposer",
}


def proposer_class(kind: str) -> type[Proposer]:
    """The Proposer subclass registered under `kind` (imported now)."""
    target = PROPOSERS.get(kind)
    if target is None:
        raise ConfigError(f"unknown proposer kind {kind!r} (known: {', '.join(PROPOSERS)})")
    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Proposer)):
        raise ConfigError(f"proposer kind {kind!r} points at {target}, which is not a Proposer")
    return cls


def make_proposer(kind: str = "offline", options: Mapping[str, Any] | None = None) -> Proposer:
    """Build the `kind` proposer; `options` are fields of its config (unknown keys: ConfigError)."""
    cls = proposer_class(kind)
    try:
        config = apply_overrides(cls.config_class(), dict(options or {}))
    except ConfigError as exc:
        raise ConfigError(f"{kind!r} proposer: {exc}") from None
    return cls(config)


def proposer_from_section(section: Mapping[str, Any] | Any) -> Proposer:
    """Build a proposer from the search config's `proposer` section (a mapping or a dataclass).

    `kind` picks the proposer (default "offline"); its options sit in the section itself or in a
    mapping under the kind's name (`{"kind": "http", "http": {...}}`). Options of the other kinds
    are ignored, so one section can hold all of them; any other key is a ConfigError.
    `seed_files` (any kind): programs whose loss functions open every initial population
    (`seeded.SeededProposer`).
    """
    data = _as_dict(section)
    seed_files = data.pop("seed_files", None) or []  # any kind: see `seeded.py`
    kind = str(data.pop("kind", "offline") or "offline").lower()
    cls = proposer_class(kind)
    nested = data.pop(kind, None)
    for other in PROPOSERS:
        data.pop(other, None)
    if nested is not None:
        data.update(_as_dict(nested))
    own = _option_names(cls)
    elsewhere: set[str] = set()
    for other in PROPOSERS:
        if other != kind:
            elsewhere |= _option_names(proposer_class(other))
    # Keep unknown keys: make_proposer rejects them with the list of known ones.
    options = {k: v for k, v in data.items() if k in own or k not in elsewhere}
    proposer = make_proposer(kind, options)
    if seed_files:
        from .seeded import SeededProposer, read_seed_files

        if isinstance(seed_files, str):
            seed_files = [seed_files]
        return SeededProposer(proposer, read_seed_files(list(seed_files)))
    return proposer


def _option_names(cls: type[Proposer]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls.config_class)}


def _as_dict(section: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(section) and not isinstance(section, type):
        return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
    if isinstance(section, Mapping):
        return dict(section)
    raise ConfigError(f"a proposer config must be a mapping or a dataclass, got {type(section).__name__}")
