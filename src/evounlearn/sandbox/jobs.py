"""The trusted worker jobs of the sandbox: what an isolated worker runs on a loss program.

A job is named by a path ("evounlearn.sandbox.jobs:validate_source") and sent to a worker
(`workers.IsolatedWorker.run`); its return value travels back over the pipe as JSON, so it is
plain data: one dict per candidate, made from `CandidateRecord` (the one definition of its fields).

Validation time: a program gets ONE deadline (`deadline_s`) for all the candidates validated, and
only the candidates the caller will use are validated (`function`, default the first loss;
`all_functions=True` for a verdict on each, as `evounlearn check` does). In the worker's main
thread the deadline is an interval timer (`timers.interrupt_after`) that stops even a loss stuck
in a Python loop; the candidate that was running and those not reached are rejected with the reason.
A single C call (one torch op of 45 minutes) is beyond any timer inside the worker: each
candidate's validation also runs under `timers.hard_deadline` (its share + 5 s, or
`HARD_VALIDATION_S` without a deadline, e.g. the candidate job's own re-validation), after which
the driver kills the worker ("step deadline").
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .compiler import compile_function
from .job_result import WALL_LIMIT
from .policy import SandboxError, is_loss_name
from .probe_inputs import ProbeProfile
from .probes import describe_error, validate_candidate
from .program import FunctionSource, ProgramCheck, check_program, parse_epochs, split_functions
from .timers import hard_deadline, interrupt_after

__all__ = [
    "LIST_JOB",
    "VALIDATE_JOB",
    "CandidateRecord",
    "ValidationDeadline",
    "failed_record",
    "list_functions",
    "validate_source",
]

VALIDATE_JOB = "evounlearn.sandbox.jobs:validate_source"
HARD_VALIDATION_S = 120.0  # one candidate's validation, when the job has no deadline of its own
LIST_JOB = "evounlearn.sandbox.jobs:list_functions"


@dataclass
class CandidateRecord:
    """The validation outcome of one candidate of a program.

    `program` is the self-contained text to train with (the helpers it needs, then the
    function; compile it with `compile_program(program, name)`); `lineno` is its first line in
    the program; `name` "" marks a problem of the whole program."""

    name: str
    source: str
    lineno: int
    ok: bool = False
    reason: str = "rejected"
    epochs: int | None = None
    fingerprint: str | None = None
    probe_values: list[float] = field(default_factory=list)
    program: str | None = None
    helpers: list[str] = field(default_factory=list)
    uses_retain: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def failed_record(name: str, source: str, lineno: int, reason: str) -> dict[str, Any]:
    """The record of a candidate that failed with `reason` before any probe ran."""
    return CandidateRecord(name, source, lineno, reason=reason).as_dict()


def list_functions(source: str) -> list[dict[str, Any]]:
    """Static split only (worker job): [{name, source, lineno, is_loss, error}] per function."""
    return [
        {"name": f.name, "source": f.source, "lineno": f.lineno, "is_loss": is_loss_name(f.name), "error": f.error}
        for f in split_functions(source)
    ]


class ValidationDeadline(BaseException):
    """The program's validation time is up (a BaseException: probe code never swallows it)."""


def _targets(pc: ProgramCheck, function: str | None, all_functions: bool) -> list[FunctionSource] | str:
    """The candidates to validate, or the reason there are none."""
    if all_functions:
        return pc.losses
    if not function:
        return pc.losses[:1]
    chosen = [f for f in pc.losses if f.name == function]
    if not chosen:
        return f"no loss function named {function!r} in the program (found: {', '.join(f.name for f in pc.losses)})"
    return chosen


def validate_source(
    source: str,
    interface: str = "faithful",
    only: str | None = None,
    *,
    function: str | None = None,
    all_functions: bool = False,
    deadline_s: float | None = None,
    profile: dict[str, Any] | None = None,
    fingerprint_seed: int | None = None,
) -> list[dict[str, Any]]:
    """Worker job: split `source`, check it, compile and validate the candidates the caller uses.

    `function` (or its old name `only`): that candidate and its helpers; default the first
    candidate; `all_functions`: every candidate. `deadline_s`: one time limit for the whole job.
    `profile`: a `probe_inputs.ProbeProfile` as a dict (probes shaped like the run's batches);
    `fingerprint_seed`: the search's secret seed of the fingerprint probes.
    Returns one `CandidateRecord` dict per validated candidate, in program order. Later
    duplicates of a name get a record with ok=False. A program-level problem gives a single
    record with name "".
    """
    pc = check_program(source, interface)
    if pc.error is not None:
        return [failed_record("", "", 0, pc.error)]
    chosen = _targets(pc, function or only, all_functions)
    if isinstance(chosen, str):
        return [failed_record("", "", 0, chosen)]
    prof = ProbeProfile.from_dict(profile)
    records = _validate_all(pc, chosen, interface, deadline_s, prof, fingerprint_seed)
    names = {f.name for f in chosen}
    for d in pc.duplicates:
        if d.name in names:
            reason = f"duplicate function name '{d.name}' (the first definition is kept)"
            records.append(failed_record(d.name, d.source, d.lineno, reason))
    return records


def _validate_all(
    pc: ProgramCheck,
    chosen: list[FunctionSource],
    interface: str,
    deadline_s: float | None,
    profile: ProbeProfile,
    fingerprint_seed: int | None,
) -> list[dict[str, Any]]:
    """Validate `chosen` in order within `deadline_s` in all: each candidate may use the time
    left divided by the number of candidates left, so a runaway one cannot starve the others."""
    records: list[dict[str, Any]] = []
    end = None if deadline_s is None else time.monotonic() + float(deadline_s)
    for k, f in enumerate(chosen):
        share = None if end is None else (end - time.monotonic()) / (len(chosen) - k)
        if share is not None and share <= 0:
            why = f"{WALL_LIMIT}: the program's validation time ({deadline_s} s) ran out before it was validated"
            records.append(failed_record(f.name, f.source, f.lineno, why))
            continue
        try:
            hard = HARD_VALIDATION_S if share is None else share + 5.0
            with hard_deadline(hard), interrupt_after(share, ValidationDeadline):
                rec = _validate_one(pc, f, interface, profile, fingerprint_seed)
        except ValidationDeadline:
            why = (
                f"{WALL_LIMIT}: the program's validation time ({deadline_s:.3g} s) ran out while validating it"
                if len(chosen) == 1
                else f"{WALL_LIMIT}: its share ({share:.3g} s) of the program's validation time "
                f"({deadline_s:.3g} s) ran out"
            )
            rec = CandidateRecord(f.name, f.source, f.lineno, reason=why)
        records.append(rec.as_dict())
    return records


def _validate_one(
    pc: ProgramCheck,
    f: FunctionSource,
    interface: str,
    profile: ProbeProfile | None = None,
    fingerprint_seed: int | None = None,
) -> CandidateRecord:
    reason = pc.reasons.get(f.name, "rejected")
    epochs = parse_epochs(f.source) if f.error is None else None
    rec = CandidateRecord(f.name, f.source, f.lineno, reason=reason, epochs=epochs)
    if reason != "ok":
        return rec
    by_name = {g.name: g for g in pc.functions}
    rec.helpers = list(pc.helpers[f.name])
    rec.program = pc.program_text(f.name)
    try:
        fn = compile_function(f.source, [by_name[h].source for h in rec.helpers], interface=interface)
        vr = validate_candidate(fn, interface, profile=profile, fingerprint_seed=fingerprint_seed)
    except SandboxError as e:
        rec.reason = str(e)
    except Exception as e:  # compile-time failures
        rec.reason = f"compile error: {describe_error(e)}"
    else:
        rec.ok, rec.reason, rec.fingerprint = vr.ok, vr.reason, vr.fingerprint
        rec.probe_values, rec.uses_retain = vr.probe_values, vr.uses_retain
    return rec
