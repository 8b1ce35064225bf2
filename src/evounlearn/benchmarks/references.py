"""The target's and the oracle's evaluations on one part, cached on disk (`cached_reference`).

Every search and every `tune` run starts by evaluating the target model and the retain oracle on
the search and the report part (`Benchmark.reference`): four full evaluations, ~9 s of a 70 s
search on the tiny default, paid again by every run although nothing changed. The evaluation is
deterministic (greedy decoding, no sampling), so its result is a function of the models, the
data and the options; it is kept under `<cache dir>/references/<key>.json`, where the key hashes
the benchmark, its data, the part, the options (all of them but the seed: a different learning
rate recomputes, harmlessly) and, for each model folder and a local data folder, every file's
name, size and mtime, so a re-prepared or edited model or data set is evaluated afresh. A model
that is not a local path (a Hub id) is never cached, nor a benchmark that names no model path.
A cache that cannot be read or written is ignored (the value is computed): the cache only saves
time, it never decides a result. Fresh and cached values are the same JSON round trip, so a run reads identical numbers
either way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..files import ArtifactError, atomic_write_json, content_hash, path_stamp, read_json
from ..versions import library_versions
from .base import Benchmark, Reference, default_cache_dir

__all__ = ["cached_reference", "reference_cache_path"]

log = logging.getLogger(__name__)

_VERSION = 4  # bump when what `reference` computes changes without a change of its inputs
_VOLATILE = frozenset({"seed", "run_dir", "log_file"})  # options that cannot change the evaluation


_stamp = path_stamp  # [(name, size, mtime_ns), ...] of a local model/data path; None when not local


def reference_cache_path(bench: Benchmark, prepared: Any, part: str, options: Mapping[str, Any]) -> Path | None:
    """Where the reference of `part` is cached; None when it cannot be (a model that is not local)."""
    paths = bench.paths(prepared)
    stamps = {k: _stamp(v) for k, v in sorted(paths.items())}
    if not any(stamps.values()) or any(s is None for s in stamps.values()):
        return None  # no local model to stamp, or one that is not local
    data = bench.data_name(prepared)  # a local data folder is stamped too (a Hub name is taken as is)
    key = content_hash({"version": _VERSION, "libraries": library_versions(), "benchmark": bench.name, "data": data, "data_stamp": _stamp(data),
                        "part": part, "paths": paths, "stamps": stamps,
                        "options": {k: v for k, v in options.items() if k not in _VOLATILE}}, n=24)
    prep = options.get("prepare") if isinstance(options.get("prepare"), Mapping) else {}
    root = Path(str((prep or {}).get("cache_dir") or options.get("cache_dir") or default_cache_dir()))
    return root / "references" / f"{bench.name}-{part}-{key}.json"


def cached_reference(bench: Benchmark, prepared: Any, part: str, options: Mapping[str, Any]) -> Reference:
    """`bench.reference(prepared, part)`, from the cache when the same models, data and options
    were evaluated before (see the module docstring)."""
    path = reference_cache_path(bench, prepared, part, options)
    if path is not None and path.is_file():
        try:
            data = read_json(path, "reference cache")
            return Reference(dict(data["target"]), None if data.get("retain") is None else dict(data["retain"]))
        except (ArtifactError, KeyError, TypeError, ValueError) as e:
            log.info("reference cache %s unreadable (%s): evaluating again", path, e)
    ref = bench.reference(prepared, part)
    # the JSON round trip, so that a fresh value equals what a later run reads from the cache
    data = json.loads(json.dumps({"target": ref.target, "retain": ref.retain}, default=str))
    if path is not None:
        try:
            atomic_write_json(path, data)
        except OSError as e:  # read-only cache, confined worker, full disk: only time is lost
            log.info("reference cache %s not written (%s)", path, e)
    return Reference(data["target"], data["retain"])
