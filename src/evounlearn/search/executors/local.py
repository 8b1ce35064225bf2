"""`LocalExecutor(n)`: n isolated worker processes on this machine (`sandbox.WorkerPool`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from ...errors import ConfigError
from ...sandbox import JobResult, Limits, WorkerPool, preload_modules
from .base import Executor

__all__ = ["LocalExecutor"]


class LocalExecutor(Executor):
    """`n` isolated worker processes on this machine (one candidate each)."""

    def __init__(self, n: int = 1, limits: Limits | None = None, threads: int = 1,
                 write_paths: list[str] | None = None, preload: Sequence[str] = ()) -> None:
        """`write_paths`: where the workers may write besides their scratch folder (Landlock, where
        the kernel has it); None: writes are not confined. `preload`: modules the workers import
        before their first job (`sandbox.preload_modules`)."""
        if n < 1:
            raise ConfigError(f"workers must be >= 1, got {n}")
        preload_modules(*preload)
        self.slots = n
        self.limits = limits or Limits()
        self.pool = WorkerPool(n, threads=threads, write_paths=write_paths, **self.limits.as_kwargs())

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
