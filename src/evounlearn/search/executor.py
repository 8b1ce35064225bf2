"""Where candidate evaluations run: an executor interface and the local process-pool backend.

The search driver only talks to an `Executor`: `submit(job, kwargs) -> Future[JobResult]`, with
`job` a trusted "evounlearn.<module>:<function>" path (the function itself validates, compiles and
trains the untrusted loss inside the worker) and `slots` the number of jobs it runs at once. A
distributed backend (a cluster queue, Ray, SSH hosts...) implements the same three members and
returns the same `sandbox.JobResult`; nothing in the search changes.

`LocalExecutor(n)`: n isolated worker processes (`sandbox.WorkerPool`), each with wall-clock,
CPU-time and memory limits and 1 torch thread by default (n parallel candidates on n cores).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from ..errors import ConfigError
from ..sandbox import JobResult, Limits, WorkerPool

__all__ = ["EXECUTORS", "Executor", "Limits", "LocalExecutor", "make_executor"]


class Executor(ABC):
    """Runs trusted job functions away from the driver; see the module docstring."""

    slots: int = 1

    @abstractmethod
    def submit(self, job: str, kwargs: Mapping[str, Any], limits: Limits | None = None) -> Future[JobResult]:
        """Start `job(**kwargs)`; the future's JobResult carries the value or the error."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Start resources ahead of the first job (default: nothing)."""

    @abstractmethod
    def close(self, kill: bool = False) -> None:
        """Stop everything; with `kill`, jobs in flight are killed instead of awaited."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """`n` isolated worker processes on this machine (one candidate each)."""

    def __init__(self, n: int = 1, limits: Limits | None = None, threads: int = 1) -> None:
        if n < 1:
            raise ConfigError(f"workers must be >= 1, got {n}")
        self.slots = n
        self.limits = limits or Limits()
        self.pool = WorkerPool(n, threads=threads, **self.limits.as_kwargs())

    def start(self) -> None:
        self.pool.start()

    def submit(self, job: str, kwargs: Mapping[str, Any], limits: Limits | None = None) -> Future[JobResult]:
        lim = (limits or self.limits).as_kwargs()
        return self.pool.submit(job, dict(kwargs), **lim)

    def close(self, kill: bool = False) -> None:
        if kill:
            for w in self.pool.workers:
                w.kill()  # the pending futures then complete with a "crash" JobResult
        self.pool.close()


EXECUTORS: dict[str, type[Executor]] = {"local": LocalExecutor}


def make_executor(kind: str = "local", workers: int = 1, limits: Limits | None = None, threads: int = 1) -> Executor:
    """Build an executor by name (only "local" ships; register others in EXECUTORS)."""
    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor {kind!r} (known: {', '.join(EXECUTORS)})")
    cls = EXECUTORS[kind]
    return cls(workers, limits, threads)  # type: ignore[call-arg]
