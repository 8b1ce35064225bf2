"""The EvoMU search driver: propose, validate, de-duplicate, evaluate in workers, select, report.

One `SearchDriver` runs one search in RUN_DIR; every step is written to RUN_DIR/search.sqlite
(`store.Store`) before the next one, so `evounlearn evolve --resume RUN_DIR` continues after a
crash or `kill -9`, losing at most the training runs in flight (left "running", re-queued).

Flow (both modes):
1. target: prepare the benchmark and evaluate the target model and the retain oracle on both
   parts of the forget split (a worker job); the target's utility sets the floor;
2. baselines (generation 0): each registered baseline method with `baseline_seeds` seeds on the
   search and on the report part, same training budget as the candidates; they fill idle
   workers while candidates are proposed;
3. generations:
   - `ours`: generation 0 = `ours.initial` zero-shot proposals; then generations of
     `ours.per_generation` children: operator refine / crossover / tune, parents drawn from the
     archive (elite over ALL generations: elitism) by rank with a bonus for few children;
     staged evaluation when `ours.stage1_epochs` > 0 (stage 1 after that many epochs, promotion
     by rank among the stage-1 results so far; off in configs/evolve.yaml, which says why);
     behavioural de-duplication (probe fingerprints); up to
     `ours.repair_attempts` repair requests for a rejected proposal with the rejection reason;
   - `evomu`: the paper's schedule (10 -> top-5 x 5 -> top-3 x 10 -> top-5 x 3 = 80, scaled down
     for a smaller budget), truncation selection within the latest generation, refine only, no
     staging, no de-duplication beyond identical text, no repair;
   every proposal is validated in an isolated worker (whitelist + probe tensors) before training;
4. finalists: the top `finalists` by search-part fitness are re-run with `report_seeds` seeds on
   the search part and on the held-out report part; the winner is the best finalist by mean
   search-part fitness (`select_on: search`), so the report part is used for reporting only;
5. outputs (`report.write_outputs`): leaderboard.md/.json, best_loss.py, fitness.png, lineage.

Budget: at most `budget` candidates are trained (baselines and finalists' re-runs not counted);
duplicates, rejected and unused proposals are not trained and not counted.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import statistics
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

from ..benchmarks import FAILED, compute_fitness, get_benchmark, rank_score, utility
from ..config import apply_overrides, to_dict
from ..errors import ConfigError, EvoUnlearnError
from ..sandbox import IsolatedWorker, JobResult
from .archive import Archive, choose_operator, eligible, sort_ranked, stage_cutoff, truncation
from .candidate import STAGE_SHORT
from .config import SearchConfig, evaluator_jobs, scaled_evomu_schedule
from .executor import Executor, Limits, executor_options, make_executor
from .proposers import Proposal, ProposalRequest, Proposer, RunSettings, proposer_from_section
from .store import Store
from .validation import VALIDATION_LIMITS, validate_in_worker

log = logging.getLogger("evounlearn.search")

DB_NAME = "search.sqlite"


def stable_seed(*parts: Any) -> int:
    h = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


def _first_line(text: str | None, limit: int = 300) -> str:
    if not text:
        return ""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[:limit] + "..."


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


def _job_fitness(value: Any, family: str, summary: Mapping[str, Any] | None) -> float:
    """The fitness a job reported (it may need the target's metrics), else computed here."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(float(value)):
        return float(value)
    return compute_fitness(family, summary)


def config_from_dict(data: Mapping[str, Any]) -> SearchConfig:
    cfg = SearchConfig()
    apply_overrides(cfg, dict(data))
    return cfg


class SearchDriver:
    """Runs (or resumes) one search in `run_dir`; see the module docstring."""

    def __init__(
        self,
        cfg: SearchConfig,
        run_dir: str | Path,
        *,
        proposer: Proposer | None = None,
        executor: Executor | None = None,
        resume: bool = False,
    ) -> None:
        self.cfg = cfg.check()
        self.run_dir = Path(run_dir).resolve()
        if cfg.evaluator == "real":  # pin the cache, so workers and reproductions use the same models
            from ..benchmarks import default_cache_dir

            prep = self.cfg.unlearn.setdefault("prepare", {})
            if not prep.get("cache_dir"):
                prep["cache_dir"] = str(default_cache_dir().resolve())
        self.resume = resume
        self._proposer = proposer
        self._executor = executor
        self._own_executor = executor is None
        get_benchmark(self.cfg.benchmark)  # fails early on an unknown name
        self.family, self.jobs = self.cfg.benchmark, evaluator_jobs(self.cfg)  # benchmark (name or path), jobs
        self.validator: IsolatedWorker | None = None
        self.store: Store | None = None
        self._inflight: dict[Future[JobResult], int] = {}
        self.target: dict[str, Any] = {}
        self.target_utility: float | None = None
        self._t0 = time.time()
        self._seconds_before = 0.0
        self._codes: dict[str, int] = {}
        ours = cfg.ours
        evomu = cfg.mode == "evomu"
        self.stage1_epochs = 0 if evomu else max(0, int(ours.stage1_epochs))
        self.dedup = False if evomu else bool(ours.dedup)
        self.repair_attempts = 0 if evomu else max(0, int(ours.repair_attempts))

    # -- construction helpers ---------------------------------------------------------------
    @classmethod
    def for_resume(cls, run_dir: str | Path, overrides: Mapping[str, Any] | None = None,
                   **kwargs: Any) -> SearchDriver:
        """A driver for an existing run: its saved config, with `overrides` (e.g. budget, workers)."""
        db = Path(run_dir) / DB_NAME
        if not db.is_file():
            raise ConfigError(f"{run_dir} holds no search database ({DB_NAME}); nothing to resume")
        store = Store(db)
        data = store.get_meta("config")
        store.close()
        if not data:
            raise ConfigError(f"{db} holds no search config")
        cfg = config_from_dict(data)
        if overrides:
            apply_overrides(cfg, dict(overrides))
        return cls(cfg, run_dir, resume=True, **kwargs)

    @property
    def db(self) -> Store:
        assert self.store is not None
        return self.store

    @property
    def proposer(self) -> Proposer:
        if self._proposer is None:
            self._proposer = proposer_from_section(self.cfg.proposer)
        return self._proposer

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            lim = self.cfg.limits
            self._executor = make_executor(
                self.cfg.executor, self.cfg.workers,
                Limits(lim.get("wall_s"), lim.get("cpu_s"), lim.get("memory_mb")),
                **executor_options(self.cfg, self.run_dir),
            )
        return self._executor

    def _limits(self) -> Limits:
        lim = self.cfg.limits
        return Limits(lim.get("wall_s"), lim.get("cpu_s"), lim.get("memory_mb"))

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run (or continue) the search to the end; returns the leaderboard data."""
        from .report import write_outputs

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.run_dir / DB_NAME)
        db = self.db
        saved = db.get_meta("config")
        if saved is None:
            db.set_meta("config", to_dict(self.cfg))
            db.set_meta("created", time.time())
        elif not self.resume:
            db.close()
            raise ConfigError(f"{self.run_dir} already holds a search; continue it with --resume {self.run_dir}")
        else:
            db.set_meta("config", to_dict(self.cfg))  # resumed with new overrides (budget, workers)
        self._seconds_before = float(db.get_meta("seconds", 0.0) or 0.0)
        self._t0 = time.time()
        requeued = db.requeue_running()
        if requeued:
            log.info("resume: %d run(s) left in flight were re-queued", requeued)
        for c in db.candidates("kind = 'candidate'"):
            if c.get("code"):
                self._codes.setdefault(c["code"], c["id"])
        db.set_meta("status", "running")
        try:
            self.validator = IsolatedWorker(**VALIDATION_LIMITS)
            self._target()
            self._ensure_baselines()
            if self.cfg.mode == "ours":
                self._run_ours()
            else:
                self._run_evomu()
            self._run_finalists()
            self._pump(lambda: db.pending_evaluations() == 0)
            db.set_meta("status", "done")
        except BaseException:
            self._save_seconds()
            self._close(kill=True)  # Ctrl-C or an error: stop the runs in flight now (re-queued on resume)
            raise
        self._save_seconds()
        self._close()
        data = write_outputs(self.run_dir, db)
        db.close()
        return data

    def _save_seconds(self) -> None:
        if self.store is not None:
            self.store.set_meta("seconds", self._seconds_before + time.time() - self._t0)

    def _close(self, kill: bool = False) -> None:
        if self.validator is not None:
            self.validator.close()
            self.validator = None
        if self._own_executor and self._executor is not None:
            self._executor.close(kill=kill)
            self._executor = None
        self._inflight.clear()

    # -- target and baselines -----------------------------------------------------------------
    def _target(self) -> None:
        info = self.db.get_meta("target")
        if info is None:
            log.info("preparing the benchmark and evaluating the target model (cached after the first time)")
            kw: dict[str, Any] = {"unlearn": dict(self.cfg.unlearn), "benchmark": self.cfg.benchmark,
                                  "log_file": str(self.run_dir / "target.log"), "fitness": self.cfg.fitness_name()}
            fut = self.executor.submit(self.jobs.target, kw, Limits(None, None, None))
            res = fut.result()
            if not res.ok:
                raise EvoUnlearnError(f"could not prepare the benchmark: {_first_line(res.error)}")
            info = res.value
            self.db.set_meta("target", info)
        self.target = info
        self.target_utility = info.get("target_utility")
        t = info.get("target", {}).get("search", {})
        log.info("target model: utility %.4f, fitness %.4f on the search part (floor: utility >= %.4f)",
                 self.target_utility or float("nan"), t.get("fitness", float("nan")),
                 (self.target_utility or 0.0) * self.cfg.utility_floor)

    def _ensure_baselines(self) -> None:
        from ..methods import get_method

        seeds = range(self.cfg.seed, self.cfg.seed + self.cfg.baseline_seeds)
        for entry in self.cfg.baselines:
            name, _, ep = str(entry).partition("@")  # "npo" or "npo@10" (10 epochs)
            spec = get_method(name)
            try:
                epochs = int(ep) if ep else self.cfg.default_epochs
            except ValueError:
                raise ConfigError(f"baseline {entry!r}: expected METHOD or METHOD@EPOCHS") from None
            label = spec.name if not ep else f"{spec.name}@{epochs}"
            rows = self.db.candidates("kind = 'baseline' AND label = ?", [label])
            cid = rows[0]["id"] if rows else self.db.add_candidate(
                kind="baseline", label=label, method=spec.name, generation=0, operator="baseline",
                status="validated", epochs=epochs, interface=self.cfg.interface, seed=self.cfg.seed)
            for s in seeds:
                self.db.add_evaluation(cid, "search", s, epochs=epochs, priority=1)
            for s in seeds:
                self.db.add_evaluation(cid, "report", s, epochs=epochs, priority=2)

    # -- proposing and admitting --------------------------------------------------------------
    def _next_request_index(self, g: int) -> int:
        key = f"gen{g}_requests"
        k = int(self.db.get_meta(key, 0) or 0)
        self.db.set_meta(key, k + 1)
        return k

    def _gen_trained(self, g: int) -> int:
        return self.db.count_candidates(
            "kind = 'candidate' AND generation = ? AND status IN ('validated', 'running', 'done', 'failed')", [g])

    def _budget_left(self) -> int:
        return self.cfg.budget - self.db.trained_count()

    def _parent_dict(self, c: Mapping[str, Any]) -> dict[str, Any]:
        evs = self.db.evaluations("candidate_id = ? AND part = 'search' AND status = 'done'", [c["id"]], order="seed")
        hist = (evs[0].get("epoch_losses") or evs[0].get("loss_history") or []) if evs else []
        return {"id": int(c["id"]), "code": c.get("code") or c.get("program") or "",
                "fitness": c.get("fitness_search"), "metrics": c.get("metrics") or {}, "loss_history": hist}

    def _leaderboard(self, k: int = 5) -> list[tuple[float, str]]:
        best = sort_ranked([c for c in self.db.candidates("kind = 'candidate' AND status = 'done'") if eligible(c)])[:k]
        return [(float(c["fitness_search"]), c.get("code") or "") for c in reversed(best)]

    def _request(self, kind: str, g: int, k: int, parents: list[Mapping[str, Any]] | None = None,
                 n: int = 1, **extra: Any) -> ProposalRequest:
        return ProposalRequest(
            kind=kind, n=n, interface=self.cfg.interface, benchmark=self.cfg.benchmark,
            parents=[self._parent_dict(p) for p in parents or []],
            leaderboard=self._leaderboard() if kind in ("refine", "crossover") else [],
            seed=stable_seed(self.cfg.seed, g, k, kind),
            run=RunSettings.from_train(self.cfg.unlearn.get("train"), self.cfg.default_epochs), **extra,
        )

    def _propose(self, g: int, slot: int, req: ProposalRequest, skip_known: bool = False) -> list[int]:
        """Ask the proposer; record every proposal as a candidate row (status proposed)."""
        t = time.time()
        try:
            props: list[Proposal] = self.proposer.propose(req)
        except Exception as e:  # a proposer failure costs this request only
            log.warning("proposer failed on a %s request: %s", req.kind, _first_line(str(e)))
            return []
        dt = time.time() - t
        ids: list[int] = []
        for p in props:
            if skip_known and p.code in self._codes:
                continue  # the initial proposer offering the same seed again
            parents: list[int] = []
            for x in p.parents:
                try:
                    parents.append(int(x))
                except (TypeError, ValueError):
                    continue
            # A proposal with an error (e.g. a reply without any function) is rejected as it is
            # recorded; `_admit` then asks for a repair with that reason.
            cid = self.db.add_candidate(
                kind="candidate", generation=g, slot=slot, operator=p.operator or req.kind, parents=parents,
                code=p.code, prompt=p.prompt, raw_response=p.raw_response, notes=p.notes,
                interface=self.cfg.interface, status="rejected" if p.error else "proposed", seed=self.cfg.seed,
                timings={"propose": dt / max(1, len(props))}, error=p.error or None,
            )
            ids.append(cid)
        return ids

    def _validate(self, cid: int) -> tuple[bool, str]:
        """Validate one proposal in the worker; exact/behavioural duplicates are recorded, not trained."""
        c = self.db.candidate(cid)
        assert c is not None
        if c.get("status") == "rejected":  # rejected when proposed (`_propose`: no function in the reply)
            return False, str(c.get("error") or "rejected")
        code = c.get("code") or ""
        prev = self._codes.get(code)
        if prev is not None and prev != cid:
            self.db.update_candidate(cid, status="duplicate", duplicate_of=prev, error=f"same code as #{prev}")
            log.info("  #%d %s: identical to #%d, not trained", cid, c.get("operator"), prev)
            return False, "duplicate"
        self._codes.setdefault(code, cid)
        t = time.time()
        records = validate_in_worker(code, self.cfg.interface, self.validator)
        dt = time.time() - t
        rec = next((r for r in records if r.get("name")), records[0] if records else None)
        timings = dict(c.get("timings") or {})
        timings["validate"] = dt
        slim = None if rec is None else {k: rec.get(k) for k in
                                         ("name", "ok", "reason", "epochs", "fingerprint", "uses_retain",
                                          "probe_values", "helpers")}
        if rec is None or not rec.get("ok"):
            reason = rec.get("reason", "no loss function") if rec else "no loss function"
            self.db.update_candidate(cid, status="rejected", error=reason, validation=slim, timings=timings)
            log.info("  #%d %s: rejected (%s)", cid, c.get("operator"), _first_line(reason, 120))
            return False, reason
        fp = rec.get("fingerprint")
        owner = self.db.fingerprint_owner(fp, before=cid) if (self.dedup and fp) else None
        if owner is not None:
            self.db.update_candidate(cid, status="duplicate", duplicate_of=owner, fingerprint=fp, validation=slim,
                                     timings=timings, error=f"behaves like #{owner} on the probes")
            log.info("  #%d %s: behavioural duplicate of #%d, not trained", cid, c.get("operator"), owner)
            return False, "duplicate"
        epochs = int(rec.get("epochs") or self.cfg.default_epochs)
        self.db.update_candidate(cid, status="validated", program=rec.get("program"), function=rec.get("name"),
                                 fingerprint=fp, epochs=epochs, validation=slim, timings=timings)
        self.db.add_evaluation(cid, "search", self.cfg.seed, epochs=epochs,
                               stage1_epochs=self.stage1_epochs if self.stage1_epochs < epochs else 0, priority=0)
        return True, "ok"

    def _admit(self, cid: int, room: Callable[[], bool]) -> bool:
        """Validate a proposal (and repair it when rejected); True when it will be trained."""
        if not room():
            self.db.update_candidate(cid, status="unused", error="not needed: the generation or the budget was full")
            return False
        ok, reason = self._validate(cid)
        if ok or reason == "duplicate":
            return ok
        broken = self.db.candidate(cid)
        assert broken is not None
        root = broken.get("repair_of") or cid
        parents = [p for p in (self.db.candidate(int(i)) for i in broken.get("parents") or []) if p]
        for attempt in range(1, self.repair_attempts + 1):
            req = self._request("repair", broken["generation"], stable_seed(cid, attempt), parents=parents,
                                error={"reason": reason, "code": broken.get("code") or ""})
            ids = self._propose(broken["generation"], broken.get("slot") or 0, req)
            if not ids:
                break
            for extra in ids[1:]:
                self.db.update_candidate(extra, status="unused", error="repair: only the first proposal is used")
            nid = ids[0]
            self.db.update_candidate(nid, operator="repair", parents=[int(broken["id"])], repair_of=root,
                                     repair_attempt=attempt)
            ok, reason = self._validate(nid)
            if ok:
                log.info("  #%d repaired #%d (attempt %d)", nid, root, attempt)
                return True
            if reason == "duplicate":
                return False
            broken = self.db.candidate(nid) or broken
        return False

    def _admit_leftovers(self, g: int, room: Callable[[], bool]) -> None:
        """Proposals recorded but not validated before a crash."""
        for c in self.db.candidates("kind = 'candidate' AND generation = ? AND status = 'proposed'", [g]):
            self._admit(int(c["id"]), room)

    # -- evaluation pump ----------------------------------------------------------------------
    def _cutoff(self) -> float | None:
        scores = [e["stage1_score"] for e in self.db.evaluations(
            "stage1_score IS NOT NULL AND part = 'search'") if e.get("stage1_score") is not None]
        return stage_cutoff(scores, self.cfg.ours.promote_fraction, self.cfg.ours.min_history)

    def _job_kwargs(self, c: Mapping[str, Any], e: Mapping[str, Any]) -> dict[str, Any]:
        rd = self.run_dir / "candidates" / f"{int(c['id']):05d}" / f"{e['part']}-seed{int(e['seed'])}"
        kw: dict[str, Any] = {
            "run_dir": str(rd), "seed": int(e["seed"]), "forget_part": e["part"], "unlearn": dict(self.cfg.unlearn),
            "benchmark": self.cfg.benchmark, "fitness": self.cfg.fitness_name(), "target_utility": self.target_utility,
            "utility_floor": self.cfg.utility_floor, "keep_model": self.cfg.keep_models,
            "epochs": int(e.get("epochs") or c.get("epochs") or self.cfg.default_epochs),
            **dict(self.cfg.job_options),
        }
        if c["kind"] == "baseline":
            kw["method"] = c["method"]
        else:
            kw.update(code=c.get("program") or c.get("code"), interface=c.get("interface") or self.cfg.interface,
                      function=c.get("function") or "")
        if int(e.get("stage1_epochs") or 0) > 0:
            kw.update(stage1_epochs=int(e["stage1_epochs"]), promote_cutoff=self._cutoff())
        return kw

    def _fill(self) -> None:
        while len(self._inflight) < self.executor.slots:
            queued = self.db.evaluations("status = 'queued'", order="priority, id")
            if not queued:
                return
            e = queued[0]
            c = self.db.candidate(int(e["candidate_id"]))
            assert c is not None
            kw = self._job_kwargs(c, e)
            self.db.update_evaluation(int(e["id"]), status="running", started=time.time(),
                                      attempts=int(e.get("attempts") or 0) + 1, run_dir=kw["run_dir"],
                                      promote_cutoff=kw.get("promote_cutoff"))
            if c["status"] == "validated":
                self.db.update_candidate(int(c["id"]), status="running")
            fut = self.executor.submit(self.jobs.evaluate, kw, self._limits())
            self._inflight[fut] = int(e["id"])

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
                self._record(self._inflight.pop(fut), fut)

    def _record(self, eid: int, fut: Future[JobResult]) -> None:
        try:
            res = fut.result()
        except Exception as e:  # executor-level failure
            res = JobResult(False, error=f"{type(e).__name__}: {e}")
        e = self.db.evaluation(eid)
        assert e is not None
        now = time.time()
        bench, floor, tu = self.family, self.cfg.utility_floor, self.target_utility
        fields: dict[str, Any] = {"finished": now}
        if res.ok and isinstance(res.value, Mapping):
            v = res.value
            summary = v.get("summary")
            stages = v.get("stages") or []
            if stages:
                s1 = stages[0].get("summary")
                f1 = _job_fitness(stages[0].get("fitness"), bench, s1)
                fields.update(stage1_metrics=s1, stage1_fitness=f1,
                              stage1_score=rank_score(f1, utility(bench, s1), tu, floor))
            timings = dict(v.get("timings") or {})
            timings["job_wall"] = res.wall_seconds
            timings["job_cpu"] = res.cpu_seconds
            fields.update(stage=v.get("stage"), promoted=None if v.get("promoted") is None else int(bool(v["promoted"])),
                          loss_history=v.get("loss_history"), epoch_losses=v.get("epoch_losses"),
                          timings=timings, error=v.get("error"))
            if v.get("ok") and summary:
                fit = _job_fitness(v.get("fitness"), bench, summary)
                util = utility(bench, summary)
                fields.update(status="done", metrics=summary, fitness=fit, utility=util,
                              score=rank_score(fit, util, tu, floor))
            elif v.get("ok") and v.get("stage") == STAGE_SHORT:
                fields.update(status="done")  # stopped at stage 1 (not promoted)
            else:
                fields.update(status="failed", fitness=FAILED, score=FAILED,
                              error=v.get("error") or "evaluation failed")
        else:
            why = res.killed_reason or "job failed"
            fields.update(status="failed", fitness=FAILED, score=FAILED,
                          error=f"{why}: {_first_line(res.error)}" if res.error else why,
                          timings={"job_wall": res.wall_seconds, "job_cpu": res.cpu_seconds})
        self.db.update_evaluation(eid, **fields)
        c = self._refresh(int(e["candidate_id"]))
        self._save_seconds()
        self._log_result(c, e, fields)

    def _log_result(self, c: Mapping[str, Any], e: Mapping[str, Any], f: Mapping[str, Any]) -> None:
        name = c.get("label") if c["kind"] == "baseline" else f"#{c['id']} g{c['generation']} {c.get('operator')}"
        wall = (f.get("timings") or {}).get("job_wall", 0.0)
        if f.get("status") == "failed":
            log.info("%s [%s seed %s]: FAILED (%s) %.1fs", name, e["part"], e["seed"],
                     _first_line(f.get("error"), 160), wall)
        elif f.get("fitness") is None:
            log.info("%s [%s seed %s]: stopped at stage 1 (fitness %.4f, below the cutoff) %.1fs", name, e["part"],
                     e["seed"], f.get("stage1_fitness") or float("nan"), wall)
        else:
            m = f.get("metrics") or {}
            log.info("%s [%s seed %s]: fitness %.4f  MU %.4f  forget ROUGE %.4f  Prob %.4f  %.1fs", name, e["part"],
                     e["seed"], f["fitness"], m.get("model_utility") or float("nan"),
                     m.get("forget_rouge") or float("nan"), m.get("forget_prob") or float("nan"), wall)

    def _refresh(self, cid: int) -> dict[str, Any]:
        """Recompute a candidate's aggregates (fitness per part, spread, status) from its runs."""
        evs = self.db.evaluations("candidate_id = ?", [cid], order="part, seed")
        floor, tu = self.cfg.utility_floor, self.target_utility
        fields: dict[str, Any] = {}
        for part, key in (("search", "search"), ("report", "report")):
            full = [e for e in evs if e["part"] == part and e["status"] == "done" and e.get("metrics")]
            failed = [e for e in evs if e["part"] == part and e["status"] == "failed"]
            fits = [float(e["fitness"]) for e in full] + [FAILED for _ in failed]
            mean, std = _mean_std(fits)
            utils = [float(e["utility"]) for e in full if e.get("utility") is not None]
            umean = statistics.fmean(utils) if utils else None
            fields[f"fitness_{key}"] = mean
            fields[f"fitness_{key}_std"] = std
            fields[f"utility_{key}"] = umean
            fields[f"n_{key}"] = len(fits)
            if part == "search":
                fields["score_search"] = None if mean is None else rank_score(mean, umean, tu, floor)
                fields["metrics"] = full[0]["metrics"] if full else None
                stages = [int(e.get("stage") or 0) for e in evs if e["part"] == "search" and e["status"] == "done"]
                fields["stage"] = max(stages) if stages else None
            else:
                fields["report_metrics"] = _mean_summary([e["metrics"] for e in full]) if full else None
        pending = [e for e in evs if e["status"] in ("queued", "running")]
        c = self.db.candidate(cid) or {}
        if pending:
            fields["status"] = "running" if any(e["status"] == "running" for e in pending) else c.get("status")
        elif evs:
            done = [e for e in evs if e["status"] == "done"]
            fields["status"] = "done" if done else "failed"
            errors = [e.get("error") for e in evs if e["status"] == "failed" and e.get("error")]
            fields["error"] = errors[0] if errors else None
            if not done:
                fields["fitness_search"] = FAILED
                fields["score_search"] = FAILED
        timings = dict(c.get("timings") or {})
        timings["runs_wall"] = sum(float((e.get("timings") or {}).get("job_wall", 0.0)) for e in evs)
        fields["timings"] = timings
        if c.get("status") in ("rejected", "duplicate", "unused"):
            fields.pop("status", None)
        self.db.update_candidate(cid, **fields)
        return self.db.candidate(cid) or {}

    # -- modes --------------------------------------------------------------------------------
    def _fill_initial(self, g: int, target: int) -> None:
        """Generation 0: zero-shot proposals (the offline proposer starts with the literature seeds)."""
        def room() -> bool:
            return self._gen_trained(g) < target and self._budget_left() > 0

        self._admit_leftovers(g, room)
        tries = 0
        while room() and tries < self.cfg.max_proposals_per_slot:
            tries += 1
            proposed = self.db.count_candidates("kind = 'candidate' AND generation = ? AND repair_of IS NULL", [g])
            need = target - self._gen_trained(g)
            k = self._next_request_index(g)
            ids = self._propose(g, k, self._request("initial", g, k, n=proposed + need), skip_known=True)
            if not ids:
                continue
            for cid in ids:
                self._admit(cid, room)

    def _pump_generation(self, g: int) -> None:
        self._pump(lambda: self.db.pending_evaluations(generation=g, kind="candidate") == 0)
        best = self._best()
        if best is not None:
            log.info("generation %d done: %d trained so far (budget %d); best #%d fitness %.4f (MU %.4f)", g,
                     self.db.trained_count(), self.cfg.budget, best["id"], best["fitness_search"],
                     best.get("utility_search") or float("nan"))

    def _best(self) -> dict[str, Any] | None:
        ranked = sort_ranked([c for c in self.db.candidates("kind = 'candidate' AND status = 'done'") if eligible(c)])
        return dict(ranked[0]) if ranked else None

    def _run_ours(self) -> None:
        o = self.cfg.ours
        g = 0
        while True:
            if not self.db.get_meta(f"gen{g}_filled"):
                if g == 0:
                    self._fill_initial(0, min(o.initial, self.cfg.budget))
                else:
                    self._fill_ours(g)
                self.db.set_meta(f"gen{g}_filled", True)
            self._pump_generation(g)
            if self._budget_left() <= 0:
                return
            if self._gen_trained(g) == 0 and g > 0:
                log.warning("generation %d produced no trainable candidate; stopping", g)
                return
            g += 1

    def _fill_ours(self, g: int) -> None:
        o = self.cfg.ours
        target = min(o.per_generation, self._budget_left() + self._gen_trained(g))

        def room() -> bool:
            return self._gen_trained(g) < target and self._budget_left() > 0

        self._admit_leftovers(g, room)
        tries = 0
        while room() and tries < target * self.cfg.max_proposals_per_slot:
            tries += 1
            k = self._next_request_index(g)
            rng = random.Random(stable_seed(self.cfg.seed, "ours", g, k))
            archive = Archive.build(self.db.candidates("kind = 'candidate'"), o.archive_size, o.half_life,
                                    o.child_penalty)
            if len(archive) == 0:
                req = self._request("initial", g, k, n=1 + self.db.count_candidates(
                    "kind = 'candidate' AND repair_of IS NULL"))
                ids = self._propose(g, k, req, skip_known=True)
                for extra in ids[1:]:
                    self.db.update_candidate(extra, status="unused", error="not needed")
                ids = ids[:1]
            else:
                op = choose_operator(rng, o.p_refine, o.p_crossover, o.p_tune, len(archive))
                parents = archive.choose(rng, 2 if op == "crossover" else 1)
                if op == "crossover" and len(parents) < 2:
                    op = "refine"
                ids = self._propose(g, k, self._request(op, g, k, parents=parents))
            for cid in ids:
                self._admit(cid, room)

    def _run_evomu(self) -> None:
        e = self.cfg.evomu
        sched = scaled_evomu_schedule(self.cfg.budget, e.schedule, e.full_budget)
        self.db.set_meta("evomu_schedule", [list(x[:2]) + [x[2]] for x in sched])
        for g, (size, k, children) in enumerate(sched):
            if not self.db.get_meta(f"gen{g}_filled"):
                if g == 0:
                    self._fill_initial(0, size)
                else:
                    self._fill_evomu(g, size, k, children)
                self.db.set_meta(f"gen{g}_filled", True)
            self._pump_generation(g)
            if self._budget_left() <= 0:
                return

    def _fill_evomu(self, g: int, size: int, k: int, children: list[int]) -> None:
        cands = self.db.candidates("kind = 'candidate'")
        prev = max((c["generation"] for c in cands if eligible(c) and c["generation"] < g), default=None)
        parents = truncation(cands, prev, k) if prev is not None else []
        if not parents:
            log.warning("generation %d: no parent with a fitness in the previous generations; skipped", g)
            return
        if len(parents) < k:  # spread the generation's size over the parents there are
            base, extra = divmod(size, len(parents))
            children = [base + (1 if i < extra else 0) for i in range(len(parents))]

        for i, p in enumerate(parents):
            want = children[i]

            def room(pid: int = int(p["id"]), want: int = want) -> bool:
                got = self.db.count_candidates(
                    "kind = 'candidate' AND generation = ? AND parents = ? AND "
                    "status IN ('validated', 'running', 'done', 'failed')", [g, f"[{pid}]"])
                return got < want and self._budget_left() > 0

            tries = 0
            while room() and tries < self.cfg.max_proposals_per_slot:
                tries += 1
                got = self.db.count_candidates(
                    "kind = 'candidate' AND generation = ? AND parents = ? AND "
                    "status IN ('validated', 'running', 'done', 'failed')", [g, f"[{int(p['id'])}]"])
                kreq = self._next_request_index(g)
                ids = self._propose(g, kreq, self._request("refine", g, kreq, parents=[p], n=want - got))
                for cid in ids:
                    self._admit(cid, room)

    # -- finalists ----------------------------------------------------------------------------
    def _run_finalists(self) -> None:
        ids = self.db.get_meta("finalists")
        if ids is not None and self.db.get_meta("finalists_at") != self.db.trained_count():
            ids = None  # resumed with a larger budget: new candidates may enter the finals
        if ids is None:
            # Wait for every candidate's search-part result first (none is in flight here normally).
            self._pump(lambda: self.db.pending_evaluations(kind="candidate") == 0)
            ranked = sort_ranked([c for c in self.db.candidates("kind = 'candidate' AND status = 'done'")
                                  if eligible(c)])
            ids = [int(c["id"]) for c in ranked[: self.cfg.finalists]]
            self.db.set_meta("finalists", ids)
            self.db.set_meta("finalists_at", self.db.trained_count())
        seeds = range(self.cfg.seed, self.cfg.seed + self.cfg.report_seeds)
        for cid in ids:
            c = self.db.candidate(cid) or {}
            for s in seeds:
                self.db.add_evaluation(cid, "search", s, epochs=c.get("epochs"), priority=0)
                self.db.add_evaluation(cid, "report", s, epochs=c.get("epochs"), priority=0)
            self._refresh(cid)
        if ids:
            log.info("finalists %s: re-running with %d seed(s) on the search and report parts",
                     ", ".join(f"#{i}" for i in ids), len(seeds))
        self._pump(lambda: self.db.pending_evaluations(candidate_ids=ids) == 0)
        self.db.set_meta("winner", self._winner(ids))

    def _winner(self, ids: list[int]) -> int | None:
        fin = [self.db.candidate(i) for i in ids]
        fin = [c for c in fin if c and c.get("fitness_search") is not None]
        if not fin:
            return None
        floor, tu = self.cfg.utility_floor, self.target_utility
        if self.cfg.select_on == "report":
            def key(c: Mapping[str, Any]) -> float:
                return rank_score(c.get("fitness_report"), c.get("utility_report"), tu, floor)
        else:
            def key(c: Mapping[str, Any]) -> float:
                return float(c.get("score_search") if c.get("score_search") is not None else FAILED)
        return int(max(fin, key=lambda c: (key(c), -int(c["id"])))["id"])
