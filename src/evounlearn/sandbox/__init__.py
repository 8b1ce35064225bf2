"""The sandbox for untrusted loss programs: what they may contain, how they are checked,
compiled, probed, and run in isolated worker processes with OS limits.

Layering: imports nothing above `models/` (never search/, methods/, training/, benchmarks/).

- `policy`   allow-lists and size limits (the rules);
- `checker`  the AST check of one function against the rules (`node_checker`: the per-node walk);
- `program`  a whole program: split into functions, helpers, epochs, interface detection;
- `compiler` compile checked code with restricted builtins (worker only);
- `probe_inputs` the probe tensors, shaped like the run's batches (`ProbeProfile`);
- `probes`   validation of a compiled loss on fresh secret probe tensors, behavioural fingerprints;
- `guards`   training guards: the loss watched on the real batches of the whole run (direction
             by sums and per row, row order, retain watchdog, finiteness, time);
- `timers`   interrupting a loss stuck in a Python loop (SIGALRM in the main thread), and the
             hard deadline the driver enforces by killing the worker (a long C call);
- `confine`  the worker's OS layers (pdeathsig, network namespace, Landlock with scopes and
             hidden paths, seccomp without AF_UNIX sockets);
- `jobs`     the trusted worker jobs (validate every candidate of a program);
- `workers`  isolated worker processes with wall-clock, CPU and memory limits, and a pool
             (the driver's side; `worker_process` is the child's, `job_result` what a job
             asks for and gets back).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .job_result import CPU_LIMIT, CRASH, MEMORY_LIMIT, STEP_DEADLINE, WALL_LIMIT, JobResult, Limits
from .worker_process import WORKER_ENV
from .workers import IsolatedWorker, WorkerPool, preload_modules

if TYPE_CHECKING:
    from .checker import CheckResult, check_function
    from .compiler import compile_function, compile_program
    from .guards import GuardConfig, TrainingGuard, TrainingGuardError
    from .jobs import LIST_JOB, VALIDATE_JOB, CandidateRecord, failed_record, list_functions, validate_source
    from .policy import INTERFACES, SandboxError, interface_args, is_loss_name
    from .probe_inputs import ProbeProfile, make_probe
    from .probes import ValidationResult, validate_candidate
    from .program import (
        FunctionSource,
        ProgramCheck,
        check_program,
        helper_closure,
        interface_of,
        parse_epochs,
        split_functions,
    )

_LAZY = {  # name -> submodule: imported on first use, so that importing the package (e.g. a Ray
    # actor that only drives an IsolatedWorker) does not import torch
    "CheckResult": "checker",
    "check_function": "checker",
    "compile_function": "compiler",
    "compile_program": "compiler",
    "GuardConfig": "guards",
    "TrainingGuard": "guards",
    "TrainingGuardError": "guards",
    "LIST_JOB": "jobs",
    "VALIDATE_JOB": "jobs",
    "CandidateRecord": "jobs",
    "failed_record": "jobs",
    "list_functions": "jobs",
    "validate_source": "jobs",
    "INTERFACES": "policy",
    "SandboxError": "policy",
    "interface_args": "policy",
    "is_loss_name": "policy",
    "ProbeProfile": "probe_inputs",
    "ValidationResult": "probes",
    "make_probe": "probe_inputs",
    "validate_candidate": "probes",
    "FunctionSource": "program",
    "ProgramCheck": "program",
    "check_program": "program",
    "helper_closure": "program",
    "interface_of": "program",
    "parse_epochs": "program",
    "split_functions": "program",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "CPU_LIMIT",
    "CRASH",
    "INTERFACES",
    "LIST_JOB",
    "MEMORY_LIMIT",
    "VALIDATE_JOB",
    "STEP_DEADLINE",
    "WALL_LIMIT",
    "WORKER_ENV",
    "CandidateRecord",
    "CheckResult",
    "FunctionSource",
    "GuardConfig",
    "IsolatedWorker",
    "JobResult",
    "Limits",
    "ProbeProfile",
    "ProgramCheck",
    "SandboxError",
    "TrainingGuard",
    "TrainingGuardError",
    "ValidationResult",
    "WorkerPool",
    "check_function",
    "check_program",
    "compile_function",
    "compile_program",
    "failed_record",
    "helper_closure",
    "interface_args",
    "interface_of",
    "is_loss_name",
    "list_functions",
    "make_probe",
    "parse_epochs",
    "preload_modules",
    "split_functions",
    "validate_candidate",
    "validate_source",
]
