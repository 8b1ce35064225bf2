"""The one method resolver: a method name -> its `MethodSpec`, loss params and training options.

Layers, lowest first:
1. the method's own defaults, `methods/configs/<name>.yaml` (`loss:` and `train:`);
2. the benchmark's YAML (`benchmarks/<name>.yaml`, optional): `train:` for every method, then
   `methods.<name>.loss` / `methods.<name>.train` for this method (e.g. MUSE's tuned NPO lr);
3. the user's overrides (`MethodRun.loss` / `MethodRun.train`, or key=value on the command line).

Unknown loss params are rejected with the list of known ones, and the method's `configure` hook
runs last (the `evolved` method reads its loss program and its `epochs:` docstring there).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..errors import ConfigError
from ..methods.base import MethodInfo, MethodSpec, get_method
from .config import TrainConfig

#: loss params every method accepts besides its YAML's (the loss-program keys of `evolved`)
PROGRAM_KEYS = frozenset({"loss_file", "interface"})


@dataclass
class MethodRun:
    """What to unlearn with: a registered method name, loss params (over the method's defaults)
    and training-loop overrides (over the defaults' `train:` section)."""

    method: str
    loss: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


def method_run(method: str | MethodRun | Mapping[str, Any], loss: Mapping[str, Any] | None = None,
               train: Mapping[str, Any] | None = None) -> MethodRun:
    """Normalise `"npo"`, `MethodRun(...)` or `{"method": ..., "loss": {...}, "train": {...}}`, then
    apply the extra `loss` / `train` overrides."""
    if isinstance(method, MethodRun):
        run = MethodRun(method.method, dict(method.loss), dict(method.train))
    elif isinstance(method, Mapping):
        if "method" not in method:
            raise ConfigError("a method run needs a 'method' name")
        run = MethodRun(str(method["method"]), dict(method.get("loss") or {}), dict(method.get("train") or {}))
    else:
        run = MethodRun(str(method))
    run.loss.update(loss or {})
    run.train.update(train or {})
    return run


def candidate_run(candidate: str | MethodRun | Mapping[str, Any]) -> MethodRun:
    """A candidate as a `MethodRun`: a method name (``"npo"``), a mapping with ``method``, a loss
    program (``{"code": ..., "interface": ...}`` / ``{"loss_file": ...}``, run through `evolved`),
    program text, or a path to a ``.py`` file."""
    if isinstance(candidate, MethodRun):
        return method_run(candidate)
    if isinstance(candidate, str):
        if "def " in candidate:
            return MethodRun("evolved", {"code": candidate})
        if candidate.endswith(".py"):
            if not Path(candidate).is_file():
                raise ConfigError(f"loss file {candidate} does not exist")
            return MethodRun("evolved", {"loss_file": candidate})
        return MethodRun(candidate)
    if isinstance(candidate, Mapping):
        if "method" in candidate:
            return method_run(candidate)
        if "code" in candidate or "loss_file" in candidate:
            loss = {k: candidate[k] for k in ("code", "loss_file", "interface", "function") if candidate.get(k)}
            loss.update(candidate.get("loss") or {})
            return MethodRun("evolved", loss, dict(candidate.get("train") or {}))
    raise ConfigError(f"not a candidate: {candidate!r} (a method name, a loss program, or a mapping)")


def benchmark_layer(benchmark_yaml: Mapping[str, Any] | None, method: str) -> dict[str, dict[str, Any]]:
    """Layer 2 for one method: ``{"loss": {...}, "train": {...}}`` from a benchmark's YAML."""
    data = dict(benchmark_yaml or {})
    per = dict((data.get("methods") or {}).get(method) or {})
    return {"loss": dict(per.get("loss") or {}),
            "train": {**dict(data.get("train") or {}), **dict(per.get("train") or {})}}


def method_defaults(spec: MethodSpec | MethodInfo, benchmark_yaml: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Layers 1 and 2: ``{"loss": params, "train": loop options}`` before the user's overrides."""
    layer = benchmark_layer(benchmark_yaml, spec.name)
    return {"loss": {**dict(spec.defaults.get("loss") or {}), **layer["loss"]},
            "train": {**dict(spec.defaults.get("train") or {}), **layer["train"]}}


def layered(spec: MethodSpec | MethodInfo, run: MethodRun | None = None,
            benchmark_yaml: Mapping[str, Any] | None = None,
            base_train: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], TrainConfig]:
    """THE place a method's defaults are layered: (loss params, `TrainConfig`) of layers 1-3
    (module docstring), `base_train` between layers 2 and 3, loss params checked. Torch-free
    (`spec` may be a `MethodInfo`) and without the `configure` hook, so that the command line
    checks a run's options before importing any method; `resolve_method` adds the hook."""
    from ..config import apply_overrides

    run = run or MethodRun(spec.name)
    defaults = method_defaults(spec, benchmark_yaml)
    check_loss_params(spec, run.loss)
    train = TrainConfig()
    for layer in (defaults["train"], base_train or {}, run.train):
        apply_overrides(train, dict(layer))
    return {**defaults["loss"], **run.loss}, train


def check_loss_params(spec: MethodSpec | MethodInfo, params: Mapping[str, Any]) -> None:
    """Reject loss params the method does not know (ConfigError naming the known ones)."""
    known = set((spec.defaults.get("loss") or {}).keys()) | PROGRAM_KEYS
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) loss.{', loss.'.join(unknown)} for method {spec.name} "
                          f"(known: {', '.join(sorted(known)) or 'none'})")


def configure(spec: MethodSpec, cfg: Any, explicit: set[str]) -> None:
    """Run the method's `configure` hook on a config with `.loss` (dict) and `.train` (TrainConfig)."""
    if spec.configure is not None:
        spec.configure(cfg, explicit)


@dataclass
class ResolvedMethod:
    spec: MethodSpec
    loss: dict[str, Any]
    train: Any  # training.loop.TrainConfig


def resolve_method(run: MethodRun, benchmark_yaml: Mapping[str, Any] | None = None,
                   base_train: Mapping[str, Any] | None = None) -> ResolvedMethod:
    """The three layers (module docstring) for one run; `base_train` sits between layers 2 and 3
    (a benchmark's fixed loop options, e.g. its context length)."""
    spec = get_method(run.method)
    params, cfg = layered(spec, run, benchmark_yaml, base_train)
    configure(spec, SimpleNamespace(loss=params, train=cfg), {f"train.{k}" for k in run.train})
    return ResolvedMethod(spec, params, cfg)
