"""`executor: ray`: candidate evaluations as Ray tasks, on a local Ray instance or a cluster.

Each job is one Ray task that starts the SAME isolated worker process as `LocalExecutor`
(`sandbox.IsolatedWorker`, same wall / CPU / memory limits, 1 torch thread) and runs the job
there: generated code never runs unsandboxed in a Ray worker, and never in the driver. The task
returns the worker's `JobResult` unchanged, so a job over its wall limit fails with the same
error text on Ray as locally.

Futures: `submit` returns a `concurrent.futures.Future[JobResult]`; one background thread waits on
the Ray object refs (`ray.wait`) and completes them.

Faults: a task lost to Ray itself (its worker process or node died, its result object was lost,
a Ray system error) is an infrastructure fault, not the candidate's: it is resubmitted up to
`RayConfig.retries` times, then reported as `JobResult(ok=False, infra=True, ...)`. Cancelled
tasks (`close(kill=True)`) also come back with `infra=True`. Ray's own task retries are off
(`max_retries=0`) so that every retry is counted here (`infra_retries`).

Artifacts: the run dir and the prepared models / data / caches are read and written by the jobs
through absolute paths, so they must lie on a file system that every node mounts at the same
path (`shared_paths`, plus `RayConfig.shared_dir`): `start()` writes a marker file into each and
runs one tiny task per alive node that looks for it, and fails with a one-line ConfigError
naming the node and the path. `RayConfig.runtime_env` (Ray's working_dir / py_modules /
env_vars / pip) is for small things: code and settings. See docs/DISTRIBUTED.md.

Lifetime: a local instance (`address: ""`) is started by, and dies with, the driver; on a
cluster `close(kill=True)` cancels the tasks in flight, and `--resume` re-queues the runs the
store still lists as "running".

`ray` is imported only when an executor starts: `import evounlearn` never needs it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...sandbox import CRASH, IsolatedWorker, JobResult, Limits
from ..config import RayConfig
from .base import Executor

__all__ = ["RayExecutor", "check_paths_task", "run_sandboxed"]

log = logging.getLogger(__name__)

_WAIT_S = 0.2  # how often the completion thread looks at its refs (and at new submissions)
_SOFT_CANCEL_S = 5.0  # close(kill=True): time for tasks to kill their sandbox before a forced cancel
_MARKER = ".evounlearn-ray-check-"


# --------------------------------------------------------------------------------------------
# task side (runs inside a Ray worker process)


def run_sandboxed(job: str, kwargs: dict[str, Any], limits: dict[str, Any], threads: int,
                  trusted_prefixes: tuple[str, ...]) -> JobResult:
    """The Ray task: run `job(**kwargs)` in a fresh isolated worker process with `limits`."""
    worker = IsolatedWorker(threads=threads, trusted_prefixes=trusted_prefixes, **limits)
    try:
        return worker.run(job, kwargs)
    finally:
        # also on ray.cancel (KeyboardInterrupt here): kill the sandbox's process group now
        worker.kill()


def check_paths_task(paths: list[str], marker: str) -> list[str]:
    """The paths (of `paths`) where this node cannot see the driver's `marker` file."""
    return [p for p in paths if not (Path(p) / marker).is_file()]


# --------------------------------------------------------------------------------------------
# driver side


@dataclass
class _Task:
    """One submitted job: what to (re)submit and the future to complete."""

    job: str
    kwargs: dict[str, Any]
    limits: dict[str, Any]
    future: Future[JobResult]
    attempts: int = 0
    errors: list[str] = field(default_factory=list)


class RayExecutor(Executor):
    """Jobs as Ray tasks, each in its own isolated worker process; see the module docstring."""

    def __init__(self, n: int = 1, limits: Limits | None = None, threads: int = 1,
                 options: RayConfig | Mapping[str, Any] | None = None, shared_paths: Sequence[str] = (),
                 trusted_prefixes: Sequence[str] = ("evounlearn.",)) -> None:
        if n < 1:
            raise ConfigError(f"workers must be >= 1, got {n}")
        self.slots = n
        self.limits = limits or Limits()
        self.threads = threads
        self.options = options if isinstance(options, RayConfig) else RayConfig(**dict(options or {}))
        if self.options.retries < 0:
            raise ConfigError(f"ray.retries must be >= 0, got {self.options.retries}")
        paths = [*shared_paths, *([self.options.shared_dir] if self.options.shared_dir else [])]
        self.shared_paths = [str(Path(p).resolve()) for p in paths if p]
        self.trusted_prefixes = tuple(trusted_prefixes)
        self.infra_retries = 0  # tasks resubmitted after an infrastructure fault
        self._lock = threading.Lock()
        self._tasks: dict[Any, _Task] = {}  # ray ObjectRef -> task
        self._remote: Any = None
        self._owns_ray = False
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Connect to (or start) Ray and check the shared paths on every node."""
        with self._lock:
            if self._remote is not None:
                return
            ray = _import_ray()
            if not ray.is_initialized():
                self._init_ray(ray)
            try:
                self._check_shared_paths(ray)
            except BaseException:
                self._shutdown_ray(ray)
                raise
            self._remote = ray.remote(run_sandboxed).options(**self._task_options())
            self._thread = threading.Thread(target=self._complete_loop, name="evounlearn-ray", daemon=True)
            self._thread.start()

    def _init_ray(self, ray: Any) -> None:
        opts = self.options
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "runtime_env": opts.runtime_env or None}
        if opts.address:
            kw["address"] = opts.address
        else:  # a local instance: enough CPUs for every slot, even on a small machine
            kw["num_cpus"] = max(os.cpu_count() or 1, math.ceil(self.slots * opts.num_cpus))
        try:
            ray.init(**kw)
        except Exception as e:  # noqa: BLE001 - a one-line message for the CLI
            where = opts.address or "a local instance"
            raise ConfigError(f"cannot start Ray ({where}): {type(e).__name__}: {_first_line(str(e))}") from None
        self._owns_ray = True

    def _task_options(self) -> dict[str, Any]:
        opts = self.options
        out: dict[str, Any] = {"num_cpus": opts.num_cpus, "num_gpus": opts.num_gpus, "max_retries": 0}
        if opts.memory_mb:
            out["memory"] = int(opts.memory_mb) * 1024 * 1024
        if opts.num_gpus > 0:
            # a fresh Ray worker per GPU task: the sandbox's fork server is started by the task and
            # inherits that task's CUDA_VISIBLE_DEVICES, which must not be reused for another GPU
            out["max_calls"] = 1
        return out

    def _check_shared_paths(self, ray: Any) -> None:
        """Every alive node must see a marker file the driver wrote into each shared path."""
        if not self.shared_paths:
            return
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        marker = _MARKER + uuid.uuid4().hex
        for p in self.shared_paths:
            Path(p).mkdir(parents=True, exist_ok=True)
            (Path(p) / marker).write_text("evounlearn: shared file system check\n")
        try:
            check = ray.remote(check_paths_task)
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            refs = {
                check.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
                    n["NodeID"], soft=False)).remote(self.shared_paths, marker): n
                for n in nodes
            }
            for ref, node in refs.items():
                missing = ray.get(ref, timeout=120)
                if missing:
                    raise ConfigError(
                        f"ray node {node.get('NodeManagerAddress')} ({node['NodeID'][:12]}) cannot see "
                        f"{missing[0]}: the run dir and the cache must be on a file system shared by every node")
        finally:
            for p in self.shared_paths:
                with contextlib.suppress(OSError):
                    (Path(p) / marker).unlink()

    def close(self, kill: bool = False) -> None:
        """Wait for the jobs in flight (or, with `kill`, cancel them), then let go of Ray."""
        if self._remote is None:
            return
        ray = _import_ray()
        if kill:
            self._cancel_all(ray)
        else:
            for t in list(self._tasks.values()):
                with contextlib.suppress(Exception):
                    t.future.result()
        self._closing = True
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        self._remote = None
        self._shutdown_ray(ray)

    def _cancel_all(self, ray: Any) -> None:
        """Cancel every task in flight: first politely (the task kills its sandbox), then by force."""
        with self._lock:
            refs = list(self._tasks)
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=False)
        with contextlib.suppress(Exception):
            ray.wait(refs, num_returns=len(refs), timeout=_SOFT_CANCEL_S)
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        with self._lock:
            tasks = [self._tasks.pop(r) for r in refs if r in self._tasks]
        for t in tasks:  # the futures complete now; the completion thread no longer sees these refs
            _set_result(t.future, JobResult(False, error="cancelled: the executor was closed",
                                            killed_reason=CRASH, infra=True))

    def _shutdown_ray(self, ray: Any) -> None:
        if self._owns_ray:
            with contextlib.suppress(Exception):
                ray.shutdown()
            self._owns_ray = False

    # -- jobs ---------------------------------------------------------------------------------
    def submit(self, job: str, kwargs: Mapping[str, Any], limits: Limits | None = None) -> Future[JobResult]:
        self.start()
        task = _Task(job, dict(kwargs), (limits or self.limits).as_kwargs(), Future())
        task.future.set_running_or_notify_cancel()
        self._launch(task)
        return task.future

    def _launch(self, task: _Task) -> None:
        task.attempts += 1
        ref = self._remote.remote(task.job, task.kwargs, task.limits, self.threads, self.trusted_prefixes)
        with self._lock:
            self._tasks[ref] = task

    def _complete_loop(self) -> None:
        """The background thread: complete each future when its ref is ready."""
        ray = _import_ray()
        while not self._closing:
            with self._lock:
                refs = list(self._tasks)
            if not refs:
                threading.Event().wait(_WAIT_S)
                continue
            try:
                ready, _ = ray.wait(refs, num_returns=1, timeout=_WAIT_S)
            except Exception:  # noqa: BLE001 - Ray went away (shutdown): the close path finishes
                threading.Event().wait(_WAIT_S)
                continue
            for ref in ready:
                with self._lock:
                    task = self._tasks.pop(ref, None)
                if task is not None:
                    self._finish(ray, ref, task)

    def _finish(self, ray: Any, ref: Any, task: _Task) -> None:
        """Complete `task` from its ready `ref`, or resubmit it after an infrastructure fault."""
        exc = ray.exceptions
        try:
            result = ray.get(ref)
        except exc.TaskCancelledError:  # before RayTaskError: a cancelled task raises both
            _set_result(task.future, JobResult(False, error="cancelled: the executor was closed",
                                               killed_reason=CRASH, infra=True))
            return
        except exc.RayTaskError as e:  # the task function itself raised (e.g. an untrusted job path)
            _set_exception(task.future, getattr(e, "cause", None) or e)
            return
        except exc.RayError as e:  # worker / node died, object lost, Ray system error, OOM killer...
            why = f"{type(e).__name__}: {_first_line(str(e))}"
            task.errors.append(why)
            if task.attempts <= self.options.retries and not self._closing:
                self.infra_retries += 1
                log.warning("ray: %s lost to an infrastructure fault (%s); resubmitting (%d/%d)",
                            task.job, why, task.attempts, self.options.retries)
                self._launch(task)
                return
            error = f"infrastructure fault after {task.attempts} attempt(s): {'; '.join(task.errors)}"
            _set_result(task.future, JobResult(False, error=error, killed_reason=CRASH, infra=True))
            return
        except Exception as e:  # noqa: BLE001 - e.g. a result that cannot be unpickled here
            _set_exception(task.future, e)
            return
        _set_result(task.future, result)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError('executor "ray" needs Ray: pip install "evounlearn[ray]" (or "ray>=2.9")') from None
    return ray


def _set_result(fut: Future[JobResult], res: JobResult) -> None:
    with contextlib.suppress(InvalidStateError):  # close(kill=True) and the thread may race
        fut.set_result(res)


def _set_exception(fut: Future[JobResult], e: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):
        fut.set_exception(e)


def _first_line(text: str | None, n: int = 200) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0][:n] if lines else ""
