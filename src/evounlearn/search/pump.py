"""The evaluation pump of a search: keep the executor's workers busy with the queued training runs
(by priority), record each finished run in the store, and recompute its candidate's aggregates
(fitness per part, spread, utility, status) from its runs.

A run lost to the infrastructure (`JobOutcome.infra`) is never charged to its candidate: it goes
back to the queue, and after `INFRA_RETRIES` faults the search stops with `InfrastructureError`.

`EvaluationPump` is a part of `SearchDriver` (its base class): the attributes declared below are
the driver's, set in its constructor.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

from ..benchmarks import FAILED, compute_fitness, get_benchmark, rank_score
from ..errors import EvoUnlearnError, InfrastructureError
from ..sandbox import JobResult
from . import seed_mean
from .archive import lower_bound, stage_cutoff
from .candidate import INFRA_RETRIES, STAGE_SHORT, JobOutcome, first_line
from .config import EvaluatorJobs, SearchConfig
from .executors import Executor, Limits
from .store import PENDING_STATUSES, CandidateRow, EvaluationRow, Store

log = logging.getLogger("evounlearn.search")


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    if any(not math.isfinite(v) for v in values):
        return FAILED, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) >= 2 else None)


def _mean_summary(summaries: list[Mapping[str, Any]]) -> dict[str, Any]:
    if not summaries:
        return {}
    out: dict[str, Any] = {}
    for k in summaries[0]:
        vals = [s.get(k) for s in summaries]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[k] = statistics.fmean(float(v) for v in vals)
    return out


def _job_fitness(value: Any, benchmark: str, summary: Mapping[str, Any] | None, fitness: str) -> float:
    """The fitness a job reported (it may need the target's metrics), else the search's chosen
    fitness `fitness` computed here (never the benchmark's default: it would rank on another scale)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(float(value)):
        return float(value)
    return compute_fitness(benchmark, summary, fitness=fitness)


class EvaluationPump:
    """Runs the queued evaluations of a search and folds their results into the candidates."""

    # the driver's, set in its constructor (`db`, `executor`: its properties)
    cfg: SearchConfig
    run_dir: Path
    jobs: EvaluatorJobs
    target_utility: float | None
    _inflight: dict[Future[JobResult], int]
    _infra_faults: dict[int, int]  # evaluation id -> infrastructure faults in this session

    @property
    def db(self) -> Store:
        raise NotImplementedError

    @property
    def executor(self) -> Executor:
        raise NotImplementedError

    def _limits(self) -> Limits:
        raise NotImplementedError

    def _save_seconds(self) -> None:
        raise NotImplementedError

    def pump_generation(self, g: int) -> None:
        self._pump(lambda: self.db.pending_count(generation=g, kind="candidate") == 0)
        best = self.best()
        if best is not None:
            log.info("generation %d done: %d trained so far (budget %d); best #%d fitness %.4f (MU %.4f)", g,
                     self.db.trained_count(), self.cfg.budget, best.id, best.fitness_search,
                     best.utility_search if best.utility_search is not None else float("nan"))

    def pump_candidates(self, ids: Sequence[int]) -> None:
        """Run the queued runs until those of these candidates are all done."""
        wanted = list(ids)
        self._pump(lambda: self.db.pending_count(candidate_ids=wanted) == 0)

    def refresh(self, cid: int) -> CandidateRow:
        """A candidate's aggregates recomputed from its runs (after queueing one more)."""
        return self._refresh(cid)

    def _cutoff(self) -> float | None:
        return stage_cutoff(self.db.stage1_scores(), self.cfg.ours.promote_fraction, self.cfg.ours.min_history)

    def _job_kwargs(self, c: CandidateRow, e: EvaluationRow) -> dict[str, Any]:
        rd = self.run_dir / "candidates" / f"{c.id:05d}" / f"{e.part}-seed{e.seed}"
        kw: dict[str, Any] = {
            "run_dir": str(rd), "seed": e.seed, "forget_part": e.part, "unlearn": dict(self.cfg.unlearn),
            "benchmark": self.cfg.benchmark, "fitness": self.cfg.fitness_name(),
            "target_utility": self.target_utility,
            "utility_floor": self.cfg.utility_floor, "keep_model": self.cfg.keep_models,
            "epochs": int(e.epochs or c.epochs or self.cfg.default_epochs),
            **seed_mean.job_option(self.cfg.train_seeds),
            **dict(self.cfg.job_options),
        }
        if c.kind == "baseline":
            kw["method"] = c.method
        else:
            kw.update(code=c.program or c.code, interface=c.interface or self.cfg.interface,
                      function=c.function or "")
        if e.stage1_epochs > 0:
            kw.update(stage1_epochs=e.stage1_epochs, promote_cutoff=self._cutoff())
        return kw

    def _fill(self) -> None:
        while len(self._inflight) < self.executor.slots:
            queued = self.db.queued_evaluations()
            if not queued:
                return
            e = queued[0]
            c = self.db.candidate(e.candidate_id)
            assert c is not None
            kw = self._job_kwargs(c, e)
            self.db.start_evaluation(e.id, kw["run_dir"], kw.get("promote_cutoff"))
            if c.status == "validated":
                self.db.update_candidate(c.id, status="running")
            fut = self.executor.submit(self.jobs.evaluate, kw, self._limits())
            self._inflight[fut] = e.id

    def _pump(self, done: Callable[[], bool]) -> None:
        """Keep the workers busy (queued runs by priority) until `done()`."""
        while True:
            self._fill()
            if done():
                return
            if not self._inflight:
                if done():
                    return
                raise EvoUnlearnError("search stalled: nothing is queued or running")
            finished, _ = wait(list(self._inflight), timeout=10.0, return_when=FIRST_COMPLETED)
            for fut in finished:
                self._record(self._inflight.pop(fut), JobOutcome.from_future(fut))

    def _record(self, eid: int, out: JobOutcome) -> None:
        e = self.db.evaluation(eid)
        assert e is not None
        if out.infra:
            self._infra_fault(e, out.error or "infrastructure fault")
            return
        self.db.update_evaluation(eid, **self._result_columns(out))
        c = self._refresh(e.candidate_id)
        self._save_seconds()
        after = self.db.evaluation(eid)
        assert after is not None
        self._log_result(c, after)

    def _result_columns(self, out: JobOutcome) -> dict[str, Any]:
        """The evaluation's columns from a finished job (the candidate's own success or failure)."""
        bench, floor, tu = self.cfg.benchmark, self.cfg.utility_floor, self.target_utility
        cols: dict[str, Any] = {"finished": time.time()}
        r = out.result
        if r is None:  # the job itself failed: a crash, a limit, an exception in the worker
            return {**cols, "status": "failed", "fitness": FAILED, "score": FAILED, "error": out.error,
                    "timings": {"job_wall": out.wall_seconds, "job_cpu": out.cpu_seconds}}
        # the job names the fitness it scored and that fitness's utility key; a job that does not
        # (an older or fake evaluator) is read with the search's own choice
        fitness = r.fitness_name or self.cfg.fitness
        key = get_benchmark(bench).fitness_spec(fitness).utility_key
        if r.stages:
            s1 = r.stages[0].summary
            f1 = _job_fitness(r.stages[0].fitness, bench, s1, fitness)
            cols.update(stage1_metrics=s1, stage1_fitness=f1,
                        stage1_score=rank_score(f1, r.utility(s1, key), tu, floor))
        timings = {**r.timings, "job_wall": out.wall_seconds, "job_cpu": out.cpu_seconds}
        cols.update(stage=r.stage, promoted=r.promoted, loss_history=r.loss_history, epoch_losses=r.epoch_losses,
                    timings=timings, error=r.error)
        if r.ok and r.summary:
            fit = _job_fitness(r.fitness, bench, r.summary, fitness)
            util = r.utility(None, key)
            cols.update(status="done", metrics=r.summary, fitness=fit, utility=util, score=rank_score(fit, util, tu, floor))
        elif r.ok and r.stage == STAGE_SHORT:
            cols.update(status="done")  # stopped at stage 1 (not promoted)
        else:
            cols.update(status="failed", fitness=FAILED, score=FAILED, error=r.error or "evaluation failed")
        return cols

    def _infra_fault(self, e: EvaluationRow, reason: str) -> None:
        """A run lost to the infrastructure: back to the queue, uncharged; stop when it persists."""
        n = self._infra_faults[e.id] = self._infra_faults.get(e.id, 0) + 1
        self.db.requeue_evaluation(e.id)
        self._refresh(e.candidate_id)
        where = f"run #{e.id} (candidate #{e.candidate_id}, {e.part} seed {e.seed})"
        if n > INFRA_RETRIES:
            raise InfrastructureError(
                f"{where} was lost to an infrastructure fault {n} times (last: {first_line(reason, 500)}); "
                f"no candidate was charged; continue with: evounlearn evolve --resume {self.run_dir}")
        log.warning("%s lost to an infrastructure fault (%s); re-queued (%d/%d)", where, first_line(reason, 160),
                    n, INFRA_RETRIES)

    def _log_result(self, c: CandidateRow, e: EvaluationRow) -> None:
        name = c.label if c.kind == "baseline" else f"#{c.id} g{c.generation} {c.operator}"
        if e.status == "failed":
            log.info("%s [%s seed %s]: FAILED (%s) %.1fs", name, e.part, e.seed, first_line(e.error, 160), e.job_wall)
        elif e.fitness is None:
            log.info("%s [%s seed %s]: stopped at stage 1 (fitness %.4f, below the cutoff) %.1fs", name, e.part,
                     e.seed, e.stage1_fitness if e.stage1_fitness is not None else float("nan"), e.job_wall)
        else:
            m = e.metrics or {}

            def num(key: str) -> float:  # 0.0 is a value (a model that forgot everything), None is not
                v = m.get(key)
                return float(v) if isinstance(v, (int, float)) else float("nan")

            log.info("%s [%s seed %s]: fitness %.4f  MU %.4f  forget ROUGE %.4f  Prob %.4f  %.1fs", name, e.part,
                     e.seed, e.fitness, num("model_utility"), num("forget_rouge"), num("forget_prob"), e.job_wall)

    def _refresh(self, cid: int) -> CandidateRow:
        """Recompute a candidate's aggregates (fitness per part, spread, status) from its runs."""
        evs = self.db.evaluations_of(cid)
        c = self.db.candidate(cid)
        assert c is not None
        cols: dict[str, Any] = {}
        for part in ("search", "report"):
            cols.update(self._part_aggregates(part, [e for e in evs if e.part == part]))
        pending = [e for e in evs if e.status in PENDING_STATUSES]
        if pending:
            running = any(e.status == "running" for e in pending)
            # a run put back in the queue (infrastructure fault) takes its candidate back to validated
            cols["status"] = "running" if running else ("validated" if c.status == "running" else c.status)
        elif evs:
            done = [e for e in evs if e.status == "done"]
            cols["status"] = "done" if done else "failed"
            errors = [e.error for e in evs if e.status == "failed" and e.error]
            cols["error"] = errors[0] if errors else None
            if not done:
                cols["fitness_search"] = FAILED
                cols["score_search"] = FAILED
        cols["timings"] = {**c.timings, "runs_wall": sum(e.job_wall for e in evs)}
        if c.status in ("rejected", "duplicate", "unused"):
            cols.pop("status", None)
        self.db.update_candidate(cid, **cols)
        out = self.db.candidate(cid)
        assert out is not None
        return out

    def _part_aggregates(self, part: str, evs: list[EvaluationRow]) -> dict[str, Any]:
        """fitness_<part> (mean), its spread, utility and number of runs, from one part's runs."""
        full = [e for e in evs if e.status == "done" and e.metrics]
        fits = [float(e.fitness if e.fitness is not None else FAILED) for e in full]
        fits += [FAILED for e in evs if e.status == "failed"]
        mean, std = _mean_std(fits)
        utils = [float(e.utility) for e in full if e.utility is not None]
        umean = statistics.fmean(utils) if utils else None
        cols: dict[str, Any] = {f"fitness_{part}": mean, f"fitness_{part}_std": std, f"utility_{part}": umean,
                                f"n_{part}": len(fits)}
        if part == "search":
            # n = trainings (runs x train_seeds): the lower bound's scale is one training's sd
            trainings = len(fits) * max(1, int(self.cfg.train_seeds))
            ranked = None if mean is None else lower_bound(mean, trainings, self.cfg.rank_noise_sd())
            cols["score_search"] = None if ranked is None else rank_score(ranked, umean, self.target_utility,
                                                                          self.cfg.utility_floor)
            # the mean over seeds: what a directed mutation reads is as steady as the ranking
            cols["metrics"] = (_mean_summary([e.metrics for e in full if e.metrics]) if len(full) > 1
                               else full[0].metrics) if full else None
            stages = [int(e.stage or 0) for e in evs if e.status == "done"]
            cols["stage"] = max(stages) if stages else None
        else:
            cols["report_metrics"] = _mean_summary([e.metrics for e in full if e.metrics]) if full else None
        return cols
