"""The Benchmark protocol, the benchmark registry and the one fitness registry.

A benchmark is one object (a `Benchmark` subclass, registered with `@register_benchmark`) that
owns everything benchmark-specific:

- `prepare(options) -> prepared`: the target model and the retain oracle (trained once, cached);
  `options` is the search config's `unlearn` mapping (or the CLI's config), read by the benchmark;
- `reference(prepared, part) -> Reference`: the target's and the oracle's summaries on one part
  of the forget set (`benchmarks.parts`: search = the first half, report = the rest);
- `run(prepared, run, part=..., seed=..., run_dir=..., stage1_epochs=..., on_stage=...) ->
  RunResult`: unlearn with one `training.resolve.MethodRun` and evaluate on that part;
- `fitnesses`: its `FitnessSpec`s by name (the formula, the utility key the floor applies to,
  whether it needs the target's metrics) and `default_fitness`; `fitness` is the default one.
  Names shared across benchmarks: `evomu` (the paper's formula), `calibrated` (the forget set
  should look like never-seen data of the same kind; no retain model needed), `oracle` (forget
  quality against the retain oracle); docs/FITNESS.md. A search picks one by name
  (`fitness_name`); `prompt_notes`: what a loss proposer should know about the benchmark.

The search's candidate job (`search.candidate`) and the CLI reach every benchmark only
through this protocol; nothing outside a benchmark's module names it.

Ranking: a candidate whose utility is below `floor * target utility` ranks
below every candidate that passes; a failed candidate has fitness -inf. `rank_score` folds this
into one number: fitness (pass), fitness - 2 (below the floor), -inf (failed).
"""

from __future__ import annotations

import importlib
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError, EvoUnlearnError

FAILED = float("-inf")
BELOW_FLOOR_PENALTY = 2.0
PARTS = ("all", "search", "report")

FitnessFn = Callable[[Mapping[str, Any], Mapping[str, Any] | None], float]
#: on_stage(model, evaluate) -> summary: the candidate job's stage-1 hook (it may raise to stop)
StageHook = Callable[[Any, Callable[[Any], dict[str, Any]]], dict[str, Any]]


def default_cache_dir() -> Path:
    """Where prepared models are cached: $EVOUNLEARN_CACHE or ./cache (an empty value = ./cache)."""
    return Path(os.environ.get("EVOUNLEARN_CACHE") or "cache")


# ------------------------------------------------------------------------------------------------
# typed contracts


@dataclass(frozen=True)
class FitnessSpec:
    """A benchmark's fitness: `fn(summary, target_summary) -> [0, 1]` (higher is better)."""

    name: str
    fn: FitnessFn
    utility_key: str  # the summary key the utility floor applies to
    formula: str = ""  # for reports and prompts
    needs_target: bool = False  # fn reads the target model's summary on the same part
    # fn reads only the target's utility (`utility_key`) from its target argument: a job that
    # already knows the target's utility need not evaluate the target again
    needs_target_utility: bool = False
    # bumped whenever the formula changes: every result records it (`fitness_version`), so that
    # numbers computed under different formulas are never compared as if they were one
    version: int = 1
    # options a run scored with this fitness needs, by forget part ("search", "report", "all"): the
    # candidate job layers them under the search's own `unlearn` options (e.g. `robust`: which
    # recovery attacks run after the evaluation)
    part_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass
class Reference:
    """The target model's and the retain oracle's summaries on one part."""

    target: dict[str, Any]
    retain: dict[str, Any] | None = None


@dataclass
class RunResult:
    """One unlearning run: flat metrics, the full evaluation, the training record."""

    summary: dict[str, Any]
    results: dict[str, Any] = field(default_factory=dict)  # per-example values, for results.json
    train: dict[str, Any] = field(default_factory=dict)  # loss history, seconds, epochs, ...
    eval_seconds: float = 0.0
    epochs: int | None = None


@dataclass
class TargetInfo:
    """What `search.candidate.target_info` reports (converted to a dict at the worker boundary)."""

    data: str
    paths: dict[str, str | None]
    parts: dict[str, Any]
    target: dict[str, dict[str, Any]]  # part -> {"summary", "fitness"}
    retain: dict[str, dict[str, Any]] | None
    target_utility: float | None
    seconds: float = 0.0
    prepare_seconds: float = 0.0  # of that, preparing (training or fetching) the models
    # token counts of the search part's real rows ({"answer": [...], "prompt": [...]}), so that the
    # validation probes draw their lengths where real batches have them (None: the benchmark has
    # no such rows, or they could not be read: the probes' default ranges)
    probe_lengths: dict[str, list[int]] | None = None


class Benchmark(ABC):
    """See the module docstring. Subclasses set the class attributes and the three methods."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    description: str = ""
    fitnesses: ClassVar[dict[str, FitnessSpec]] = {}  # by name (evomu, calibrated, oracle, ...)
    default_fitness: str = ""  # the name `fitness` returns (empty: the first one)
    #: modules the sandboxed workers import before their first job (in the fork server): the
    #: heavy imports every run of this benchmark needs. Speed only; see `sandbox.preload_modules`.
    worker_preload: tuple[str, ...] = ("transformers.modeling_utils",)
    metric_keys: tuple[str, ...] = ()
    prompt_notes: str = ""  # benchmark facts for the proposer's prompt (search.proposers.llm.prompts)
    prompt_guidance: tuple[str, ...] = ()  # metric-driven advice lines for refine / crossover / tune prompts
    yaml_path: Path | None = None  # per-method defaults of this benchmark (`training.resolve`)

    @property
    def fitness(self) -> FitnessSpec:
        """The default fitness (compatibility: a subclass may still set `fitness = FitnessSpec(...)`)."""
        return self.fitness_spec()

    def all_fitnesses(self) -> dict[str, FitnessSpec]:
        """Every fitness by name; a subclass that only sets `fitness` has that one."""
        if self.fitnesses:
            return dict(self.fitnesses)
        spec = getattr(type(self), "fitness", None)
        if isinstance(spec, FitnessSpec):
            return {spec.name: spec}
        raise ConfigError(f"benchmark {self.name} declares no fitness")

    def default_fitness_name(self) -> str:
        known = self.all_fitnesses()
        return self.default_fitness if self.default_fitness in known else next(iter(known))

    def fitness_spec(self, name: str = "") -> FitnessSpec:
        """The fitness called `name` (empty: the default); ConfigError listing the known ones."""
        known = self.all_fitnesses()
        name = name or self.default_fitness_name()
        if name not in known:
            raise ConfigError(f"benchmark {self.name} has no fitness {name!r} (known: {', '.join(known)})")
        return known[name]

    def method_yaml(self) -> dict[str, Any]:
        """This benchmark's layer of method defaults (empty without a YAML file)."""
        from ..config import load_yaml

        if self.yaml_path is None or not Path(self.yaml_path).is_file():
            return {}
        return load_yaml(self.yaml_path)

    @abstractmethod
    def prepare(self, options: Mapping[str, Any] | None = None) -> Any:
        """The target and the retain oracle (cached); any object `reference` and `run` accept."""

    @abstractmethod
    def reference(self, prepared: Any, part: str = "all", fraction: float | None = None) -> Reference:
        """The target's and the oracle's summaries on one part (`fraction` None: the options')."""

    @abstractmethod
    def run(self, prepared: Any, run: Any, *, part: str = "all", fraction: float | None = None,
            seed: int | None = None,
            run_dir: str | Path | None = None, stage1_epochs: int = 0,
            on_stage: StageHook | None = None) -> RunResult:
        """Unlearn with `run` (a `MethodRun`) on one part and evaluate. With `0 < stage1_epochs <
        epochs` the model is evaluated after epoch `stage1_epochs` through `on_stage`. With a
        `run_dir`, the run writes RUN_DIR/results.json and RUN_DIR/train.json (and whatever
        reproduces it)."""

    # -- the command line (`evounlearn prepare|eval|unlearn --benchmark NAME`). Most benchmarks
    # take the generic versions by inheriting `runs.GenericCommands` first; TOFU has its own.

    def cli_prepare(self, config: str | None, overrides: list[str], force: bool = False, *,
                    export: str | None = None, import_from: str | None = None) -> Any:
        """Prepare (cached) and report the target's and the oracle's metrics (a `runs.Report`);
        `export` writes the prepared models to an artifact file, `import_from` installs one
        (TOFU-shaped benchmarks: `tofu/artifact.py`)."""
        raise ConfigError(f"benchmark {self.name} has no `evounlearn prepare` command")

    def cli_eval(self, request: Any) -> Any:
        """Evaluate models (a `runs.EvalRequest`)."""
        raise ConfigError(f"benchmark {self.name} has no `evounlearn eval` command")

    def cli_unlearn(self, method: str | None, config: str | None, overrides: list[str], *,
                    resume: str | None = None) -> Any:
        """One unlearning run in a run directory (a `runs.Report`); `resume` continues or reports it."""
        raise ConfigError(f"benchmark {self.name} has no `evounlearn unlearn` command")

    def check_data(self, options: Mapping[str, Any] | None = None) -> None:
        """Check every data split a command with these options will read (schema, non-empty, known
        split names), before any model is loaded or trained: a `DataError` naming the file, row and
        column. Called first by `evounlearn prepare|eval|unlearn|evolve` and by the search's target
        job. Default: nothing to check (data the benchmark generates itself)."""
        return None

    def paths(self, prepared: Any) -> dict[str, str | None]:
        """The prepared models' paths (for reports)."""
        target, retain = getattr(prepared, "target", None), getattr(prepared, "retain", None)
        return {"target": str(target) if target else None, "retain": str(retain) if retain else None}

    def data_name(self, prepared: Any) -> str:
        return self.name

    def models_sha256(self, prepared: Any) -> str | None:
        """A hash naming the prepared target and oracle (results record which models they were
        scored against); None where a benchmark cannot name them."""
        return None

    def probe_lengths(self, prepared: Any, part: str = "search") -> dict[str, list[int]] | None:
        """Token counts of a part's real forget rows, {"answer": [...] (with EOS), "prompt": [...]}:
        what the validation probes draw their lengths from. Default None (the probes' ranges)."""
        return None


# ------------------------------------------------------------------------------------------------
# registry (adding a benchmark: its module, registered with @register_benchmark, + one line here)

BENCHMARKS: dict[str, Benchmark] = {}
_ALIASES: dict[str, str] = {}
#: the built-in benchmark modules and the names and aliases they register (one line per benchmark);
#: a lookup imports only the module of the name asked for, so that an unknown name is reported
#: without importing any benchmark module (torch)
BUILTIN_MODULES: dict[str, tuple[str, ...]] = {
    "evounlearn.benchmarks.tofu": ("tofu", "generated", "gen", "entangled", "partial", "paraphrase",
                                   "generated-large", "entangled-large", "partial-large", "paraphrase-large"),
    "evounlearn.benchmarks.muse": ("muse-news", "muse"),
    "evounlearn.benchmarks.wmdp": ("wmdp-synthetic", "wmdp", "hazard"),
}
DEFAULT_BENCHMARK = "generated"


def register_benchmark(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: register one instance under its name and aliases."""
    bench = cls()
    BENCHMARKS[bench.name] = bench
    for alias in bench.aliases:
        _ALIASES[alias] = bench.name
    return cls


def _load_builtins() -> None:
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)


def aliases() -> dict[str, str]:
    _load_builtins()
    return dict(_ALIASES)


def all_benchmarks() -> dict[str, Benchmark]:
    """Every registered benchmark by name (the built-in ones imported first)."""
    _load_builtins()
    return dict(BENCHMARKS)


def get_benchmark(name: str | Benchmark) -> Benchmark:
    """A registered benchmark by name or alias (case-insensitive), or an importable
    ``"module:attr"`` path to a `Benchmark` instance or class (e.g. a test fake)."""
    if isinstance(name, Benchmark):
        return name
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj: Any = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"cannot import benchmark {name!r}: {e}") from None
        obj = obj() if isinstance(obj, type) else obj
        if not isinstance(obj, Benchmark):
            raise ConfigError(f"{name!r} is not a Benchmark")
        return obj
    key = name.lower()
    module = next((m for m, names in BUILTIN_MODULES.items() if key in names), None)
    if module is not None:
        importlib.import_module(module)
    elif key not in BENCHMARKS and key not in _ALIASES:
        known = [n for names in BUILTIN_MODULES.values() for n in names] + list(BENCHMARKS) + list(_ALIASES)
        raise ConfigError(f"unknown benchmark {name!r} (known: {', '.join(dict.fromkeys(known))})")
    key = _ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)}; aliases: "
                          f"{', '.join(_ALIASES)})")
    return BENCHMARKS[key]


# ------------------------------------------------------------------------------------------------
# the one fitness registry: every benchmark's FitnessSpec, by benchmark name or alias


#: the fitness a search optimises when its config leaves `fitness` empty, per search mode (the
#: benchmark's default where it lacks that one)
MODE_FITNESS = {"ours": "calibrated", "evomu": "evomu"}


def get_fitness(benchmark: str | Benchmark, name: str = "") -> FitnessSpec:
    """A benchmark's fitness by name (empty: its default)."""
    return get_benchmark(benchmark).fitness_spec(name)


def fitness_name(benchmark: str | Benchmark, name: str = "", mode: str = "") -> str:
    """The fitness a search uses: `name` if given (checked), else the mode's (`MODE_FITNESS`) when
    the benchmark has it, else the benchmark's default."""
    bench = get_benchmark(benchmark)
    if name:
        bench.fitness_spec(name)  # unknown names fail here, with the known ones
        return name
    preferred = MODE_FITNESS.get(mode, "")
    return preferred if preferred in bench.all_fitnesses() else bench.default_fitness_name()


def fitness_values(benchmark: str | Benchmark, summary: Mapping[str, Any] | None,
                   target: Mapping[str, Any] | None = None) -> dict[str, float | None]:
    """Every fitness of the benchmark as ``{"fitness_<name>": value}`` (None where it cannot be
    computed, e.g. `oracle` without forget quality): what a summary carries for the leaderboards."""
    bench = get_benchmark(benchmark)
    out: dict[str, float | None] = {}
    for name in bench.all_fitnesses():
        f = compute_fitness(bench, summary, target, fitness=name)
        out[f"fitness_{name}"] = f if math.isfinite(f) else None
    return out


def metric(summary: Mapping[str, Any], key: str) -> float:
    """A finite summary value (plain or ``{"agg": x}``); KeyError / ValueError otherwise."""
    v = summary.get(key)
    if isinstance(v, Mapping):
        v = v.get("agg")
    if v is None:
        raise KeyError(key)
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{key} is not finite")
    return v


def compute_fitness(benchmark: str | Benchmark, summary: Mapping[str, Any] | None,
                    target: Mapping[str, Any] | None = None, fitness: str = "") -> float:
    """The benchmark's fitness `fitness` (empty: its default), or -inf when the summary is missing
    or incomplete."""
    if not summary:
        return FAILED
    spec = get_fitness(benchmark, fitness)
    try:
        f = float(spec.fn(summary, target))
    except (KeyError, ValueError, TypeError, EvoUnlearnError):
        return FAILED
    return f if math.isfinite(f) else FAILED


def utility(benchmark: str | Benchmark, summary: Mapping[str, Any] | None, fitness: str = "") -> float | None:
    """The summary's utility: the value the floor of fitness `fitness` (empty: the default) reads."""
    if not summary:
        return None
    try:
        return metric(summary, get_fitness(benchmark, fitness).utility_key)
    except (KeyError, ValueError, TypeError):
        return None


def passes_floor(utility_value: float | None, target_utility: float | None, floor: float) -> bool:
    """utility >= floor * target utility (always true without a target or with floor 0)."""
    if target_utility is None or floor <= 0:
        return True
    return utility_value is not None and utility_value >= floor * target_utility - 1e-12


def rank_score(fitness: float | None, utility_value: float | None, target_utility: float | None,
               floor: float) -> float:
    """One sortable number: fitness (pass), fitness - 2 (below the utility floor), -inf (failed)."""
    if fitness is None or not math.isfinite(fitness):
        return FAILED
    if passes_floor(utility_value, target_utility, floor):
        return fitness
    return fitness - BELOW_FLOOR_PENALTY
