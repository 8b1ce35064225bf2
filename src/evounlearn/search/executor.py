"""Where candidate evaluations run: an executor interface and the local process-pool backend.

The search driver only talks to an `Executor`: `submit(job, kwargs) -> Future[JobResult]`, with
`job` a trusted "evounlearn.<module>:<function>" path (the function itself validates, compiles and
trains the untrusted loss inside the worker) and `slots` the number of jobs it runs at once. A
distributed backend (a cluster queue, Ray, SSH hosts...) implements the same three members and
returns the same `sandbox.JobResult`; nothing in the search changes.

`LocalExecutor(n)`: n isolated worker processes (`sandbox.WorkerPool`), each with wall-clock,
CPU-time and memory limits and 1 torch thread by default (n parallel candidates on n cores).
`RayExecutor` (`search.ray_executor`, `executor: ray`): the same isolated worker, started inside
a Ray task, on a local Ray instance or a cluster (docs/DISTRIBUTED.md); Ray is imported only then.

A JobResult with `infra=True` was lost to the infrastructure (a node died, the executor was
closed), not to the job: the caller may retry it without charging the candidate.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..sandbox import JobResult, Limits, WorkerPool

if TYPE_CHECKING:
    from .config import SearchConfig

__all__ = ["EXECUTORS", "Executor", "Limits", "LocalExecutor", "executor_options", "make_executor"]


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


def _ray_executor() -> type[Executor]:
    from .ray_executor import RayExecutor  # ray itself is imported when the executor starts

    return RayExecutor


#: name -> a function returning the class (so that optional backends are imported only when used)
EXECUTORS: dict[str, Callable[[], type[Executor]]] = {"local": lambda: LocalExecutor, "ray": _ray_executor}


def make_executor(kind: str = "local", workers: int = 1, limits: Limits | None = None, threads: int = 1,
                  **options: Any) -> Executor:
    """Build an executor by name; `options` are the backend's own keyword arguments
    (see `executor_options`; LocalExecutor takes none)."""
    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor {kind!r} (known: {', '.join(EXECUTORS)})")
    cls = EXECUTORS[kind]()
    return cls(workers, limits, threads, **options)  # type: ignore[call-arg]


def executor_options(cfg: SearchConfig, run_dir: str | Path) -> dict[str, Any]:
    """The backend-specific `make_executor` options of a search: for Ray, its config section and
    the paths every node must see (the run dir and the prepared-model cache)."""
    if cfg.executor != "ray":
        return {}
    cache = str((cfg.unlearn.get("prepare") or {}).get("cache_dir") or "")
    return {"options": cfg.ray, "shared_paths": [str(run_dir), *([cache] if cache else [])]}
