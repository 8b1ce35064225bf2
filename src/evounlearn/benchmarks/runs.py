"""The command line's run machinery, generic over the Benchmark protocol.

`evounlearn prepare|eval|unlearn --benchmark NAME` call the benchmark's `cli_prepare`,
`cli_eval` and `cli_unlearn`; the defaults below work for any benchmark through `prepare`,
`reference` and `run`. A benchmark with richer machinery overrides them (the TOFU benchmarks:
`PrepareConfig` files, the full TOFU suite with attacks, resumable runs).

A generic unlearning run keeps in RUN_DIR:

    config.yaml    {benchmark, method, loss, train, options}: what reproduces the run
    train.json     loss history, timings
    results.json   the full evaluation + summary
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..files import atomic_write_text


@dataclass
class Report:
    """What a CLI command prints: a table of summaries, its columns, and a few lines above it."""

    summaries: dict[str, dict[str, Any]]
    keys: tuple[str, ...]
    lines: list[str] = field(default_factory=list)
    run_dir: str = ""


@dataclass
class EvalRequest:
    """`evounlearn eval`'s options (only benchmarks that evaluate arbitrary models use them all)."""

    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    model: str | None = None
    adapter: str | None = None
    retain_results: str | None = None
    reference_model: str | None = None
    out: str | None = None
    attacks: str | None = None
    attack_samples: int = 16
    attack_temperature: float = 1.0


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys, so that they merge into a config key by key."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def nested(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def load_options(config: str | None, overrides: Iterable[str]) -> dict[str, Any]:
    """A benchmark's options: the YAML file <- key=value overrides (nested dicts)."""
    from ..config import parse_overrides

    data: dict[str, Any] = {}
    if config:
        p = Path(config)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return _merge(data, nested(parse_overrides(list(overrides))))


def _with_fitness(bench: Any, summaries: dict[str, dict[str, Any]], target: Mapping[str, Any]) -> dict[str, Any]:
    from .base import compute_fitness

    return {k: {**v, "fitness": compute_fitness(bench, v, target)} for k, v in summaries.items()}


def prepare_report(bench: Any, options: Mapping[str, Any]) -> Report:
    """Prepare (cached) and report the target's and the oracle's metrics on the whole forget set."""
    prepared = bench.prepare(options)
    ref = bench.reference(prepared, "all")
    summaries = {"target": ref.target} | ({"retain": ref.retain} if ref.retain else {})
    lines = [f"{k}: {v}" for k, v in bench.paths(prepared).items() if v]
    return Report(_with_fitness(bench, summaries, ref.target), (*bench.metric_keys, "fitness"), lines)


def unlearn_report(bench: Any, method: str | None, options: dict[str, Any], run_dir: str | None = None) -> Report:
    """Unlearn with one method on the options' `forget_part` (default all) and evaluate; the run
    directory gets config.yaml (what reproduces the run), train.json and results.json."""
    from ..methods.resolve import MethodRun

    name = method or options.pop("method", None)
    if not name:
        raise ConfigError("--method is required")
    loss, train = dict(options.pop("loss", None) or {}), dict(options.pop("train", None) or {})
    part = str(options.pop("forget_part", "all"))
    seed = train.pop("seed", None)
    rd = Path(run_dir or options.pop("run_dir", "") or Path("runs") / f"{name}-{bench.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    options.pop("run_dir", None)
    rd.mkdir(parents=True, exist_ok=True)
    run = MethodRun(str(name), loss, train)
    atomic_write_text(rd / "config.yaml", yaml.safe_dump({"benchmark": bench.name, "forget_part": part, "seed": seed,
                                                          **asdict(run), "options": options}, sort_keys=False))
    prepared = bench.prepare(options)
    ref = bench.reference(prepared, part)
    res = bench.run(prepared, run, part=part, seed=seed, run_dir=rd)
    summaries = {"target": ref.target} | ({"retain": ref.retain} if ref.retain else {})
    summaries[run.method] = {**res.summary, "seconds": res.train.get("seconds")}
    return Report(_with_fitness(bench, summaries, ref.target), (*bench.metric_keys, "fitness", "seconds"), [],
                  str(rd))


def resume_options(run_dir: str) -> tuple[str, dict[str, Any]]:
    """(method, options) of a generic run directory, to run it again."""
    p = Path(run_dir) / "config.yaml"
    if not p.exists():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    data = yaml.safe_load(p.read_text()) or {}
    options = dict(data.get("options") or {})
    options.update(loss=data.get("loss") or {}, train={**(data.get("train") or {}),
                                                       **({"seed": data["seed"]} if data.get("seed") is not None
                                                          else {})},
                   forget_part=data.get("forget_part", "all"))
    return str(data.get("method")), options
