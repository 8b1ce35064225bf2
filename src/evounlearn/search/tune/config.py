"""The configuration of `evounlearn tune` (`TuneConfig`, laid over evolve's run settings) and the
methods it can tune (those with YAML defaults, but `evolved`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...benchmarks.base import DEFAULT_BENCHMARK
from ...errors import ConfigError
from ..config import DEFAULT_YAML as EVOLVE_YAML
from ..config import LimitsConfig, RayConfig, check_job_options, check_train_seeds

METHOD_CONFIGS = Path(__file__).resolve().parents[2] / "methods" / "configs"
NOT_TUNABLE = frozenset({"evolved"})  # a loss program is what `evolve` searches, not a method to tune


#: the keys of configs/evolve.yaml that tune shares: its run settings, so that a tuned method and an
#: evolved loss run alike (`load_tune_config` applies them as the first layer over the defaults)
EVOLVE_SHARED = ("benchmark", "unlearn", "utility_floor", "finalists", "report_seeds", "limits", "train_seeds")


@dataclass
class TuneConfig:
    """`evounlearn tune`; `load_tune_config` lays evolve's run settings (configs/evolve.yaml,
    `EVOLVE_SHARED`) over these defaults."""

    method: str = ""
    budget: int = 20  # trials trained (failed ones count; runs lost to the infrastructure do not)
    workers: int = 2  # trials in parallel, one isolated process each
    seed: int = 0  # the sampler's seed and the trials' training seed
    train_seeds: int = 1  # trainings per trial on shared seeds, scored by their mean (as evolve's)
    benchmark: str = DEFAULT_BENCHMARK
    # one of the benchmark's fitnesses (docs/FITNESS.md); "" = what `evolve --mode ours` optimises
    # (calibrated; the benchmark's default where it lacks that one), so that a tuned method and an
    # evolved loss are ranked on the same scale
    fitness: str = ""
    evaluator: str = "real"  # real = search.candidate, or a module with the same `evaluate_candidate`
    executor: str = "local"  # local | ray (see evolve's `ray` section)
    ray: RayConfig = field(default_factory=RayConfig)  # `executor: ray` (docs/DISTRIBUTED.md)
    confine_writes: bool = True  # local workers write only in scratch, the run dir and the cache
    # the UnlearnConfig fields shared by every run (evolve's `unlearn` section)
    unlearn: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)  # param -> [lo, hi] | [lo, hi, log|linear] | value
    epochs: list[int] = field(default_factory=lambda: [1, 10])  # the epochs range (like evolved candidates)
    spread: float = 10.0  # default range of a positive param: [default / spread, default * spread], log
    utility_floor: float = 0.9
    finalists: int = 3
    report_seeds: int = 2
    limits: LimitsConfig = field(default_factory=LimitsConfig)  # of one run (evolve's `limits`)
    job_options: dict[str, Any] = field(default_factory=dict)
    keep_models: bool = False
    run_dir: str = ""

    def check(self) -> TuneConfig:
        check_method(self.method)
        if self.budget < 1 or self.workers < 1 or self.report_seeds < 1 or self.finalists < 0:
            raise ConfigError("budget, workers and report_seeds must be >= 1 (finalists >= 0)")
        if len(self.epochs) != 2 or not 1 <= int(self.epochs[0]) <= int(self.epochs[1]):
            raise ConfigError(f"epochs must be [lo, hi] with 1 <= lo <= hi, got {self.epochs}")
        if self.spread <= 1:
            raise ConfigError(f"spread must be > 1, got {self.spread}")
        check_train_seeds(self.train_seeds)
        self.fitness_name()  # an unknown fitness fails here, with the benchmark's ones
        check_job_options(self.evaluator, self.job_options)
        return self

    def fitness_name(self) -> str:
        """The fitness the trials are scored with: `fitness`, else the one `evolve --mode ours` uses."""
        from ...benchmarks import fitness_name

        return fitness_name(self.benchmark, self.fitness, "ours")


def load_tune_config(path: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()) -> TuneConfig:
    """Defaults <- evolve's run settings (configs/evolve.yaml, `EVOLVE_SHARED`) <- the user's YAML
    <- key=value overrides."""
    from ...config import load_config, load_yaml

    shared = {k: v for k, v in load_yaml(EVOLVE_YAML).items() if k in EVOLVE_SHARED} if EVOLVE_YAML.is_file() else {}
    return load_config(TuneConfig, [shared, *([path] if path else [])], overrides).check()


def tunable_methods() -> list[str]:
    """The registered methods, by their YAML defaults (no import of torch or the methods)."""
    return sorted(p.stem for p in METHOD_CONFIGS.glob("*.yaml") if p.stem not in NOT_TUNABLE)


def check_method(name: str) -> str:
    known = tunable_methods()
    if not name:
        raise ConfigError(f"tune needs --method (one of: {', '.join(known)})")
    if name.lower() not in known:
        raise ConfigError(f"unknown method {name!r} for tune (known: {', '.join(known)})")
    return name.lower()


def method_yaml(name: str) -> dict[str, Any]:
    from ...config import load_yaml

    return load_yaml(METHOD_CONFIGS / f"{check_method(name)}.yaml")
