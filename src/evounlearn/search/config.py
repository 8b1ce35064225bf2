"""The search's configuration (`evounlearn evolve`; defaults in `configs/evolve.yaml`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..benchmarks.base import DEFAULT_BENCHMARK
from ..errors import ConfigError

DEFAULT_YAML = Path(__file__).resolve().parents[1] / "configs" / "evolve.yaml"
MODES = ("ours", "evomu")
#: control arms (`--control`): generation loops in search.modes that stand in for the mode's
CONTROLS = ("random", "seeds")

#: The EvoMU paper's schedule: generation 0 = 10 zero-shot losses, then
#: (parents, children per parent): top-5 x 5, top-3 x 10, top-5 x 3 = 80 candidates.
EVOMU_SCHEDULE: list[list[int]] = [[10, 1], [5, 5], [3, 10], [5, 3]]


@dataclass
class OursConfig:
    """`--mode ours`: archive with elitism, weighted parents, crossover, tuning, staged evaluation."""

    initial: int = 10  # generation 0 size (zero-shot proposals, literature seeds first)
    per_generation: int = 6  # trained candidates per later generation
    p_refine: float = 0.5  # operator probabilities (normalised)
    p_crossover: float = 0.25
    p_tune: float = 0.25
    archive_size: int = 16  # elite candidates (over all generations) eligible as parents
    half_life: float = 2.0  # parent weight 0.5 ** (rank / half_life) ...
    child_penalty: float = 1.0  # ... / (1 + child_penalty * children): a bonus for few children
    stage1_epochs: int = 0  # staged evaluation: evaluate after this epoch first (0 = off; evolve.yaml says why)
    promote_fraction: float = 0.5  # continue to full length when in the top fraction at stage 1
    min_history: int = 4  # stage-1 results needed before any candidate is stopped
    dedup: bool = True  # behavioural de-duplication by probe fingerprint
    repair_attempts: int = 2  # repair requests for a rejected proposal, with the reason
    # Selection on signal (docs/FITNESS.md, benchmarks/results/noise.json). After each generation
    # the `race_top` best candidates are re-run on more search-part seeds until each has
    # `race_seeds` trainings (runs x train_seeds: with train_seeds >= race_seeds nothing races;
    # every re-run counts against the budget), before they parent or become finalists; candidates
    # rank on mean - lcb_z * noise_sd / sqrt(trainings). noise_sd = one training's sd of the
    # fitness from the datasheet (0.037-0.058 on the -large benchmarks, pooled over three losses);
    # race_top 0 or lcb_z 0 switch each part off.
    race_top: int = 2
    race_seeds: int = 3
    noise_sd: float = 0.05
    lcb_z: float = 1.0


@dataclass
class EvoMUConfig:
    """`--mode evomu`: the paper's schedule, truncation selection in the latest generation, refine only."""

    schedule: list[list[int]] = field(default_factory=lambda: [list(x) for x in EVOMU_SCHEDULE])
    full_budget: int = 80  # the schedule's size; a smaller --budget scales it down proportionally


@dataclass
class RayConfig:
    """`executor: ray`: where and with what resources each candidate runs (docs/DISTRIBUTED.md)."""

    address: str = ""  # "" = start a local Ray instance; "auto" / "host:port" / "ray://host:port" = a cluster
    num_cpus: float = 1.0  # Ray resources reserved per candidate task
    num_gpus: float = 0.0  # 1 = one GPU per candidate
    memory_mb: int | None = None  # Ray's scheduling reservation (the hard limit stays limits.memory_mb)
    shared_dir: str = ""  # a shared file system every node must see (checked at start, with run and cache dirs)
    runtime_env: dict[str, Any] | None = None  # Ray runtime_env for small artifacts (working_dir, env_vars, ...)
    retries: int = 2  # resubmits of a task lost to an infrastructure fault (node died, worker crashed)
    # slots held by one actor, whose sandboxes share one fork server (torch and the benchmark's
    # modules imported once per actor, not once per slot); its resources are that many times the
    # above. 0 = all slots in one actor on a local instance (address ""), one per actor on a cluster
    slots_per_actor: int = 0


@dataclass
class LimitsConfig:
    """`limits`: what one candidate run may use (None = no limit); a typo (`limits.wal_s`) is a
    one-line error naming these keys, as for every other section."""

    wall_s: float | None = 900.0  # wall-clock seconds
    cpu_s: float | None = 1800.0  # CPU seconds (all threads)
    memory_mb: int | None = 4096  # resident memory

    def to_limits(self) -> Any:
        """The sandbox's `Limits` (imported here only: the config stays light for the CLI)."""
        from ..sandbox import Limits

        return Limits(self.wall_s, self.cpu_s, self.memory_mb)


#: the keyword arguments of the candidate job (`candidate.evaluate_candidate`; a test keeps the two
#: equal): named here so that a config is checked without importing the job
CANDIDATE_JOB_PARAMS = ("run_dir", "code", "method", "function", "interface", "epochs", "seed", "forget_part",
                        "unlearn", "stage1_epochs", "promote_cutoff", "benchmark", "target_utility",
                        "utility_floor", "keep_model", "fitness", "train_seeds")


def check_job_options(evaluator: str, options: Mapping[str, Any]) -> None:
    """`job_options` are extra keyword arguments of the candidate job: with the real job, a key it
    does not take is a one-line error here (not a failure of every run in a worker)."""
    if evaluator != "real" or not options:
        return
    known = set(CANDIDATE_JOB_PARAMS)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown option 'job_options.{unknown[0]}' (the candidate job's arguments: "
                          f"{', '.join(sorted(known))})")


def check_train_seeds(train_seeds: int, stage1_epochs: int = 0) -> None:
    """`train_seeds` >= 1, and not with staged evaluation (each training would be stopped or
    promoted on its own seed)."""
    if int(train_seeds) < 1:
        raise ConfigError(f"train_seeds must be >= 1, got {train_seeds}")
    if int(train_seeds) > 1 and int(stage1_epochs) > 0:
        raise ConfigError("train_seeds > 1 does not combine with staged evaluation (set ours.stage1_epochs=0)")


@dataclass
class SearchConfig:
    mode: str = "ours"  # ours | evomu
    # a control arm in place of the mode's generation loop (same budget, fitness, baselines and
    # finalists): random = random trees, no selection; seeds = the literature seeds, constants and
    # epochs tuned only ("" = none: the search itself). modes/random.py and modes/seeds.py
    control: str = ""
    budget: int = 12  # trained candidates (baselines and finalists' re-runs not counted)
    # trainings per candidate run, on shared seeds, scored by their mean (`candidate.training_seeds`):
    # 1 = one training per run; the noise datasheet says how many a benchmark needs to resolve
    # differences (noise.json `trainings_per_candidate`). The budget counts runs: trainings = budget x this
    train_seeds: int = 1
    workers: int = 2  # candidates evaluated in parallel (one process each)
    seed: int = 0
    interface: str = "faithful"  # faithful | extended
    benchmark: str = DEFAULT_BENCHMARK  # a name or alias of the registry (evounlearn.benchmarks), or "module:attr"
    # one of the benchmark's fitnesses (docs/FITNESS.md); "" = the mode's: ours -> calibrated,
    # evomu -> evomu (the benchmark's default where it lacks that one)
    fitness: str = ""
    # real = the candidate job (search.candidate); or an importable module with the same two jobs,
    # `evaluate_candidate` and `target_info` (tests: "tests.fakes")
    evaluator: str = "real"
    executor: str = "local"  # local (worker processes here) | ray (a Ray cluster or local instance; see `ray`)
    ray: RayConfig = field(default_factory=RayConfig)
    # local candidate workers write only in their scratch folder, the run dir and the cache
    # (Landlock, where the kernel has it; the pool's log line says whether it is on)
    confine_writes: bool = True
    proposer: dict[str, Any] = field(default_factory=lambda: {"kind": "offline"})
    # UnlearnConfig fields shared by every run (data, forget_split, train.*, eval.*, prepare.*, ...)
    unlearn: dict[str, Any] = field(default_factory=dict)
    default_epochs: int = 5  # candidates without an epochs docstring, and the baselines
    utility_floor: float = 0.9  # x the target model's utility
    # registered methods run with the candidates' training budget; "npo@10" = NPO for 10 epochs.
    # They keep default_epochs and their default constants; baselines tuned like the candidates
    # (constants, retain weight, epochs, lr) come from `evounlearn tune --method NAME`.
    baselines: list[str] = field(default_factory=lambda: ["grad_ascent", "grad_diff", "npo", "simnpo", "undial"])
    baseline_seeds: int = 2
    finalists: int = 3  # top-k re-run with report_seeds seeds on both parts
    report_seeds: int = 2
    select_on: str = "search"  # the winner among the finalists: by search-part (default) or report-part fitness
    max_proposals_per_slot: int = 6  # proposals tried per wanted candidate before giving up
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    job_options: dict[str, Any] = field(default_factory=dict)  # extra kwargs for the evaluator job
    keep_models: bool = False
    run_dir: str = ""
    ours: OursConfig = field(default_factory=OursConfig)
    evomu: EvoMUConfig = field(default_factory=EvoMUConfig)

    def check(self) -> SearchConfig:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.control and self.control not in CONTROLS:
            raise ConfigError(f"control must be one of {', '.join(CONTROLS)} (or empty), not {self.control!r}")
        if self.budget < 1:
            raise ConfigError(f"budget must be >= 1, got {self.budget}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.interface not in ("faithful", "extended"):
            raise ConfigError(f"interface must be faithful or extended, not {self.interface!r}")
        if self.report_seeds < 1 or self.baseline_seeds < 1:
            raise ConfigError("report_seeds and baseline_seeds must be >= 1")
        check_train_seeds(self.train_seeds, self.ours.stage1_epochs if self.mode == "ours" else 0)
        if self.ours.race_top < 0 or self.ours.race_seeds < 1 or self.ours.noise_sd < 0 or self.ours.lcb_z < 0:
            raise ConfigError("ours.race_top, ours.noise_sd and ours.lcb_z must be >= 0 and ours.race_seeds >= 1")
        if self.select_on not in ("search", "report"):
            raise ConfigError(f"select_on must be search or report, not {self.select_on!r}")
        if self.evaluator != "real" and not all(p.isidentifier() for p in self.evaluator.split(".")):
            raise ConfigError(f"evaluator must be real or an importable module path, not {self.evaluator!r}")
        from ..benchmarks import get_benchmark

        get_benchmark(self.benchmark)  # unknown names fail here, with the known ones
        self.fitness_name()  # an unknown fitness fails here, with the benchmark's ones
        check_job_options(self.evaluator, self.job_options)
        return self

    def rank_noise_sd(self) -> float:
        """z x sd for `archive.lower_bound` (mode ours and its controls; 0 = rank on the mean, the
        paper's mode)."""
        return max(0.0, float(self.ours.lcb_z)) * max(0.0, float(self.ours.noise_sd)) if self.mode == "ours" else 0.0

    def fitness_name(self) -> str:
        """The fitness the search optimises (`benchmarks.fitness_name`: `fitness` or the mode's)."""
        from ..benchmarks import fitness_name

        return fitness_name(self.benchmark, self.fitness, self.mode)


@dataclass(frozen=True)
class EvaluatorJobs:
    """The worker jobs ("module:function") of one search: candidate evaluation and target information."""

    evaluate: str
    target: str


REAL_JOBS = "evounlearn.search.candidate"


def evaluator_jobs(cfg: SearchConfig) -> EvaluatorJobs:
    module = REAL_JOBS if cfg.evaluator == "real" else cfg.evaluator
    return EvaluatorJobs(f"{module}:evaluate_candidate", f"{module}:target_info")


def config_from_dict(data: Mapping[str, Any]) -> SearchConfig:
    """A saved search config (the run database's `config` meta) back as a `SearchConfig`."""
    from ..config import apply_overrides

    cfg = SearchConfig()
    apply_overrides(cfg, dict(data))
    return cfg


def load_search_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] = ()) -> SearchConfig:
    """Defaults <- configs/evolve.yaml <- the user's YAML <- key=value overrides."""
    from ..config import load_config

    files = [p for p in (DEFAULT_YAML if DEFAULT_YAML.is_file() else None, path) if p]
    return load_config(SearchConfig, files, overrides).check()


def scaled_evomu_schedule(budget: int, schedule: list[list[int]] | None = None,
                          full_budget: int = 80) -> list[tuple[int, int, list[int]]]:
    """Per generation: (size, parents, children per parent); gen 0 has no parents.

    With budget >= the schedule's size the schedule is used as is; a smaller budget scales every
    generation's size proportionally (largest remainder, so the sizes sum to the budget) and
    spreads each generation's children evenly over at most its number of parents."""
    sched = [list(x) for x in (schedule or EVOMU_SCHEDULE)]
    sizes = [sched[0][0]] + [k * c for k, c in sched[1:]]
    total = sum(sizes)
    out: list[tuple[int, int, list[int]]] = []
    if budget >= total:
        new_sizes = sizes
    else:
        raw = [s * budget / total for s in sizes]
        new_sizes = [int(r) for r in raw]
        rest = budget - sum(new_sizes)
        order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - int(raw[i])), i))
        for i in order[:rest]:
            new_sizes[i] += 1
        if new_sizes[0] == 0 and budget > 0:  # generation 0 always exists
            j = max(range(len(new_sizes)), key=lambda i: new_sizes[i])
            new_sizes[j] -= 1
            new_sizes[0] = 1
    for g, n in enumerate(new_sizes):
        if g == 0:
            out.append((n, 0, []))
            continue
        if n == 0:
            continue
        k = min(sched[g][0], n)
        base, extra = divmod(n, k)
        out.append((n, k, [base + (1 if i < extra else 0) for i in range(k)]))
    return out
