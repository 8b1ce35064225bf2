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
3. generations: the mode's loop (`search.modes`, chosen by `mode` in a name-keyed registry):
   - `ours` (`modes/ours.py`): archive with elitism, refine / crossover / tune, staged
     evaluation, behavioural de-duplication, repair of rejected proposals;
   - `evomu` (`modes/evomu.py`): the paper's schedule, truncation selection, refine only;
   every proposal is validated in an isolated worker (whitelist + probe tensors) before training;
   this module holds what both modes share: proposing (`_request` / `_propose`), admitting
   (validation, de-duplication, repair) and generation 0 (`fill_initial`); the evaluation pump
   (queued runs to the workers, results into the store) is `pump.py`;
4. finalists: the top `finalists` by search-part fitness are re-run with `report_seeds` seeds on
   the search part and on the held-out report part; the winner is the best finalist by mean
   search-part fitness (`select_on: search`), so the report part is used for reporting only;
5. outputs (`report.write_outputs`): leaderboard.md/.json, best_loss.py, fitness.png, lineage.

Budget: at most `budget` candidates are trained (baselines and finalists' re-runs not counted);
duplicates, rejected and unused proposals are not trained and not counted (`store.TRAINED_STATUSES`).

Infrastructure faults (a JobResult or candidate result with `infra=True`: a lost node or worker,
a missing prepared artifact; a worker that cannot start) are never charged to a candidate: the
run goes back to the queue and is retried up to `INFRA_RETRIES` times; if the fault persists the
search stops with `InfrastructureError` (status "interrupted"), no candidate's status or fitness
changed, and `--resume` continues it.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..benchmarks import FAILED, get_benchmark, rank_score
from ..config import apply_overrides, to_dict
from ..errors import ConfigError, EvoUnlearnError, InfrastructureError
from ..sandbox import CandidateRecord, IsolatedWorker, JobResult
from .archive import eligible, sort_ranked, stable_seed
from .candidate import INFRA_RETRIES, JobOutcome, first_line, known_fields
from .config import SearchConfig, config_from_dict, evaluator_jobs
from .executors import Executor, Limits, executor_options, make_executor
from .modes import get_mode
from .proposers import (
    Proposal,
    ProposalRequest,
    Proposer,
    ReferenceLevels,
    RunSettings,
    proposer_from_section,
)
from .pump import EvaluationPump
from .store import DB_NAME, CandidateRow, Store, ValidationRecord
from .validation import VALIDATION_CONFINEMENT, VALIDATION_LIMITS, validate_in_worker

__all__ = ["DB_NAME", "INFRA_RETRIES", "JobOutcome", "SearchDriver", "config_from_dict", "stable_seed"]

log = logging.getLogger("evounlearn.search")



def _sandbox_record(rec: Mapping[str, Any]) -> CandidateRecord:
    """A validation record from the worker (a `sandbox.CandidateRecord` as a dict), typed."""
    data = {"name": "", "source": "", "lineno": 0, **known_fields(CandidateRecord, rec)}
    return CandidateRecord(**data)


class SearchDriver(EvaluationPump):
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
        # pin the resolved fitness, so that a resumed search (or a later default) never switches it
        self.cfg.fitness = self.cfg.fitness_name()
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
        self.jobs = evaluator_jobs(self.cfg)
        self.validator: IsolatedWorker | None = None
        self.store: Store | None = None
        self._inflight: dict[Future[JobResult], int] = {}
        self._infra_faults: dict[int, int] = {}  # evaluation id -> infrastructure faults in this session
        self.target: dict[str, Any] = {}
        self.target_utility: float | None = None
        self._t0 = time.time()
        self._seconds_before = 0.0
        self._codes: dict[str, int] = {}
        self.mode = get_mode(cfg.control or cfg.mode)  # a control arm replaces the mode's loop
        policy = self.mode.policy(self.cfg)
        self.stage1_epochs = policy.stage1_epochs
        self.dedup = policy.dedup
        self.repair_attempts = policy.repair_attempts

    # -- construction helpers ---------------------------------------------------------------
    @classmethod
    def for_resume(cls, run_dir: str | Path, overrides: Mapping[str, Any] | None = None,
                   **kwargs: Any) -> SearchDriver:
        """A driver for an existing run: its saved config, with `overrides` (e.g. budget, workers)."""
        if not (Path(run_dir) / DB_NAME).is_file():
            raise ConfigError(f"{run_dir} holds no search database ({DB_NAME}); nothing to resume")
        store = Store.open_run(run_dir)
        data = store.get_meta("config")
        store.close()
        if not data:
            raise ConfigError(f"{store.path} holds no search config")
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
        return self._ensure_executor()

    def _ensure_executor(self) -> Executor:
        """The executor, built on first use (its workers start on their first job)."""
        if self._executor is None:
            self._executor = make_executor(self.cfg.executor, self.cfg.workers, self._limits(),
                                           **executor_options(self.cfg, self.run_dir))
        return self._executor

    def _limits(self) -> Limits:
        return self.cfg.limits.to_limits()

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run (or continue) the search to the end; returns the leaderboard data."""
        from .report import write_outputs

        db = self._open()
        try:
            # the executor first: its workers' fork server then starts with the benchmark's
            # heavy modules imported (`worker_preload`), which the validator's workers share
            self._ensure_executor()
            self.validator = IsolatedWorker(**VALIDATION_LIMITS, **VALIDATION_CONFINEMENT)
            self._target()
            self._ensure_baselines()
            self.mode(self).run_generations()
            self._run_finalists()
            self._pump(lambda: db.pending_count() == 0)
            db.set_meta("status", "done")
        except BaseException as exc:
            self._save_seconds()
            self._close(kill=True)  # Ctrl-C or an error: stop the runs in flight now
            self._stopped(exc)
            raise
        self._save_seconds()
        self._close()
        data = write_outputs(self.run_dir, db)
        db.close()
        return data

    def _open(self) -> Store:
        """Open (or create) the run's database; on resume, re-queue the runs left in flight."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.store = db = Store(self.run_dir / DB_NAME)
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
        for c in db.candidates(kind="candidate"):
            if c.code:
                self._codes.setdefault(c.code, c.id)
        db.set_meta("status", "running")
        db.set_meta("pid", os.getpid())  # `evounlearn report` tells a live search from an interrupted one
        return db

    def _stopped(self, exc: BaseException) -> None:
        """After a stop: the runs killed in flight go back to the queue (nothing is charged)."""
        if self.store is None:
            return
        self.store.requeue_running()
        if isinstance(exc, (InfrastructureError, KeyboardInterrupt)):
            self.store.set_meta("status", "interrupted")

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
            info = self._prepare_target()
            self.db.set_meta("target", info)
        self.target = info
        self.target_utility = info.get("target_utility")
        t = info.get("target", {}).get("search", {})
        log.info("target model: utility %.4f, fitness %.4f on the search part (floor: utility >= %.4f)",
                 self.target_utility or float("nan"), t.get("fitness", float("nan")),
                 (self.target_utility or 0.0) * self.cfg.utility_floor)

    def _prepare_target(self) -> dict[str, Any]:
        """The target_info job (retried on infrastructure faults): `benchmarks.TargetInfo` as a dict."""
        log.info("preparing the benchmark and evaluating the target model (cached after the first time)")
        kw: dict[str, Any] = {"unlearn": dict(self.cfg.unlearn), "benchmark": self.cfg.benchmark,
                              "log_file": str(self.run_dir / "target.log"), "fitness": self.cfg.fitness_name()}
        for attempt in range(1, INFRA_RETRIES + 2):
            out = JobOutcome.from_future(self.executor.submit(self.jobs.target, kw, Limits(None, None, None)),
                                         candidate_job=False)
            if not out.infra:
                break
            log.warning("target job lost to an infrastructure fault (%d/%d): %s", attempt, INFRA_RETRIES + 1,
                        first_line(out.error, 200))
        else:
            raise InfrastructureError(f"could not prepare the benchmark: infrastructure fault "
                                      f"{INFRA_RETRIES + 1} times ({first_line(out.error, 200)})")
        if out.error is not None:
            raise EvoUnlearnError(f"could not prepare the benchmark: {out.detail}")
        return dict(out.value)

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
            rows = self.db.candidates(kind="baseline", label=label)
            cid = rows[0].id if rows else self.db.add_candidate(
                kind="baseline", label=label, method=spec.name, generation=0, operator="baseline",
                status="validated", epochs=epochs, interface=self.cfg.interface, seed=self.cfg.seed)
            for s in seeds:
                self.db.add_evaluation(cid, "search", s, epochs=epochs, priority=1)
            for s in seeds:
                self.db.add_evaluation(cid, "report", s, epochs=epochs, priority=2)

    # -- what the modes use -------------------------------------------------------------------
    def next_request_index(self, g: int) -> int:
        key = f"gen{g}_requests"
        k = int(self.db.get_meta(key, 0) or 0)
        self.db.set_meta(key, k + 1)
        return k

    def gen_trained(self, g: int) -> int:
        return self.db.trained_count(generation=g)

    def budget_left(self) -> int:
        """Trainings left: the budget counts one search-part run per proposal plus every re-run of
        a proposal with another seed (races, finalists), so that selecting on more seeds is paid
        for, and arms compared at one budget trained as often."""
        return self.cfg.budget - self.db.trained_count() - self.db.extra_search_runs(self.cfg.seed)

    def generation_filled(self, g: int) -> bool:
        return bool(self.db.get_meta(f"gen{g}_filled"))

    def mark_filled(self, g: int) -> None:
        self.db.set_meta(f"gen{g}_filled", True)

    def fill_initial(self, g: int, target: int) -> None:
        """Generation 0: zero-shot proposals (the offline proposer starts with the literature seeds)."""
        def room() -> bool:
            return self.gen_trained(g) < target and self.budget_left() > 0

        self.admit_leftovers(g, room)
        tries = 0
        while room() and tries < self.cfg.max_proposals_per_slot:
            tries += 1
            proposed = self.db.original_proposal_count(generation=g)
            need = target - self.gen_trained(g)
            k = self.next_request_index(g)
            ids = self.propose(g, k, self.request("initial", g, k, n=proposed + need), skip_known=True)
            for cid in ids:
                self.admit(cid, room)

    def ranked(self) -> list[CandidateRow]:
        """Eligible candidates (full-length, finite fitness), best first."""
        return sort_ranked([c for c in self.db.done_candidates() if eligible(c)])

    def best(self) -> CandidateRow | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    # -- proposing and admitting --------------------------------------------------------------
    def _parent_dict(self, c: CandidateRow) -> dict[str, Any]:
        """A parent as the proposers' request shows it."""
        evs = self.db.evaluations_of(c.id, part="search", status="done")
        hist = (evs[0].epoch_losses or evs[0].loss_history) if evs else []
        return {"id": c.id, "code": c.code or c.program or "", "fitness": c.fitness_search,
                "metrics": c.metrics or {}, "loss_history": hist}

    def _leaderboard(self, k: int = 5) -> list[tuple[float, str]]:
        best = self.ranked()[:k]
        return [(float(c.fitness_search), c.code or "") for c in reversed(best) if c.fitness_search is not None]

    def request(self, kind: str, g: int, k: int, parents: Sequence[CandidateRow] | None = None,
                 n: int = 1, **extra: Any) -> ProposalRequest:
        return ProposalRequest(
            kind=kind, n=n, interface=self.cfg.interface, benchmark=self.cfg.benchmark,
            parents=[self._parent_dict(p) for p in parents or []],
            leaderboard=self._leaderboard() if kind in ("refine", "crossover") else [],
            seed=stable_seed(self.cfg.seed, g, k, kind),
            run=RunSettings.from_train(self.cfg.unlearn.get("train"), self.cfg.default_epochs),
            reference=ReferenceLevels.from_target_info(
                self.target, part="search", utility_key=get_benchmark(self.cfg.benchmark).fitness.utility_key),
            history=self._history() if kind == "tune" else [], fitness=self.cfg.fitness_name(), **extra,
        )

    def _history(self) -> list[dict[str, Any]]:
        """(code, search fitness) of every evaluated candidate: what a model-based tuner learns from."""
        return [{"code": c.code, "fitness": c.fitness_search} for c in self.db.done_candidates()
                if c.code and c.fitness_search is not None]

    def propose(self, g: int, slot: int, req: ProposalRequest, skip_known: bool = False,
                proposer: Proposer | None = None) -> list[int]:
        """Ask the proposer (a control's own when given); record every proposal as a candidate row."""
        t = time.time()
        try:
            props: list[Proposal] = (proposer or self.proposer).propose(req)
        except Exception as e:  # a proposer failure costs this request only
            log.warning("proposer failed on a %s request: %s", req.kind, first_line(str(e)))
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


    def _fingerprint_seed(self) -> int:
        """The search's secret seed for fingerprint probes: drawn once, kept in the store so that a
        resumed search compares fingerprints with the same probes (validation probes are drawn
        afresh every time, from a seed that never leaves the worker)."""
        seed = self.db.get_meta("fingerprint_seed")
        if seed is None:
            seed = secrets.randbits(62)
            self.db.set_meta("fingerprint_seed", seed)
        return int(seed)

    def _probe_profile(self) -> dict[str, Any]:
        """Probes shaped like this search's batches: its batch size, and per-sequence log-probs
        centred on the target model's mean answer-token log-prob on the forget set."""
        train = dict(self.cfg.unlearn.get("train") or {})
        profile: dict[str, Any] = {"batch_size": int(train["batch_size"])} if train.get("batch_size") else {}
        prob = ((self.target.get("target") or {}).get("search") or {}).get("summary", {}).get("forget_prob")
        if isinstance(prob, (int, float)) and 0.0 < prob < 1.0:
            profile.update(logp_mean=math.log(prob), logp_sd=1.0)
        # lengths drawn from the real rows' token counts (a probe's shape then says nothing)
        lengths = self.target.get("probe_lengths") or {}
        answers, prompts = lengths.get("answer") or [], lengths.get("prompt") or []
        if answers:
            profile.update(tokens_min=max(1, min(answers)), tokens_max=max(answers), token_counts=list(answers))
        if prompts:
            profile.update(prompt_min=max(1, min(prompts)), prompt_max=max(prompts), prompt_counts=list(prompts))
        return profile

    def _ensure_validator(self) -> IsolatedWorker:
        """The validation worker, started (retried); one that cannot start stops the search."""
        assert self.validator is not None
        error: Exception | None = None
        for attempt in range(1, INFRA_RETRIES + 2):
            try:
                self.validator.start()
                return self.validator
            except Exception as e:  # an infrastructure fault: no candidate is charged
                error = e
                log.warning("validation worker failed to start (%d/%d): %s", attempt, INFRA_RETRIES + 1, e)
        raise InfrastructureError(f"the validation worker cannot start: {first_line(str(error), 200)}")

    def _validate(self, cid: int) -> tuple[bool, str]:
        """Validate one proposal in the worker; exact/behavioural duplicates are recorded, not trained."""
        c = self.db.candidate(cid)
        assert c is not None
        if c.status == "rejected":  # rejected when proposed (`_propose`: no function in the reply)
            return False, str(c.error or "rejected")
        code = c.code or ""
        prev = self._codes.get(code)
        if prev is not None and prev != cid:
            self.db.update_candidate(cid, status="duplicate", duplicate_of=prev, error=f"same code as #{prev}")
            log.info("  #%d %s: identical to #%d, not trained", cid, c.operator, prev)
            return False, "duplicate"
        self._codes.setdefault(code, cid)
        t = time.time()
        records = [_sandbox_record(r) for r in validate_in_worker(
            code, self.cfg.interface, self._ensure_validator(), profile=self._probe_profile(),
            fingerprint_seed=self._fingerprint_seed())]
        timings = {**c.timings, "validate": time.time() - t}
        rec = next((r for r in records if r.name), records[0] if records else None)
        slim = None if rec is None else ValidationRecord.from_mapping(asdict(rec))
        if rec is None or not rec.ok:
            reason = rec.reason if rec else "no loss function"
            self.db.update_candidate(cid, status="rejected", error=reason, validation=slim, timings=timings)
            log.info("  #%d %s: rejected (%s)", cid, c.operator, first_line(reason, 120))
            return False, reason
        fp = rec.fingerprint
        owner = self.db.fingerprint_owner(fp, before=cid) if (self.dedup and fp) else None
        if owner is not None:
            self.db.update_candidate(cid, status="duplicate", duplicate_of=owner, fingerprint=fp, validation=slim,
                                     timings=timings, error=f"behaves like #{owner} on the probes")
            log.info("  #%d %s: behavioural duplicate of #%d, not trained", cid, c.operator, owner)
            return False, "duplicate"
        epochs = int(rec.epochs or self.cfg.default_epochs)
        self.db.update_candidate(cid, status="validated", program=rec.program, function=rec.name,
                                 fingerprint=fp, epochs=epochs, validation=slim, timings=timings)
        self.db.add_evaluation(cid, "search", self.cfg.seed, epochs=epochs,
                               stage1_epochs=self.stage1_epochs if self.stage1_epochs < epochs else 0, priority=0)
        return True, "ok"

    def admit(self, cid: int, room: Callable[[], bool]) -> bool:
        """Validate a proposal (and repair it when rejected); True when it will be trained."""
        if not room():
            self.db.update_candidate(cid, status="unused", error="not needed: the generation or the budget was full")
            return False
        ok, reason = self._validate(cid)
        if ok or reason == "duplicate":
            return ok
        broken = self.db.candidate(cid)
        assert broken is not None
        root = broken.repair_of or cid
        parents = [p for p in (self.db.candidate(i) for i in broken.parents) if p]
        for attempt in range(1, self.repair_attempts + 1):
            req = self.request("repair", broken.generation, stable_seed(cid, attempt), parents=parents,
                                error={"reason": reason, "code": broken.code or ""})
            ids = self.propose(broken.generation, broken.slot or 0, req)
            if not ids:
                break
            for extra in ids[1:]:
                self.db.update_candidate(extra, status="unused", error="repair: only the first proposal is used")
            nid = ids[0]
            self.db.update_candidate(nid, operator="repair", parents=[broken.id], repair_of=root,
                                     repair_attempt=attempt)
            ok, reason = self._validate(nid)
            if ok:
                log.info("  #%d repaired #%d (attempt %d)", nid, root, attempt)
                return True
            if reason == "duplicate":
                return False
            broken = self.db.candidate(nid) or broken
        return False

    def admit_leftovers(self, g: int, room: Callable[[], bool]) -> None:
        """Proposals recorded but not validated before a crash."""
        for c in self.db.proposed_candidates(g):
            self.admit(c.id, room)

    # -- finalists ----------------------------------------------------------------------------
    def _run_finalists(self) -> None:
        ids = self.db.get_meta("finalists")
        if ids is not None and self.db.get_meta("finalists_at") != self.db.trained_count():
            ids = None  # resumed with a larger budget: new candidates may enter the finals
        if ids is None:
            # Wait for every candidate's search-part result first (none is in flight here normally).
            self._pump(lambda: self.db.pending_count(kind="candidate") == 0)
            ids = [c.id for c in self.ranked()[: self.cfg.finalists]]
            self.db.set_meta("finalists", ids)
            self.db.set_meta("finalists_at", self.db.trained_count())
        seeds = range(self.cfg.seed, self.cfg.seed + self.cfg.report_seeds)
        for cid in ids:
            c = self.db.candidate(cid)
            epochs = c.epochs if c else None
            for s in seeds:
                self.db.add_evaluation(cid, "search", s, epochs=epochs, priority=0)
                self.db.add_evaluation(cid, "report", s, epochs=epochs, priority=0)
            self._refresh(cid)
        if ids:
            log.info("finalists %s: re-running with %d seed(s) on the search and report parts",
                     ", ".join(f"#{i}" for i in ids), len(seeds))
        self._pump(lambda: self.db.pending_count(candidate_ids=ids) == 0)
        self.db.set_meta("winner", self._winner(ids))

    def _winner(self, ids: list[int]) -> int | None:
        fin = [c for c in (self.db.candidate(i) for i in ids) if c and c.fitness_search is not None]
        if not fin:
            return None
        floor, tu = self.cfg.utility_floor, self.target_utility
        if self.cfg.select_on == "report":
            def key(c: CandidateRow) -> float:
                return rank_score(c.fitness_report, c.utility_report, tu, floor)
        else:
            def key(c: CandidateRow) -> float:
                return float(c.score_search if c.score_search is not None else FAILED)
        return max(fin, key=lambda c: (key(c), -c.id)).id
