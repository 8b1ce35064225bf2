"""`evounlearn tune`: hyperparameter search for one registered unlearning method (docs/TUNE.md).

The fair control for `evounlearn evolve`: a method tuned with the SAME run settings, fitness and
budget accounting as the evolved candidates. Every trial is one candidate job
(`search.candidate.evaluate_candidate`, `method=NAME`) submitted through the same `Executor`
(sandboxed worker processes, or Ray), scored on the search part of the forget set with the
benchmark's fitness and the utility floor (`rank_score`, as evolve ranks its candidates). The top
`finalists` trials are then re-run with `report_seeds` seeds on the report part (untouched by the
search), like evolve's finalists.

What is tuned (`SearchSpace`): every numeric loss param of the method's YAML defaults (the retain
weight `alpha` / `lam` among them; seeds and sizes excluded), the learning rate and the epochs;
`space.<param>=[lo,hi]` (or `[lo,hi,log]`, or a single value to pin it) overrides a range.

The sampler is Optuna's TPE (seeded), driven with `study.ask()` / `study.tell()` so that `workers`
trials run at once; the study lives in `RUN_DIR/tune.sqlite` (Optuna's RDB storage, study "tune"),
which is also what `--resume` continues: trials left RUNNING by a killed process are marked
failed (not charged) and their parameters asked again. Optuna is an optional extra
(`pip install 'evounlearn[tune]'`), imported only here, on first use.

The trials run through `search.points` (`JobRunner`: one candidate job per (method, params)
point, infrastructure faults retried; finalists' report-part runs).
"""

from __future__ import annotations

import logging
import math
import shlex
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..benchmarks.base import DEFAULT_BENCHMARK
from ..errors import ConfigError, EvoUnlearnError, InfrastructureError
from .config import DEFAULT_YAML as EVOLVE_YAML
from .config import LimitsConfig, RayConfig, check_job_options
from .points import JobRunner, MethodPoint, PointReport, RunOutcome, RunRequest, finalist_requests

if TYPE_CHECKING:
    from ..sandbox import JobResult
    from .executors import Executor

log = logging.getLogger("evounlearn.tune")

DB_NAME = "tune.sqlite"
STUDY_NAME = "tune"
METHOD_CONFIGS = Path(__file__).resolve().parents[1] / "methods" / "configs"
NOT_TUNABLE = frozenset({"evolved"})  # a loss program is what `evolve` searches, not a method to tune
#: numeric loss params that are not hyperparameters of the loss (seeds, sizes, layer choices)
FIXED_PARAMS = frozenset({"seed", "idk_seed", "gen_batch_size", "max_new_tokens", "layer"})
#: hard limits of a few params (a range around the default is clipped to them)
PARAM_LIMITS: dict[str, tuple[float, float]] = {"top_p": (0.05, 1.0), "temperature": (0.1, 3.0),
                                                 "n_samples": (1, 10)}
SPACE_KEYS = ("lr", "epochs")  # besides the loss params


# ------------------------------------------------------------------------------------------------
# configuration


#: the keys of configs/evolve.yaml that tune shares: its run settings, so that a tuned method and an
#: evolved loss run alike (`load_tune_config` applies them as the first layer over the defaults)
EVOLVE_SHARED = ("benchmark", "unlearn", "utility_floor", "finalists", "report_seeds", "limits")


@dataclass
class TuneConfig:
    """`evounlearn tune`; `load_tune_config` lays evolve's run settings (configs/evolve.yaml,
    `EVOLVE_SHARED`) over these defaults."""

    method: str = ""
    budget: int = 20  # trials trained (failed ones count; runs lost to the infrastructure do not)
    workers: int = 2  # trials in parallel, one isolated process each
    seed: int = 0  # the sampler's seed and the trials' training seed
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
        self.fitness_name()  # an unknown fitness fails here, with the benchmark's ones
        check_job_options(self.evaluator, self.job_options)
        return self

    def fitness_name(self) -> str:
        """The fitness the trials are scored with: `fitness`, else the one `evolve --mode ours` uses."""
        from ..benchmarks import fitness_name

        return fitness_name(self.benchmark, self.fitness, "ours")


def load_tune_config(path: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()) -> TuneConfig:
    """Defaults <- evolve's run settings (configs/evolve.yaml, `EVOLVE_SHARED`) <- the user's YAML
    <- key=value overrides."""
    from ..config import load_config, load_yaml

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
    from ..config import load_yaml

    return load_yaml(METHOD_CONFIGS / f"{check_method(name)}.yaml")


def require_optuna() -> None:
    """A one-line ConfigError when Optuna is not installed (before anything is written)."""
    _optuna()


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("evounlearn tune needs Optuna: pip install 'evounlearn[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# ------------------------------------------------------------------------------------------------
# the search space


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
    from ..training.resolve import benchmark_layer

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


# ------------------------------------------------------------------------------------------------
# the tuner


class Tuner:
    """Runs (or resumes) one tune in `run_dir`; see the module docstring."""

    def __init__(self, cfg: TuneConfig, run_dir: str | Path | None = None, *, executor: Executor | None = None,
                 resume: bool = False) -> None:
        self.cfg = cfg.check()
        # pin the resolved fitness, so that a resumed tune (or a later default) never switches it
        self.cfg.fitness = self.cfg.fitness_name()
        self.run_dir = Path(run_dir or cfg.run_dir or default_run_dir(cfg.method)).resolve()
        self.cfg.run_dir = str(self.run_dir)
        self.resume = resume
        self._executor, self._own_executor = executor, executor is None
        if cfg.evaluator == "real":  # pin the cache, so workers and reproductions use the same models
            from ..benchmarks import default_cache_dir

            prep = self.cfg.unlearn.setdefault("prepare", {})
            if not prep.get("cache_dir"):
                prep["cache_dir"] = str(default_cache_dir().resolve())
        self.study: Any = None
        self.space: SearchSpace | None = None
        self.runner: JobRunner | None = None
        self._infra_faults: dict[str, int] = {}  # a point's params -> infrastructure faults in this session

    @classmethod
    def for_resume(cls, run_dir: str | Path, overrides: Sequence[str] | Mapping[str, Any] = (),
                   **kwargs: Any) -> Tuner:
        """A tuner for an existing run: its saved config, with `overrides` (e.g. budget, workers)."""
        from ..config import apply_overrides, parse_overrides

        db = Path(run_dir) / DB_NAME
        if not db.is_file():
            raise ConfigError(f"{run_dir} holds no tune database ({DB_NAME}); nothing to resume")
        optuna = _optuna()
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(run_dir))
        saved = study.user_attrs.get("config")
        if not saved:
            raise ConfigError(f"{db} holds no tune config")
        cfg = TuneConfig()
        apply_overrides(cfg, saved)
        if "fitness" not in saved:  # a tune from before `fitness` existed scored the benchmark's default
            from ..benchmarks import get_benchmark

            cfg.fitness = get_benchmark(cfg.benchmark).default_fitness_name()
        apply_overrides(cfg, overrides if isinstance(overrides, Mapping) else parse_overrides(overrides))
        if cfg.method != saved.get("method"):
            raise ConfigError(f"{run_dir} tunes {saved.get('method')}, not {cfg.method}")
        return cls(cfg, run_dir, resume=True, **kwargs)

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run (or continue) the tune to the end; returns the leaderboard data."""
        from ..benchmarks import get_benchmark

        _optuna()  # a missing Optuna is one line, before the run directory exists
        self.run_dir.mkdir(parents=True, exist_ok=True)
        bench = get_benchmark(self.cfg.benchmark)
        self.space = build_space(self.cfg, bench.method_yaml())
        self.study = self._open_study()
        try:
            self.runner = self._runner()
            self._target()
            self._requeue_lost()
            self._run_trials()
            self._run_finalists()
        except BaseException:
            self._close(kill=True)  # Ctrl-C or an error: stop the runs in flight (asked again on resume)
            raise
        self._close()
        self.study.set_user_attr("status", "done")
        return write_outputs(self)

    def _open_study(self) -> Any:
        from ..config import to_dict

        optuna = _optuna()
        exists = (self.run_dir / DB_NAME).is_file()
        if exists and not self.resume:
            raise ConfigError(f"{self.run_dir} already holds a tune; continue it with --resume {self.run_dir}")
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage_url(self.run_dir),
                                    direction="maximize", load_if_exists=True)
        # Seeded TPE; on resume the seed moves on by the trials made, so that new trials do not
        # replay the first ones' random start. constant_liar: parallel trials avoid each other.
        study.sampler = _sampler(optuna, self.cfg.seed + len(study.trials))
        study.set_user_attr("config", to_dict(self.cfg))
        study.set_user_attr("status", "running")
        return study

    def _runner(self) -> JobRunner:
        from .executors import executor_options, make_executor

        limits = self.cfg.limits.to_limits()
        if self._executor is None:
            self._executor = make_executor(self.cfg.executor, self.cfg.workers, limits,
                                           **executor_options(self.cfg, self.run_dir))  # type: ignore[arg-type]
        return JobRunner(self._executor, self.cfg.benchmark, self.cfg.unlearn, limits, self.cfg.utility_floor,
                         evaluator=self.cfg.evaluator, keep_models=self.cfg.keep_models,
                         job_options=self.cfg.job_options, fitness=self.cfg.fitness)

    def _close(self, kill: bool = False) -> None:
        if self._own_executor and self._executor is not None:
            self._executor.close(kill=kill)
            self._executor = None

    def _target(self) -> None:
        assert self.runner is not None
        info = self.study.user_attrs.get("target")
        if info is None:
            log.info("preparing the benchmark and evaluating the target model (cached after the first time)")
            info = self.runner.target_info(self.run_dir / "target.log")
            self.study.set_user_attr("target", info)
        self.runner.target_utility = info.get("target_utility")

    def _requeue_lost(self) -> None:
        """Trials left RUNNING by a killed run: failed, not charged, their params asked again. A
        trial killed while its params were being drawn (before it was submitted: no `run_dir`)
        never ran and holds only part of a point: it is failed and nothing is asked again."""
        optuna = _optuna()
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            if "run_dir" in t.user_attrs:
                self.study.enqueue_trial(dict(t.params))
                log.info("resume: trial %d was left running; its params are asked again", t.number)

    # -- trials ---------------------------------------------------------------------------------
    def charged(self) -> int:
        """Trials that count against the budget: completed, or failed by what the trial did."""
        optuna = _optuna()
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
        return sum(1 for t in self.study.get_trials(deepcopy=False, states=states)
                   if t.state == optuna.trial.TrialState.COMPLETE or t.user_attrs.get("charged"))

    def _run_trials(self) -> None:
        assert self.runner is not None
        inflight: dict[Future[JobResult], tuple[Any, str]] = {}
        while True:
            while len(inflight) < self.runner.executor.slots and self.charged() + len(inflight) < self.cfg.budget:
                trial, run_dir = self._ask()
                inflight[self.runner.submit(self._point(trial), "search", self.cfg.seed, run_dir)] = (trial, run_dir)
            if not inflight:
                return
            done, _ = wait(list(inflight), timeout=10.0, return_when=FIRST_COMPLETED)
            for fut in done:
                trial, run_dir = inflight.pop(fut)
                self._tell(trial, self.runner.outcome(fut, "search", self.cfg.seed, run_dir))

    def _ask(self) -> tuple[Any, str]:
        assert self.space is not None
        trial = self.study.ask()
        for rng in self.space.ranges:
            rng.suggest(trial)
        run_dir = self.run_dir / "trials" / f"{trial.number:05d}" / f"search-seed{self.cfg.seed}"
        trial.set_user_attr("run_dir", str(run_dir))
        return trial, str(run_dir)

    def _point(self, trial: Any) -> MethodPoint:
        assert self.space is not None
        return self.space.point(trial.params)

    def _tell(self, trial: Any, out: RunOutcome) -> None:
        optuna = _optuna()
        for key in ("fitness", "utility", "summary", "error", "seconds"):
            trial.set_user_attr(key, _json_ready(getattr(out, key)))
        trial.set_user_attr("charged", not out.infra)
        if out.ok:
            self.study.tell(trial, out.score)
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            if out.infra:  # lost to the infrastructure: ask the same params again, a few times
                self._infra_fault(dict(trial.params), out.error or "infrastructure fault")
                self.study.enqueue_trial(dict(trial.params))
        log.info("trial %d: %s (%d/%d trained)", trial.number, self.trial_line(out) if out.ok else f"failed: {out.error}",
                 self.charged(), self.cfg.budget)

    def trial_line(self, out: RunOutcome) -> str:
        """`fitness F` and whether the trial passes the utility floor; below it, why its score
        is lower than its fitness (the ranking score = fitness - 2 below the floor)."""
        tu = self.runner.target_utility if self.runner is not None else None
        floor = self.cfg.utility_floor
        if tu is None or out.utility is None:
            return f"fitness {_fmt(out.fitness)}"
        from ..benchmarks.base import BELOW_FLOOR_PENALTY, passes_floor

        limit = floor * float(tu)
        if passes_floor(out.utility, tu, floor):
            return f"fitness {_fmt(out.fitness)}, utility {_fmt(out.utility)} passes the floor {_fmt(limit)}"
        return (f"fitness {_fmt(out.fitness)}, but utility {_fmt(out.utility)} is below the floor {_fmt(limit)} "
                f"({floor} x the target's {_fmt(tu)}): ranked by score {_fmt(out.score)} "
                f"(fitness - {BELOW_FLOOR_PENALTY:g})")

    def _infra_fault(self, params: Mapping[str, Any], reason: str) -> None:
        """A fault that persists (every re-run of the same point lost) stops the tune, as it stops
        evolve: nothing is charged, and `--resume` continues once the infrastructure is mended."""
        from .candidate import INFRA_RETRIES

        key = repr(sorted(params.items()))
        n = self._infra_faults[key] = self._infra_faults.get(key, 0) + 1
        if n > INFRA_RETRIES:
            first = (reason.strip().splitlines() or [""])[0][:300]
            raise InfrastructureError(f"a trial was lost to an infrastructure fault {n} times (last: {first}); no "
                                      f"trial was charged; continue with: evounlearn tune --resume {self.run_dir}")
        log.warning("trial lost to an infrastructure fault (%s); asked again (%d/%d)", reason[:160], n, INFRA_RETRIES)

    # -- finalists ------------------------------------------------------------------------------
    def point_reports(self) -> list[PointReport]:
        """Every completed trial as a `PointReport` (report runs from the store), best first."""
        assert self.space is not None
        optuna = _optuna()
        done = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        stored = self.study.user_attrs.get("finalist_runs") or {}
        reports = []
        for t in sorted(done, key=lambda t: (-float(t.value), t.number)):
            a = t.user_attrs
            search = RunOutcome("search", self.cfg.seed, str(a.get("run_dir", "")), True, float(a["fitness"]),
                                a.get("utility"), float(t.value), a.get("summary"), a.get("error"))
            label = f"{t.number:05d}"
            report = [RunOutcome(**v) for k, v in sorted(stored.items()) if k.startswith(f"{label}/")]
            reports.append(PointReport(label, self.space.point(t.params), search, report))
        return reports

    def _run_finalists(self) -> None:
        assert self.runner is not None
        seeds = range(self.cfg.seed, self.cfg.seed + self.cfg.report_seeds)
        stored = dict(self.study.user_attrs.get("finalist_runs") or {})
        wanted = finalist_requests(self.point_reports(), self.cfg.finalists, seeds, self.run_dir / "trials")
        todo = [r for r in wanted if r.key not in stored]
        if todo:
            log.info("finalists: %d report-part run(s) (%d seed(s) each)", len(todo), len(seeds))

        def record(req: RunRequest, out: RunOutcome) -> None:  # stored as it comes: resumable
            if not out.infra:
                stored[req.key] = {k: _json_ready(v) for k, v in out.to_dict().items()}
                self.study.set_user_attr("finalist_runs", stored)

        self.runner.run_all(todo, on_result=record)
        if any(r.key not in stored for r in wanted):
            raise EvoUnlearnError("finalists' runs were lost to the infrastructure; continue with --resume")
        self.study.set_user_attr("finalists", sorted({r.key.split("/")[0] for r in wanted}))


def _sampler(optuna: Any, seed: int) -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant_liar is marked experimental
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _json_ready(v: Any) -> Any:
    """Optuna stores attrs as JSON: -inf / nan become None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_ready(x) for k, x in v.items()}
    return v


def storage_url(run_dir: str | Path) -> str:
    return f"sqlite:///{(Path(run_dir) / DB_NAME).resolve()}"


def default_run_dir(method: str) -> Path:
    return Path("runs") / f"tune-{method}-{time.strftime('%Y%m%d-%H%M%S')}"


# ------------------------------------------------------------------------------------------------
# outputs: leaderboard.json / .md, best_config.yaml


def side_by_side(summary: Mapping[str, Any] | None, names: Sequence[str]) -> dict[str, float | None]:
    """Forget quality and every fitness of a run's summary (``fitness_<name>``, as the candidate job
    reports them): the columns evolve's leaderboard shows too, whatever fitness was searched."""
    summary = summary or {}
    out: dict[str, float | None] = {}
    for key in ("forget_quality", *(f"fitness_{n}" for n in names)):
        v = summary.get(key)
        v = v.get("agg") if isinstance(v, Mapping) else v
        out[key] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    return out


def trial_rows(tuner: Tuner, names: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every finished trial, completed ones by search score (best first), then the failed ones;
    `names`: the benchmark's fitnesses, shown side by side with forget quality (`side_by_side`)."""
    optuna = _optuna()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    rows = []
    for t in tuner.study.get_trials(deepcopy=False, states=states):
        a, ok = t.user_attrs, t.state == optuna.trial.TrialState.COMPLETE
        rows.append({"trial": t.number, "state": t.state.name.lower(), "params": dict(t.params),
                     "score": t.value if ok else None, "fitness": a.get("fitness"), "utility": a.get("utility"),
                     **side_by_side(a.get("summary"), names),
                     "charged": bool(a.get("charged", False)), "error": a.get("error"),
                     "seconds": a.get("seconds"), "run_dir": a.get("run_dir")})
    return sorted(rows, key=lambda r: (r["score"] is None, -(r["score"] or 0.0), r["trial"]))


def best_config(tuner: Tuner, point: MethodPoint) -> dict[str, Any]:
    """What `evounlearn unlearn --method NAME --config best_config.yaml` reads: the run settings
    with the tuned loss params, lr and epochs (the run itself on the whole forget set)."""
    settings = {k: v for k, v in tuner.cfg.unlearn.items() if k not in ("loss", "train", "forget_part", "run_dir")}
    train = {**point.train, **({"epochs": point.epochs} if point.epochs is not None else {})}
    return {"method": point.method, **settings, "loss": dict(point.loss), "train": train}


def _finalist_row(r: PointReport) -> dict[str, Any]:
    mean, sd = r.report_mean_sd
    assert r.search is not None
    return {"trial": int(r.label), "search_score": r.search.score, "search_fitness": r.search.fitness,
            "report_fitness_mean": mean, "report_fitness_sd": sd, "report_runs": len(r.report),
            "report_ok": sum(1 for x in r.report if x.ok), "loss": r.point.loss, "train": r.point.train,
            "epochs": r.point.epochs}


def write_outputs(tuner: Tuner) -> dict[str, Any]:
    import json

    import yaml

    from ..benchmarks import get_benchmark
    from ..files import atomic_write_text as write_text

    assert tuner.space is not None
    reports = tuner.point_reports()
    finalist_ids = set(tuner.study.user_attrs.get("finalists") or [])
    names = list(get_benchmark(tuner.cfg.benchmark).all_fitnesses())
    data: dict[str, Any] = {
        "method": tuner.space.method, "benchmark": tuner.cfg.benchmark, "budget": tuner.cfg.budget,
        "fitness": tuner.cfg.fitness, "fitnesses": names,
        "trained": tuner.charged(), "seed": tuner.cfg.seed, "utility_floor": tuner.cfg.utility_floor,
        "target_utility": (tuner.study.user_attrs.get("target") or {}).get("target_utility"),
        "space": [asdict(r) for r in tuner.space.ranges],
        "trials": trial_rows(tuner, names),
        "finalists": [_finalist_row(r) for r in reports if r.label in finalist_ids],
        "best": None,
    }
    if reports:  # the winner: the best search-part trial (the report part stays untouched)
        best = reports[0]
        cfg = best_config(tuner, best.point)
        write_text(tuner.run_dir / "best_config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        path = tuner.run_dir / "best_config.yaml"  # absolute: the command works from any directory
        data["best"] = {"trial": int(best.label), "config": cfg, "config_path": str(path),
                        "command": f"evounlearn unlearn --benchmark {tuner.cfg.benchmark} --method {best.point.method} "
                                   f"--config {shlex.quote(str(path))}"}
    write_text(tuner.run_dir / "leaderboard.json", json.dumps(_json_ready_deep(data), indent=1, default=str))
    write_text(tuner.run_dir / "leaderboard.md", leaderboard_markdown(data))
    return data


def _json_ready_deep(v: Any) -> Any:
    if isinstance(v, list):
        return [_json_ready_deep(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_ready_deep(x) for k, x in v.items()}
    return _json_ready(v)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.{digits}f}"
    return str(v)


def leaderboard_markdown(data: Mapping[str, Any]) -> str:
    names = [r["name"] for r in data["space"]]
    # forget quality and every fitness side by side (the searched one marked), as evolve's table
    sides = ["forget_quality", *(f"fitness_{n}" for n in data.get("fitnesses") or [])]
    heads = ["forget quality", *(f"{n} fitness" + (" (searched)" if n == data.get("fitness") else "")
                                 for n in data.get("fitnesses") or [])]
    lines = [f"# tune: {data['method']} on {data['benchmark']}", "",
             f"{data['trained']} of {data['budget']} trials trained; fitness ({data.get('fitness') or 'default'}) "
             f"on the search part, score = fitness (- 2 below the utility floor {data['utility_floor']} x target "
             f"{_fmt(data['target_utility'])}).", "", "## Finalists (report part)", "",
             "| trial | search score | report fitness (mean +- sd) | runs |", "|---|---|---|---|"]
    for f in data["finalists"]:
        lines.append(f"| {f['trial']} | {_fmt(f['search_score'])} | {_fmt(f['report_fitness_mean'])} +- "
                     f"{_fmt(f['report_fitness_sd'])} | {f['report_ok']}/{f['report_runs']} |")
    lines += ["", "## Trials (by search score)", "",
              "| trial | score | fitness | utility | " + " | ".join([*heads, *names]) + " | state |",
              "|---" * (len(names) + len(heads) + 5) + "|"]
    for r in data["trials"]:
        vals = " | ".join([*(_fmt(r.get(k)) for k in sides), *(_fmt(r["params"].get(n)) for n in names)])
        lines.append(f"| {r['trial']} | {_fmt(r['score'])} | {_fmt(r['fitness'])} | {_fmt(r['utility'])} | "
                     f"{vals} | {r['state']} |")
    if data.get("best"):
        best = data["best"]
        command = best.get("command") or f"evounlearn unlearn --method {data['method']} --config {best['config_path']}"
        lines += ["", f"Best: trial {best['trial']} -> `{best['config_path']}`; unlearn and evaluate on the whole "
                  f"forget set with it: `{command}`."]
    return "\n".join(lines) + "\n"
