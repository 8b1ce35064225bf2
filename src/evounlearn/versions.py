"""The library versions a cached artefact depends on.

A model trained, or a reference evaluated, under one torch / transformers / tokenizers release is
not the same artefact under another: a patch release of transformers was measured to move the
generated benchmark's forget quality by orders of magnitude (GradDiff 2.2e-05 vs 0.77). Every
cache key of a prepared model or an evaluation therefore includes these versions, so an upgraded
install rebuilds instead of reusing another release's models. Read from the installed packages'
metadata: no heavy import.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LIBRARIES = ("torch", "transformers", "tokenizers")


def library_versions() -> dict[str, str]:
    """{package: installed version} for the libraries a trained model or an evaluation depends on
    ("absent" for one that is not installed)."""
    from importlib import metadata  # ~0.1 s: only when a cache key is computed, not at import

    out: dict[str, str] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def warn_if_versions_changed(infos: Iterable[Path], recipe: Mapping[str, Any], what: str) -> bool:
    """Before building a cache entry: if another entry holds the same recipe under other library
    versions (its info JSON's `recipe`), say once that it is rebuilt because of them. Returns
    whether such an entry was found. Unreadable info files are skipped (a cache is not evidence)."""
    import json

    mine = dict(recipe)
    versions = mine.pop("libraries", None)
    for path in infos:
        try:
            other = dict(json.loads(Path(path).read_text()).get("recipe") or {})
        except (OSError, ValueError, AttributeError):
            continue
        theirs = other.pop("libraries", None)
        if other == mine and theirs != versions:
            changed = ", ".join(f"{k} {(theirs or {}).get(k, '?')} -> {v}" for k, v in (versions or {}).items()
                                if (theirs or {}).get(k) != v)
            log.warning("%s: library versions differ from the cached entry's (%s): building a new one",
                        what, changed or "versions not recorded there")
            return True
    return False
