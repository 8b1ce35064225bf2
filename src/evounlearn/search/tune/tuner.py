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
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError, EvoUnlearnError, InfrastructureError
from ..points import JobRunner, MethodPoint, PointReport, RunOutcome, RunRequest, finalist_requests
from .config import TuneConfig
from .outputs import format_number, write_outputs
from .space import SearchSpace, build_space
from .study import DB_NAME, STUDY_NAME, import_optuna, json_ready, storage_url, tpe_sampler

if TYPE_CHECKING:
    from ...sandbox import JobResult
    from ..executors import Executor

log = logging.getLogger("evounlearn.tune")



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
            from ...benchmarks import default_cache_dir

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
        from ...config import apply_overrides, parse_overrides

        db = Path(run_dir) / DB_NAME
        if not db.is_file():
            raise ConfigError(f"{run_dir} holds no tune database ({DB_NAME}); nothing to resume")
        optuna = import_optuna()
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(run_dir))
        saved = study.user_attrs.get("config")
        if not saved:
            raise ConfigError(f"{db} holds no tune config")
        cfg = TuneConfig()
        apply_overrides(cfg, saved)
        if "fitness" not in saved:  # a tune from before `fitness` existed scored the benchmark's default
            from ...benchmarks import get_benchmark

            cfg.fitness = get_benchmark(cfg.benchmark).default_fitness_name()
        apply_overrides(cfg, overrides if isinstance(overrides, Mapping) else parse_overrides(overrides))
        if cfg.method != saved.get("method"):
            raise ConfigError(f"{run_dir} tunes {saved.get('method')}, not {cfg.method}")
        return cls(cfg, run_dir, resume=True, **kwargs)

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run (or continue) the tune to the end; returns the leaderboard data."""
        from ...benchmarks import get_benchmark

        import_optuna()  # a missing Optuna is one line, before the run directory exists
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
        from ...config import to_dict

        optuna = import_optuna()
        exists = (self.run_dir / DB_NAME).is_file()
        if exists and not self.resume:
            raise ConfigError(f"{self.run_dir} already holds a tune; continue it with --resume {self.run_dir}")
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage_url(self.run_dir),
                                    direction="maximize", load_if_exists=True)
        # Seeded TPE; on resume the seed moves on by the trials made, so that new trials do not
        # replay the first ones' random start. constant_liar: parallel trials avoid each other.
        study.sampler = tpe_sampler(optuna, self.cfg.seed + len(study.trials))
        study.set_user_attr("config", to_dict(self.cfg))
        study.set_user_attr("status", "running")
        return study

    def _runner(self) -> JobRunner:
        from ..executors import executor_options, make_executor

        limits = self.cfg.limits.to_limits()
        if self._executor is None:
            self._executor = make_executor(self.cfg.executor, self.cfg.workers, limits,
                                           **executor_options(self.cfg, self.run_dir))  # type: ignore[arg-type]
        return JobRunner(self._executor, self.cfg.benchmark, self.cfg.unlearn, limits, self.cfg.utility_floor,
                         evaluator=self.cfg.evaluator, keep_models=self.cfg.keep_models,
                         job_options=self.cfg.job_options, fitness=self.cfg.fitness, train_seeds=self.cfg.train_seeds)

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
        optuna = import_optuna()
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            if "run_dir" in t.user_attrs:
                self.study.enqueue_trial(dict(t.params))
                log.info("resume: trial %d was left running; its params are asked again", t.number)

    # -- trials ---------------------------------------------------------------------------------
    def charged(self) -> int:
        """Trials that count against the budget: completed, or failed by what the trial did."""
        optuna = import_optuna()
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
        optuna = import_optuna()
        for key in ("fitness", "utility", "summary", "error", "seconds"):
            trial.set_user_attr(key, json_ready(getattr(out, key)))
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
            return f"fitness {format_number(out.fitness)}"
        from ...benchmarks.base import BELOW_FLOOR_PENALTY, passes_floor

        limit = floor * float(tu)
        if passes_floor(out.utility, tu, floor):
            return f"fitness {format_number(out.fitness)}, utility {format_number(out.utility)} passes the floor {format_number(limit)}"
        return (f"fitness {format_number(out.fitness)}, but utility {format_number(out.utility)} is below the floor {format_number(limit)} "
                f"({floor} x the target's {format_number(tu)}): ranked by score {format_number(out.score)} "
                f"(fitness - {BELOW_FLOOR_PENALTY:g})")

    def _infra_fault(self, params: Mapping[str, Any], reason: str) -> None:
        """A fault that persists (every re-run of the same point lost) stops the tune, as it stops
        evolve: nothing is charged, and `--resume` continues once the infrastructure is mended."""
        from ..candidate import INFRA_RETRIES

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
        optuna = import_optuna()
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
                stored[req.key] = {k: json_ready(v) for k, v in out.to_dict().items()}
                self.study.set_user_attr("finalist_runs", stored)

        self.runner.run_all(todo, on_result=record)
        if any(r.key not in stored for r in wanted):
            raise EvoUnlearnError("finalists' runs were lost to the infrastructure; continue with --resume")
        self.study.set_user_attr("finalists", sorted({r.key.split("/")[0] for r in wanted}))


def default_run_dir(method: str) -> Path:
    return Path("runs") / f"tune-{method}-{time.strftime('%Y%m%d-%H%M%S')}"
