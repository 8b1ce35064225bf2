"""Where candidate evaluations run: an executor interface and the local process-pool backend.

The search driver only talks to an `Executor`: `submit(job, kwargs) -> Future[JobResult]`, with
`job` a trusted "evounlearn.<module>:<function>" path (the function itself validates, compiles and
trains the untrusted loss inside the worker) and `slots` the number of jobs it runs at once. A
distributed backend (a cluster queue, Ray, SSH hosts...) implements the same three members and
returns the same `sandbox.JobResult`; nothing in the search changes.

`LocalExecutor(n)`: n isolated worker processes (`sandbox.WorkerPool`), each with wall-clock,
CPU-time and memory limits and 1 torch thread by default (n parallel candidates on n cores).
`RayExecutor` (`search.executors.ray`, `executor: ray`): the same isolated workers, kept warm
by Ray actors holding one or more slots each, on a local Ray instance or a cluster
(docs/DISTRIBUTED.md); Ray is imported only then.

A JobResult with `infra=True` was lost to the infrastructure (a node died, the executor was
closed), not to the job: the caller may retry it without charging the candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError
from .base import Executor, Limits
from .local import LocalExecutor

if TYPE_CHECKING:
    from ..config import SearchConfig

__all__ = ["EXECUTORS", "Executor", "Limits", "LocalExecutor", "executor_options", "make_executor"]


def _ray_executor() -> type[Executor]:
    from .ray import RayExecutor  # ray itself is imported when the executor starts

    return RayExecutor


#: name -> a function returning the class (so that optional backends are imported only when used)
EXECUTORS: dict[str, Callable[[], type[Executor]]] = {"local": lambda: LocalExecutor, "ray": _ray_executor}


def make_executor(kind: str = "local", workers: int = 1, limits: Limits | None = None, threads: int = 1,
                  **options: Any) -> Executor:
    """Build an executor by name; `options` are the backend's own keyword arguments
    (see `executor_options`)."""
    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor {kind!r} (known: {', '.join(EXECUTORS)})")
    cls = EXECUTORS[kind]()
    return cls(workers, limits, threads, **options)  # type: ignore[call-arg]


def executor_options(cfg: SearchConfig, run_dir: str | Path) -> dict[str, Any]:
    """The backend-specific `make_executor` options of a search: for Ray, its config section and
    the paths every node must see (the run dir and the prepared-model cache); for both, where the
    candidate workers may write (the same two folders) when `confine_writes` is on, and the
    modules the workers import before their first job (the benchmark's `worker_preload`)."""
    from ...benchmarks import get_benchmark

    cache = str((cfg.unlearn.get("prepare") or {}).get("cache_dir") or "")
    paths = [str(run_dir), *([cache] if cache else [])]
    preload = tuple(get_benchmark(cfg.benchmark).worker_preload)  # the jobs' heavy imports, done once
    confine = {"write_paths": paths} if cfg.confine_writes else {}
    if cfg.executor == "ray":
        return {"options": cfg.ray, "shared_paths": paths, "preload": preload, **confine}
    return {"preload": preload, **confine}
