"""Candidate validation from the driver's side: run the sandbox's validation job in a worker.

`validate_in_worker(source, interface, worker)` runs `sandbox.jobs.validate_source` in an
isolated worker and, when the whole job is killed (a runaway candidate), re-runs each candidate
alone so that only the guilty one is rejected. Records are `sandbox.CandidateRecord` dicts.
"""

from __future__ import annotations

from typing import Any

from ..sandbox import LIST_JOB, VALIDATE_JOB, IsolatedWorker, JobResult, WorkerPool, failed_record

__all__ = ["VALIDATION_LIMITS", "validate_in_worker"]

VALIDATION_LIMITS: dict[str, Any] = {"wall_limit_s": 30.0, "cpu_limit_s": 20.0, "memory_limit_mb": 2048}


def _job_reason(res: JobResult) -> str:
    if res.killed_reason is not None:
        detail = (res.error or "").splitlines()[0] if res.error else ""
        return f"{res.killed_reason} during validation" + (f" ({detail})" if detail else "")
    return f"validation job failed: {(res.error or '').splitlines()[0] if res.error else 'unknown error'}"


def validate_in_worker(
    source: str,
    interface: str = "faithful",
    worker: IsolatedWorker | WorkerPool | None = None,
    **limits: Any,
) -> list[dict[str, Any]]:
    """Validate every candidate of `source` in an isolated worker (records as `validate_source`).

    `limits` override VALIDATION_LIMITS (wall_limit_s, cpu_limit_s, memory_limit_mb). When the
    whole job is killed or crashes, each candidate is re-run alone; the ones that are killed get
    a record with ok=False and the limit as reason (e.g. "cpu time limit during validation (...)").
    With `worker=None` a temporary worker is started and closed.
    """
    lim = {**VALIDATION_LIMITS, **limits}
    own = worker is None
    w: IsolatedWorker | WorkerPool = IsolatedWorker(**lim) if worker is None else worker
    try:
        res = w.run(VALIDATE_JOB, {"source": source, "interface": interface}, **lim)
        if res.ok:
            return list(res.value)
        return _validate_one_by_one(source, interface, w, res, lim)
    finally:
        if own:
            w.close()


def _validate_one_by_one(
    source: str, interface: str, w: IsolatedWorker | WorkerPool, failed: JobResult, lim: dict[str, Any]
) -> list[dict[str, Any]]:
    """After the whole-program job `failed`: one job per candidate, so only the guilty fail."""
    listing = w.run(LIST_JOB, {"source": source}, **lim)
    if not listing.ok:
        return [failed_record("", "", 0, _job_reason(failed))]
    losses = [f for f in listing.value if f["is_loss"]]
    if len(losses) == 1:  # nothing to separate: no need to run it again
        f = losses[0]
        return [failed_record(f["name"], f["source"], f["lineno"], _job_reason(failed))]
    records: list[dict[str, Any]] = []
    jobs = [{"source": source, "interface": interface, "only": f["name"]} for f in losses]
    for f, one in zip(losses, w.map(VALIDATE_JOB, jobs, **lim)):
        if one.ok:
            records.extend(r for r in one.value if r["name"] == f["name"])
        else:
            records.append(failed_record(f["name"], f["source"], f["lineno"], _job_reason(one)))
    return records or [failed_record("", "", 0, _job_reason(failed))]
