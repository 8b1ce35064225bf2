"""Running fixed (method, params) points through the candidate job: `JobRunner` submits one
`search.candidate.evaluate_candidate` job per point and reads it with the one reader
(`candidate.JobOutcome`), retrying infrastructure faults; `evaluate_points` scores a list of points
on the search part and re-runs the best `finalists` with report seeds on the report part. The
tuner's trials and finalists run here; any fixed list of points (a control arm) can too."""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..benchmarks.base import FAILED
from ..errors import EvoUnlearnError
from . import seed_mean

if TYPE_CHECKING:
    from ..sandbox import JobResult, Limits
    from .executors import Executor

log = logging.getLogger("evounlearn.tune")

REAL_JOBS = "evounlearn.search.candidate"

# ------------------------------------------------------------------------------------------------
# running fixed points: the reusable part (tune's trials and finalists, evolve's controls)


@dataclass(frozen=True)
class MethodPoint:
    """One (method, params) point: loss params, train options, epochs (None = the defaults')."""

    method: str
    loss: dict[str, Any]
    train: dict[str, Any]
    epochs: int | None = None


@dataclass
class RunOutcome:
    """One run of a point (one part, one seed)."""

    part: str
    seed: int
    run_dir: str
    ok: bool = False
    fitness: float = FAILED
    utility: float | None = None
    score: float = FAILED  # rank_score: fitness, minus 2 below the utility floor, -inf failed
    summary: dict[str, Any] | None = None
    error: str | None = None
    infra: bool = False  # lost to the infrastructure: retry without charging the point
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JobRunner:
    """Submits points as candidate jobs (method=NAME) through an Executor and scores the results
    with the benchmark's fitness and the utility floor, exactly as evolve scores its runs."""

    executor: Executor
    benchmark: str
    unlearn: Mapping[str, Any]
    limits: Limits | None  # of one run (None: the executor's)
    utility_floor: float = 0.9
    target_utility: float | None = None
    evaluator: str = "real"
    keep_models: bool = False
    job_options: Mapping[str, Any] = field(default_factory=dict)
    fitness: str = ""  # the benchmark's fitness the jobs score with ("" = its default)
    train_seeds: int = 1  # trainings per job on shared seeds, scored by their mean

    @property
    def module(self) -> str:
        return REAL_JOBS if self.evaluator == "real" else self.evaluator

    def kwargs(self, point: MethodPoint, part: str, seed: int, run_dir: str | Path) -> dict[str, Any]:
        unlearn = dict(self.unlearn)
        unlearn["loss"] = {**dict(unlearn.get("loss") or {}), **point.loss}
        unlearn["train"] = {**dict(unlearn.get("train") or {}), **point.train}
        return {"run_dir": str(run_dir), "method": point.method, "epochs": point.epochs, "seed": int(seed),
                "forget_part": part, "unlearn": unlearn, "benchmark": self.benchmark,
                "target_utility": self.target_utility, "utility_floor": self.utility_floor,
                "keep_model": self.keep_models, "fitness": self.fitness,
                **seed_mean.job_option(self.train_seeds), **dict(self.job_options)}

    def submit(self, point: MethodPoint, part: str, seed: int, run_dir: str | Path) -> Future[JobResult]:
        return self.executor.submit(f"{self.module}:evaluate_candidate", self.kwargs(point, part, seed, run_dir),
                                    self.limits)

    def target_info(self, log_file: str | Path) -> dict[str, Any]:
        """The target model's metrics (the utility floor's reference), from the target job."""
        from ..sandbox import Limits

        kw = {"unlearn": dict(self.unlearn), "benchmark": self.benchmark, "log_file": str(log_file),
              "fitness": self.fitness}
        from .candidate import JobOutcome

        out = JobOutcome.from_future(self.executor.submit(f"{self.module}:target_info", kw, Limits(None, None, None)),
                                     candidate_job=False)
        if out.error is not None or not isinstance(out.value, Mapping):
            raise EvoUnlearnError(f"could not prepare the benchmark: {out.error or 'no target information'}")
        self.target_utility = out.value.get("target_utility")
        return dict(out.value)

    def outcome(self, fut: Future[JobResult], part: str, seed: int, run_dir: str | Path) -> RunOutcome:
        """A finished job as a scored run, read through the one reader (`candidate.JobOutcome`):
        an infrastructure fault, the executor's or the job's own, comes back `infra` (retried)."""
        from ..benchmarks.base import get_benchmark, rank_score
        from .candidate import JobOutcome

        job = JobOutcome.from_future(fut)
        out = RunOutcome(part, int(seed), str(run_dir), infra=job.infra, seconds=job.wall_seconds)
        r = job.result
        if r is None or job.infra:
            out.error = job.error or (r.error if r is not None else None) or "job failed"
            return out
        out.summary, out.error = r.summary, r.error
        out.fitness = float(r.fitness) if math.isfinite(r.fitness) else FAILED
        out.utility = r.utility(None, get_benchmark(self.benchmark).fitness_spec(self.fitness).utility_key)
        out.ok = r.ok and math.isfinite(out.fitness)
        out.score = rank_score(out.fitness, out.utility, self.target_utility, self.utility_floor)
        return out

    def run_all(self, requests: Sequence[RunRequest],
                on_result: Callable[[RunRequest, RunOutcome], None] | None = None) -> list[RunOutcome]:
        """Run every request (the executor's slots in parallel); results in the requests' order."""
        futures = {self.submit(r.point, r.part, r.seed, r.run_dir): i for i, r in enumerate(requests)}
        results: list[RunOutcome | None] = [None] * len(requests)
        for fut in as_completed(futures):
            r = requests[futures[fut]]
            results[futures[fut]] = out = self.outcome(fut, r.part, r.seed, r.run_dir)
            if on_result is not None:
                on_result(r, out)
        return [r for r in results if r is not None]


@dataclass(frozen=True)
class RunRequest:
    """One run to do: a point on a part with a seed, in its own folder."""

    key: str  # a stable name (for the caller's records): e.g. "trial3/report-seed1"
    point: MethodPoint
    part: str
    seed: int
    run_dir: str


@dataclass
class PointReport:
    """A point's search-part result and, for a finalist, its report-part mean and sd."""

    label: str
    point: MethodPoint
    search: RunOutcome | None
    report: list[RunOutcome] = field(default_factory=list)

    @property
    def report_mean_sd(self) -> tuple[float | None, float | None]:
        return mean_sd([r.fitness for r in self.report if r.ok])


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def finalist_requests(reports: Sequence[PointReport], finalists: int, seeds: Sequence[int],
                      run_dir: str | Path) -> list[RunRequest]:
    """The report-part runs of the best `finalists` (by search score) points."""
    ranked = sorted((r for r in reports if r.search is not None and r.search.ok),
                    key=lambda r: -float(r.search.score))  # type: ignore[union-attr]
    return [RunRequest(f"{r.label}/report-seed{s}", r.point, "report", int(s),
                       str(Path(run_dir) / r.label / f"report-seed{s}"))
            for r in ranked[: max(0, finalists)] for s in seeds]


def evaluate_points(runner: JobRunner, points: Mapping[str, MethodPoint], *, seed: int, finalists: int,
                    report_seeds: int, run_dir: str | Path) -> list[PointReport]:
    """Evaluate fixed (label -> point) jobs on the search part with `seed`, then re-run the best
    `finalists` with `report_seeds` seeds on the report part; sorted by search score."""
    requests = [RunRequest(f"{label}/search-seed{seed}", p, "search", seed,
                           str(Path(run_dir) / label / f"search-seed{seed}")) for label, p in points.items()]
    reports = {label: PointReport(label, p, None) for label, p in points.items()}
    for req, out in zip(requests, runner.run_all(requests)):
        reports[req.key.split("/")[0]].search = out
    seeds = range(seed, seed + report_seeds)
    for req, out in zip(fin := finalist_requests(list(reports.values()), finalists, seeds, run_dir),
                        runner.run_all(fin)):
        reports[req.key.split("/")[0]].report.append(out)
    return sorted(reports.values(), key=lambda r: -(r.search.score if r.search else FAILED))
