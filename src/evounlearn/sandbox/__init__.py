"""The sandbox for untrusted loss programs: what they may contain, how they are checked,
compiled, probed, and run in isolated worker processes with OS limits.

Layering: imports nothing above `models/` (never search/, methods/, training/, benchmarks/).

- `policy`   allow-lists and size limits (the rules);
- `checker`  the AST check of one function against the rules;
- `program`  a whole program: split into functions, helpers, epochs, interface detection;
- `compiler` compile checked code with restricted builtins (worker only);
- `probes`   validation of a compiled loss on fresh secret probe tensors, behavioural fingerprints;
- `guards`   training guards: the loss watched on the real batches (direction, finiteness, time);
- `timers`   interrupting a loss stuck in a Python loop (SIGALRM in the main thread);
- `confine`  the worker's OS layers (pdeathsig, network namespace, Landlock);
- `jobs`     the trusted worker jobs (validate every candidate of a program);
- `workers`  isolated worker processes with wall-clock, CPU and memory limits, and a pool.
"""

from __future__ import annotations

from .checker import CheckResult, check_function
from .compiler import compile_function, compile_program
from .guards import GuardConfig, TrainingGuard, TrainingGuardError
from .jobs import LIST_JOB, VALIDATE_JOB, CandidateRecord, failed_record, list_functions, validate_source
from .policy import INTERFACES, WORKER_ENV, SandboxError, interface_args, is_loss_name
from .probes import ProbeProfile, ValidationResult, make_probe, validate_candidate
from .program import (
    FunctionSource,
    ProgramCheck,
    check_program,
    helper_closure,
    interface_of,
    parse_epochs,
    split_functions,
)
from .workers import (
    CPU_LIMIT,
    CRASH,
    MEMORY_LIMIT,
    WALL_LIMIT,
    IsolatedWorker,
    JobResult,
    Limits,
    WorkerPool,
    preload_modules,
    preloaded_modules,
)

__all__ = [
    "CPU_LIMIT",
    "CRASH",
    "INTERFACES",
    "LIST_JOB",
    "MEMORY_LIMIT",
    "VALIDATE_JOB",
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
    "preloaded_modules",
    "split_functions",
    "validate_candidate",
    "validate_source",
]
