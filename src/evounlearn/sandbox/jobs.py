"""The trusted worker jobs of the sandbox: what an isolated worker runs on a loss program.

A job is named by a path ("evounlearn.sandbox.jobs:validate_source") and sent to a worker
(`workers.IsolatedWorker.run`); its return value travels back over the pipe, so it is plain
data: one dict per candidate, made from `CandidateRecord` (the one definition of its fields).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .compiler import compile_function
from .policy import SandboxError, is_loss_name
from .probes import describe_error, validate_candidate
from .program import FunctionSource, ProgramCheck, check_program, parse_epochs, split_functions

__all__ = ["VALIDATE_JOB", "LIST_JOB", "CandidateRecord", "failed_record", "list_functions", "validate_source"]

VALIDATE_JOB = "evounlearn.sandbox.jobs:validate_source"
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


def validate_source(
    source: str, interface: str = "faithful", only: str | None = None
) -> list[dict[str, Any]]:
    """Worker job: split `source`, check, compile and validate each candidate (`only`: just that one).

    Returns one `CandidateRecord` dict per candidate, in program order. Later duplicates of a
    name get a record with ok=False. A program-level problem gives a single record with name "".
    """
    pc = check_program(source, interface)
    if pc.error is not None:
        return [failed_record("", "", 0, pc.error)]
    records = [
        _validate_one(pc, f, interface).as_dict() for f in pc.losses if only is None or f.name == only
    ]
    for d in pc.duplicates:
        if only is None or d.name == only:
            reason = f"duplicate function name '{d.name}' (the first definition is kept)"
            records.append(failed_record(d.name, d.source, d.lineno, reason))
    return records


def _validate_one(pc: ProgramCheck, f: FunctionSource, interface: str) -> CandidateRecord:
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
        vr = validate_candidate(fn, interface)
    except SandboxError as e:
        rec.reason = str(e)
    except Exception as e:  # compile-time failures
        rec.reason = f"compile error: {describe_error(e)}"
    else:
        rec.ok, rec.reason, rec.fingerprint = vr.ok, vr.reason, vr.fingerprint
        rec.probe_values, rec.uses_retain = vr.probe_values, vr.uses_retain
    return rec
