"""The search space of a tune (`SearchSpace`): a range per numeric loss param of the method's YAML
defaults (seeds and sizes excluded), the learning rate and the epochs; `space.<param>` overrides one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError
from ..points import MethodPoint
from .config import TuneConfig, check_method, method_yaml

#: numeric loss params that are not hyperparameters of the loss (seeds, sizes, layer choices)
FIXED_PARAMS = frozenset({"seed", "idk_seed", "gen_batch_size", "max_new_tokens", "layer"})
#: hard limits of a few params (a range around the default is clipped to them)
PARAM_LIMITS: dict[str, tuple[float, float]] = {"top_p": (0.05, 1.0), "temperature": (0.1, 3.0),
                                                 "n_samples": (1, 10),
                                                 # CE-U: more would mask whole short answers
                                                 "ignore_first_n_answer_tokens": (1, 3),
                                                 # PDU: within the epochs range (1..10), so the dual step runs
                                                 "dual_warmup_epochs": (1, 9)}
SPACE_KEYS = ("lr", "epochs")  # besides the loss params



@dataclass(frozen=True)
class ParamRange:
    """One tuned value: a loss param (by its name), "lr" or "epochs"."""

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def suggest(self, trial: Any) -> float | int:
        if self.integer:
            return int(trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log))
        return float(trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log))


@dataclass
class SearchSpace:
    """What a trial samples (`ranges`) over the method's other loss params (`base_loss`)."""

    method: str
    ranges: list[ParamRange]
    base_loss: dict[str, Any]  # every loss param, at its default (or pinned) value
    base_train: dict[str, Any]  # the shared train options (lr and epochs come from the trial)

    def point(self, params: Mapping[str, Any]) -> MethodPoint:
        """A trial's sampled params -> the run it stands for."""
        loss = {**self.base_loss, **{k: v for k, v in params.items() if k not in SPACE_KEYS}}
        train = {**self.base_train, **({"lr": params["lr"]} if "lr" in params else {})}
        default_epochs = train.pop("epochs", None)  # epochs travel apart (the job's `epochs` argument)
        epochs = params.get("epochs", default_epochs)
        return MethodPoint(self.method, loss, train, None if epochs is None else int(epochs))


def _default_range(name: str, default: Any, spread: float) -> ParamRange | None:
    """The range around a default: log [d / spread, d * spread] when positive, [0, 1] at 0."""
    if isinstance(default, bool) or not isinstance(default, (int, float)) or name in FIXED_PARAMS:
        return None
    integer = isinstance(default, int)
    if default > 0:
        lo, hi = default / spread, default * spread
    elif default == 0:
        if integer:
            return None  # an integer switch at 0 (e.g. min_words): pin it unless space.<name> says
        lo, hi = 0.0, 1.0
    else:
        lo, hi = default * spread, default / spread
    if name in PARAM_LIMITS:
        lo, hi = max(lo, PARAM_LIMITS[name][0]), min(hi, PARAM_LIMITS[name][1])
    if integer:
        lo, hi = max(1, math.floor(lo)), max(1, math.ceil(hi))
    return ParamRange(name, lo, hi, log=lo > 0, integer=integer)


def _user_range(name: str, value: Any, like: ParamRange | None) -> ParamRange | None:
    """`space.<name>=[lo,hi]` / `[lo,hi,log|linear]`; None for a pinned single value. Without a
    scale, the default range's scale is kept (log when lo > 0 allows it)."""
    if not isinstance(value, (list, tuple)):
        return None
    nums = value[:2]
    if len(value) not in (2, 3) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in nums) \
            or nums[0] > nums[1]:
        raise ConfigError(f"space.{name} must be [lo, hi] or [lo, hi, log|linear] with lo <= hi, got {value}")
    lo, hi = nums
    scale = str(value[2]) if len(value) == 3 else ("log" if (like.log if like else True) and lo > 0 else "linear")
    if scale not in ("log", "linear") or (scale == "log" and lo <= 0):
        raise ConfigError(f"space.{name}: the scale must be linear, or log with lo > 0 (got {value})")
    integer = like.integer if like else all(isinstance(v, int) for v in nums)
    return ParamRange(name, lo, hi, log=scale == "log", integer=integer)


def build_space(cfg: TuneConfig, benchmark_yaml: Mapping[str, Any] | None = None) -> SearchSpace:
    """The method's tunable params (module docstring), `cfg.space` applied over the defaults."""
    from ...training.resolve import benchmark_layer

    method = check_method(cfg.method)
    own, layer = method_yaml(method), benchmark_layer(benchmark_yaml, method)
    loss = {**dict(own.get("loss") or {}), **layer["loss"], **dict(cfg.unlearn.get("loss") or {})}
    train = {**dict(own.get("train") or {}), **layer["train"], **dict(cfg.unlearn.get("train") or {})}
    defaults: dict[str, ParamRange | None] = {k: _default_range(k, v, cfg.spread) for k, v in loss.items()}
    lr = float(train.get("lr") or 1e-3)
    defaults["lr"] = ParamRange("lr", lr / cfg.spread, lr * cfg.spread, log=True)
    defaults["epochs"] = ParamRange("epochs", int(cfg.epochs[0]), int(cfg.epochs[1]), integer=True)
    unknown = sorted(set(cfg.space) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown space.{', space.'.join(unknown)} for {method} "
                          f"(known: {', '.join(sorted(defaults))})")
    ranges: list[ParamRange] = []
    for name, rng in defaults.items():
        if name in cfg.space:
            rng = _user_range(name, cfg.space[name], rng)
            if rng is None:  # a pinned value
                (train if name in SPACE_KEYS else loss)[name] = cfg.space[name]
        if rng is not None:
            ranges.append(rng)
    return SearchSpace(method, ranges, loss, train)
