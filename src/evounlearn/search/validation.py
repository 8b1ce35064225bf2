"""Candidate validation from the driver's side: run the sandbox's validation job in a worker.

`validate_in_worker(source, interface, worker)` runs `sandbox.jobs.validate_source` in an
isolated worker, for the candidate the caller will use (`function`, default the first loss) or
all of them (`all_functions`), under ONE deadline for the whole program (4/5 of the job's wall /
CPU limit, so the job answers before it is killed). When the job is killed all the same, the
candidates asked for are rejected with the limit as reason; nothing is re-run. Records are
`sandbox.CandidateRecord` dicts.

Fingerprints are computed on probes drawn from `fingerprint_seed`; the default is a secret drawn
once per driver process (comparable across every validation of one search run; a driver should
pass its own per-search secret so that a resumed search stays comparable with itself).
"""

from __future__ import annotations

import secrets
from typing import Any

from ..sandbox import LIST_JOB, VALIDATE_JOB, IsolatedWorker, JobResult, WorkerPool, failed_record

__all__ = ["VALIDATION_LIMITS", "validate_in_worker"]

VALIDATION_LIMITS: dict[str, Any] = {"wall_limit_s": 30.0, "cpu_limit_s": 20.0, "memory_limit_mb": 2048}
#: validation workers run with no network and write only in their scratch directory
VALIDATION_CONFINEMENT: dict[str, Any] = {"isolate_network": True, "write_paths": ()}
_PROCESS_FINGERPRINT_SEED = secrets.randbits(62)


def _job_reason(res: JobResult) -> str:
    if res.killed_reason is not None:
        detail = (res.error or "").splitlines()[0] if res.error else ""
        return f"{res.killed_reason} during validation" + (f" ({detail})" if detail else "")
    return f"validation job failed: {(res.error or '').splitlines()[0] if res.error else 'unknown error'}"


def _deadline(lim: dict[str, Any]) -> float | None:
    bounds = [float(v) for v in (lim.get("wall_limit_s"), lim.get("cpu_limit_s")) if v is not None]
    return 0.8 * min(bounds) if bounds else None


def validate_in_worker(
    source: str,
    interface: str = "faithful",
    worker: IsolatedWorker | WorkerPool | None = None,
    *,
    function: str | None = None,
    all_functions: bool = False,
    profile: dict[str, Any] | None = None,
    fingerprint_seed: int | None = None,
    **limits: Any,
) -> list[dict[str, Any]]:
    """Validate `function` (default: the first loss) or every candidate of `source` in an
    isolated worker (records as `validate_source`).

    `limits` override VALIDATION_LIMITS (wall_limit_s, cpu_limit_s, memory_limit_mb). When the
    job is killed or crashes, the candidates asked for get a record with ok=False and the limit
    as reason (e.g. "cpu time limit during validation (...)"). With `worker=None` a temporary,
    confined worker is started and closed.
    """
    lim = {**VALIDATION_LIMITS, **limits}
    own = worker is None
    w: IsolatedWorker | WorkerPool = IsolatedWorker(**lim, **VALIDATION_CONFINEMENT) if worker is None else worker
    seed = _PROCESS_FINGERPRINT_SEED if fingerprint_seed is None else fingerprint_seed
    job = {"source": source, "interface": interface, "function": function, "all_functions": all_functions,
           "deadline_s": _deadline(lim), "profile": profile, "fingerprint_seed": seed}
    try:
        res = w.run(VALIDATE_JOB, job, **lim)
        if res.ok:
            return list(res.value)
        return _killed_records(source, w, res, function, all_functions)
    finally:
        if own:
            w.close()


def _killed_records(
    source: str, w: IsolatedWorker | WorkerPool, failed: JobResult, function: str | None, all_functions: bool
) -> list[dict[str, Any]]:
    """The records of the candidates asked for when their job was killed (static listing only)."""
    listing = w.run(LIST_JOB, {"source": source}, wall_limit_s=10.0, cpu_limit_s=10.0, memory_limit_mb=1024)
    if not listing.ok:
        return [failed_record("", "", 0, _job_reason(failed))]
    losses = [f for f in listing.value if f["is_loss"]]
    if not all_functions:
        losses = [f for f in losses if f["name"] == function] if function else losses[:1]
    reason = _job_reason(failed)
    return [failed_record(f["name"], f["source"], f["lineno"], reason) for f in losses] or [
        failed_record("", "", 0, reason)
    ]
