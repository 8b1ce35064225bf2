"""Benchmarks: one `Benchmark` protocol (base.py), a registry by name and alias, the one fitness
registry and the one forget-part splitter (parts.py). Built-in: tofu.py (real TOFU and the
generated benchmark), muse/ (MUSE-News, tiny setting), wmdp.py (WMDP-shaped, tiny setting).

Not to be confused with the repository's top-level `benchmarks/` folder (scripts that produce the
numbers in benchmarks/results/)."""

from __future__ import annotations

from .base import (
    BENCHMARKS,
    DEFAULT_BENCHMARK,
    FAILED,
    MODE_FITNESS,
    Benchmark,
    FitnessSpec,
    Reference,
    RunResult,
    TargetInfo,
    all_benchmarks,
    compute_fitness,
    default_cache_dir,
    fitness_name,
    fitness_values,
    get_benchmark,
    get_fitness,
    passes_floor,
    rank_score,
    register_benchmark,
    utility,
)

__all__ = [
    "BENCHMARKS",
    "DEFAULT_BENCHMARK",
    "FAILED",
    "MODE_FITNESS",
    "Benchmark",
    "FitnessSpec",
    "Reference",
    "RunResult",
    "TargetInfo",
    "all_benchmarks",
    "compute_fitness",
    "default_cache_dir",
    "fitness_name",
    "fitness_values",
    "get_benchmark",
    "get_fitness",
    "passes_floor",
    "rank_score",
    "register_benchmark",
    "utility",
]
