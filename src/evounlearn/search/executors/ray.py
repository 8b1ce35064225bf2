"""`executor: ray`: candidate evaluations on Ray actors, on a local Ray instance or a cluster.

Long-lived Ray actors (`SandboxActor`) hold the slots: each slot is one warm
`sandbox.IsolatedWorker`, the SAME isolated worker process as `LocalExecutor` (same wall / CPU /
memory limits, 1 torch thread, same confinement), started once when its actor starts and
restarted by the worker itself after a kill or crash (~0.02 s: its fork server keeps torch
imported). An actor holds `RayConfig.slots_per_actor` slots and that many times one slot's
resources (CPUs, GPUs, memory); its slots' workers share its fork server, so torch and the
benchmark's modules are imported once per actor, not once per slot. By default a local instance
puts every slot in one actor (they are all on this machine anyway: on 2 cores a second fork
server cost ~5 s of CPU at start, and the jobs ran 5-15% slower), and a cluster gets one actor per
slot (Ray places each slot where it fits, an autoscaler sees one slot's demand at a time). A job
goes to an idle slot, whose actor runs it in that slot's worker and returns the worker's
`JobResult` unchanged: generated code never runs in the actor process (nor in the driver), and a
job over its wall limit fails with the same error text on Ray as locally.
Why actors and not one task per job: a task had to start a new sandbox (fork server, torch
import) for every candidate, ~2.5 s each; an actor pays that once.

Futures: `submit` returns a `concurrent.futures.Future[JobResult]`; jobs wait in a queue for an
idle slot, and one background thread waits on the Ray object refs (`ray.wait`) and completes
the futures.

Faults: a job lost to Ray itself (its actor process or node died, its result object was lost, a
Ray system error) is an infrastructure fault, not the candidate's: the actor is replaced by a
fresh one (once, with the same slots: the jobs of its other slots are lost too, and retried) and
the job resubmitted up to `RayConfig.retries` times, then reported as
`JobResult(ok=False, infra=True, ...)`. Jobs cancelled by `close(kill=True)` also come back with
`infra=True`. Ray's own restarts and retries are off (`max_restarts=0`, `max_task_retries=0`) so
that every retry is counted here (`infra_retries`).

Artifacts: the run dir and the prepared models / data / caches are read and written by the jobs
through absolute paths, so they must lie on a file system that every node mounts at the same
path (`shared_paths`, plus `RayConfig.shared_dir`): `start()` writes a marker file into each;
every actor looks for it on its node, and one tiny task per other alive node does the same; a
node that cannot see it fails the start with a one-line ConfigError naming the node and the
path. `RayConfig.runtime_env` (Ray's working_dir / py_modules / env_vars / pip) is for small
things: code and settings. See docs/DISTRIBUTED.md.

Lifetime: a local instance (`address: ""`) is started by, and dies with, the driver; `close()`
ends the actors (with `kill=True`: first their sandboxes' jobs, then the actors), and `--resume`
re-queues the runs the store still lists as "running".

`ray` is imported only when an executor starts: `import evounlearn` never needs it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...sandbox import CRASH, IsolatedWorker, JobResult, Limits, preload_modules
from ...sandbox.confine import describe_layers
from ..config import RayConfig
from .base import Executor

__all__ = ["RayExecutor", "SandboxActor", "check_paths_task", "slot_devices"]

log = logging.getLogger(__name__)

_WAIT_S = 0.2  # how often the completion thread looks at its refs (and at new submissions)
_SOFT_CANCEL_S = 5.0  # close(kill=True): time for actors to kill their sandbox's job before ray.kill
_ACTOR_START_S = 300.0  # start(): how long the actors may take to come up (scheduling, sandbox warm-up)
_STOP_S = 10.0  # close(): time for actors to close their sandbox (remove its scratch dir) before ray.kill
_MARKER = ".evounlearn-ray-check-"
# a second concurrency group, so that `kill_job` runs while `run` is busy in the default one
_CONTROL = "control"
_CANCELLED = "cancelled: the executor was closed"


# --------------------------------------------------------------------------------------------
# actor side (runs inside a Ray worker process)


def no_main_reimport() -> None:
    """Children this process starts do not import its main script again. Called in a Ray actor
    only: its main script is Ray's worker process, whose re-import (the multiprocessing default
    for a script) loaded ray into every sandbox and cost ~0.4 s per sandbox start and restart.
    multiprocessing re-imports a main module found by name unless that name is `__main__`, so a
    main script with no spec gets one by that name: it changes this process's `__main__` module
    only (no library function is replaced), which the actor's process owns."""
    import importlib.machinery
    import sys

    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__spec__", None) is None:
        main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)


def _ray_private_dirs() -> list[str]:
    """This node's Ray temporary and session directories (the raylet's sockets, the cluster's
    auth token): not readable by the sandboxed workers (`confine.hidden_paths` adds the default
    /tmp/ray). Ray's private API, so best effort: none when it is not there."""
    try:
        import ray

        node = ray._private.worker.global_worker.node
        return [str(node.get_temp_dir_path()), str(node.get_session_dir_path())]
    except Exception:  # noqa: BLE001 - another Ray version: the defaults remain
        return []


class SandboxActor:
    """A Ray actor holding the warm IsolatedWorkers of `slots` slots (one job at a time each).

    The workers share this actor's fork server: torch and the benchmark's modules are imported
    once per actor, however many slots it holds. A job runs in its slot's worker child process
    (limits, own process group, confinement), never in this actor's process; after a kill or a
    crash that worker restarts itself for the slot's next job. With GPUs, each slot's worker sees
    its own share of the actor's devices (`slot_devices`).
    """

    def __init__(self, limits: dict[str, Any], threads: int, trusted_prefixes: tuple[str, ...],
                 preload: tuple[str, ...] = (), slots: int = 1, write_paths: list[str] | None = None) -> None:
        no_main_reimport()  # this process is the actor's own: nothing else starts children here
        preload_modules(*preload)  # before the workers: their fork server imports them once
        envs = [{"CUDA_VISIBLE_DEVICES": ",".join(d)} if d else {} for d in slot_devices(_actor_gpus(), slots)]
        self.workers = [IsolatedWorker(threads=threads, trusted_prefixes=trusted_prefixes, env=env,
                                       write_paths=write_paths, hidden_paths=_ray_private_dirs(), **limits)
                        for env in envs]
        # warm now (fork server + first children); a failed start is retried, and reported
        # (infra=True), by the slot's first job's `run`
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.start()

    def missing_paths(self, paths: list[str], marker: str) -> tuple[str, list[str]]:
        """(this actor's node id, the `paths` where that node cannot see the driver's `marker`)."""
        import ray

        return ray.get_runtime_context().get_node_id(), check_paths_task(paths, marker)

    def layers(self) -> list[dict[str, str]]:
        """Each slot's confinement layers (`IsolatedWorker.layers`: netns, landlock, ...)."""
        return [dict(w.layers) for w in self.workers]

    def run(self, slot: int, job: str, kwargs: dict[str, Any], limits: dict[str, Any]) -> JobResult:
        """`job(**kwargs)` in slot `slot`'s sandbox, with this job's `limits`."""
        return self.workers[slot].run(job, kwargs, **limits)

    def kill_job(self, slot: int) -> None:
        """Kill slot `slot`'s sandbox process group now (called in the control group, while `run`
        waits): its job comes back as a "crash" and the worker restarts for the next one."""
        with contextlib.suppress(Exception):  # no child (idle or already dead): nothing to kill
            pid = self.workers[slot].pid
            if pid is not None:
                os.killpg(pid, signal.SIGKILL)

    def shutdown(self) -> None:
        """Stop the sandboxes and remove their scratch directories (before the actor is killed)."""
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.close()


def slot_devices(devices: Sequence[str], slots: int) -> list[list[str]]:
    """Each slot's share of an actor's GPUs: whole devices split evenly when there are at least
    as many devices as slots (4 devices, 2 slots: 2 each), else slots share a device
    (fractional `num_gpus`: 1 device, 2 slots: both see it); no devices: none for any slot."""
    m = len(devices)
    if not m:
        return [[] for _ in range(slots)]
    if m >= slots:
        return [list(devices[i * m // slots:(i + 1) * m // slots]) for i in range(slots)]
    return [[devices[i * m // slots]] for i in range(slots)]


def _actor_gpus() -> list[str]:
    """The devices Ray gave this actor (its CUDA_VISIBLE_DEVICES), none without GPUs."""
    import ray

    if not ray.get_gpu_ids():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return [d for d in visible.split(",") if d.strip()]


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
    """Jobs on `n` slots held by Ray actors (`slots_per_actor` each), one isolated worker per slot;
    see the module docstring."""

    def __init__(self, n: int = 1, limits: Limits | None = None, threads: int = 1,
                 options: RayConfig | Mapping[str, Any] | None = None, shared_paths: Sequence[str] = (),
                 trusted_prefixes: Sequence[str] = ("evounlearn.",), preload: Sequence[str] = (),
                 write_paths: Sequence[str] | None = None) -> None:
        """`write_paths`: where the sandboxes may write besides their scratch folder (Landlock, on
        nodes whose kernel has it), as `LocalExecutor`; None: writes are not confined."""
        if n < 1:
            raise ConfigError(f"workers must be >= 1, got {n}")
        self.slots = n
        self.limits = limits or Limits()
        self.threads = threads
        self.options = options if isinstance(options, RayConfig) else RayConfig(**dict(options or {}))
        if self.options.retries < 0:
            raise ConfigError(f"ray.retries must be >= 0, got {self.options.retries}")
        if self.options.slots_per_actor < 0:
            raise ConfigError(f"ray.slots_per_actor must be >= 0 (0 = automatic), got {self.options.slots_per_actor}")
        paths = [*shared_paths, *([self.options.shared_dir] if self.options.shared_dir else [])]
        self.shared_paths = [str(Path(p).resolve()) for p in paths if p]
        for k in set(self.actor_slots()):  # Ray refuses a fraction of GPUs above 1 (fine for CPUs)
            gpus = self.options.num_gpus * k
            if gpus > 1 and gpus != int(gpus):
                raise ConfigError(f"ray.num_gpus={self.options.num_gpus:g} x {k} slots per actor = {gpus:g}: Ray needs "
                                  "a whole number of GPUs above 1; choose ray.slots_per_actor so that it is one")
        self.trusted_prefixes = tuple(trusted_prefixes)
        self.preload = tuple(preload)  # imported by each actor's sandbox before its first job
        self.write_paths = None if write_paths is None else [str(Path(p).resolve()) for p in write_paths]
        self.infra_retries = 0  # jobs resubmitted after an infrastructure fault
        self._lock = threading.Lock()
        self._actor_class: Any = None  # the ray.remote SandboxActor, once started
        self._actors: dict[Any, int] = {}  # the live actor handles -> how many slots each holds
        self._idle: deque[tuple[Any, int]] = deque()  # (actor, slot) without a job
        self._queue: deque[_Task] = deque()  # jobs waiting for an idle slot
        self._running: dict[Any, tuple[_Task, Any, int]] = {}  # ray ObjectRef -> (task, its actor, slot)
        self._submitted: list[_Task] = []  # every task whose future may still be pending
        self._owns_ray = False
        self._closing = False
        self._killing = False  # close(kill=True) is cancelling: whatever completes is "cancelled"
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Connect to (or start) Ray, check the shared paths on every node, start the actors."""
        with self._lock:
            if self._actor_class is not None:
                return
            ray = _import_ray()
            if not ray.is_initialized():
                self._init_ray(ray)
            self._closing = self._killing = False
            self._actor_class = ray.remote(concurrency_groups={_CONTROL: 1})(SandboxActor)
            for k in self.actor_slots():
                self._new_actor(k)
            try:
                self._check_shared_paths(ray)
            except BaseException:
                self._stop_actors(ray, 0.0)
                self._actor_class = None
                self._shutdown_ray(ray)
                raise
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

    def actor_slots(self) -> list[int]:
        """How many slots each actor holds: `slots_per_actor` at a time (the last actor the rest);
        0 = all in one actor on a local instance (`address: ""`: every slot is on this machine
        anyway), one per actor on a cluster (Ray places, and an autoscaler sizes, slot by slot)."""
        per = self.options.slots_per_actor or (self.slots if not self.options.address else 1)
        per = max(1, min(per, self.slots))
        return [min(per, self.slots - i) for i in range(0, self.slots, per)]

    def _actor_options(self, slots: int) -> dict[str, Any]:
        """What an actor of `slots` slots holds for its lifetime: each slot's resources times
        `slots`; one thread per slot for `run` and one for the control calls (`kill_job`). Each
        slot's sandbox sees its own share of the GPUs Ray gave the actor (`slot_devices`), and a
        replaced actor is a new process: no GPU is shared between slots (unless `num_gpus` < 1)."""
        opts = self.options
        out: dict[str, Any] = {"num_cpus": opts.num_cpus * slots, "num_gpus": opts.num_gpus * slots,
                               "max_restarts": 0, "max_task_retries": 0, "max_concurrency": slots}
        if opts.memory_mb:
            out["memory"] = int(opts.memory_mb) * slots * 1024 * 1024
        return out

    def _new_actor(self, slots: int) -> Any:
        """Start one more actor of `slots` slots, all idle (it starts asynchronously: their first
        jobs wait until it is up). Called with the lock held, or before the executor runs."""
        actor = self._actor_class.options(**self._actor_options(slots)).remote(
            self.limits.as_kwargs(), self.threads, self.trusted_prefixes, self.preload, slots, self.write_paths)
        self._actors[actor] = slots
        self._idle.extend((actor, s) for s in range(slots))
        return actor

    def _check_shared_paths(self, ray: Any) -> None:
        """Every alive node must see a marker file the driver wrote into each shared path. The
        actors (just started) look on their own nodes, which also waits for them to be up: the
        first job would wait for that anyway; a tiny task pinned to each other alive node looks
        there (on one machine: none, so no extra Ray worker process is started)."""
        if not self.shared_paths:
            return
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        marker = _MARKER + uuid.uuid4().hex
        for p in self.shared_paths:
            Path(p).mkdir(parents=True, exist_ok=True)
            (Path(p) / marker).write_text("evounlearn: shared file system check\n")
        try:
            nodes = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
            try:
                seen = dict(ray.get([a.missing_paths.remote(self.shared_paths, marker) for a in self._actors],
                                    timeout=_ACTOR_START_S))
            except ray.exceptions.GetTimeoutError:
                o, k = self.options, max(self._actors.values())
                raise ConfigError(f"ray: {len(self._actors)} actor(s) did not start within {_ACTOR_START_S:g} s: "
                                  f"does the cluster have a node with the resources one of {k} slot(s) asks for "
                                  f"(num_cpus={o.num_cpus * k:g}, num_gpus={o.num_gpus * k:g}, "
                                  f"memory_mb={(o.memory_mb or 0) * k})?") from None
            self._log_layers(ray)
            check = ray.remote(check_paths_task)
            refs = {n: check.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
                    n, soft=False)).remote(self.shared_paths, marker) for n in nodes if n not in seen}
            seen.update({n: ray.get(ref, timeout=120) for n, ref in refs.items()})
            for node_id, missing in seen.items():
                if missing:
                    node = nodes.get(node_id, {})
                    raise ConfigError(
                        f"ray node {node.get('NodeManagerAddress', '?')} ({node_id[:12]}) cannot see "
                        f"{missing[0]}: the run dir and the cache must be on a file system shared by every node")
        finally:
            for p in self.shared_paths:
                with contextlib.suppress(OSError):
                    (Path(p) / marker).unlink()

    def _log_layers(self, ray: Any) -> None:
        """One INFO line per distinct set of sandbox layers on the actors (as the local pool logs
        its one): whether network isolation and Landlock hold on those nodes."""
        with contextlib.suppress(Exception):  # only a log line: never stop the start for it
            seen = {describe_layers(w) for slots in ray.get([a.layers.remote() for a in self._actors], timeout=60)
                    for w in slots if w}
            for line in sorted(seen):
                log.info("ray actors: %s", line)

    def close(self, kill: bool = False) -> None:
        """Wait for the jobs in flight (or, with `kill`, cancel them), then end the actors and
        let go of Ray."""
        if self._actor_class is None:
            return
        ray = _import_ray()
        if kill:
            self._cancel_all(ray)
        else:
            for t in list(self._submitted):
                with contextlib.suppress(Exception):
                    t.future.result()
        self._closing = True
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        # killed: a job that ignored the kill (or an actor still starting) is not waited for long;
        # its sandbox dies with the actor (the fork server exits with it, the child with the server)
        self._stop_actors(ray, _SOFT_CANCEL_S if kill else _STOP_S)
        self._actor_class = None
        self._shutdown_ray(ray)

    def _cancel_all(self, ray: Any) -> None:
        """Cancel every job: those waiting at once; those running by killing their sandbox (the
        actor answers a "crash"), waited on for a few seconds; the actors are killed after."""
        with self._lock:
            self._killing = True
            waiting = list(self._queue)
            self._queue.clear()
            refs = list(self._running)
            busy = [(actor, slot) for _, actor, slot in self._running.values()]
        for actor, slot in busy:
            with contextlib.suppress(Exception):
                actor.kill_job.options(concurrency_group=_CONTROL).remote(slot)
        with contextlib.suppress(Exception):
            ray.wait(refs, num_returns=len(refs), timeout=_SOFT_CANCEL_S)
        with self._lock:
            running = [self._running.pop(r)[0] for r in refs if r in self._running]
        for t in [*waiting, *running]:  # the completion thread no longer sees these
            _set_result(t.future, _cancelled())

    def _stop_actors(self, ray: Any, wait_s: float) -> None:
        """Let each actor close its sandbox (scratch dir removed) within `wait_s`, then kill it."""
        with self._lock:
            actors, self._actors = list(self._actors), {}
            self._idle.clear()
        stops = []
        for actor in actors:
            with contextlib.suppress(Exception):
                stops.append(actor.shutdown.remote())
        with contextlib.suppress(Exception):
            ray.wait(stops, num_returns=len(stops), timeout=wait_s)
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)

    def _shutdown_ray(self, ray: Any) -> None:
        if self._owns_ray:
            with contextlib.suppress(Exception):
                ray.shutdown()
            self._owns_ray = False

    # -- jobs ---------------------------------------------------------------------------------
    def submit(self, job: str, kwargs: Mapping[str, Any], limits: Limits | None = None) -> Future[JobResult]:
        task = _Task(job, dict(kwargs), (limits or self.limits).as_kwargs(), Future())
        task.future.set_running_or_notify_cancel()
        untrusted = _untrusted(job, self.trusted_prefixes)
        if untrusted is not None:  # a programming error: fail here, before any actor starts
            task.future.set_exception(untrusted)
            return task.future
        self.start()
        with self._lock:
            self._submitted = [t for t in self._submitted if not t.future.done()]
            self._submitted.append(task)
            self._queue.append(task)
        self._dispatch()
        return task.future

    def _dispatch(self) -> None:
        """Hand waiting jobs to idle slots."""
        with self._lock:
            while self._queue and self._idle and not self._killing:
                task, (actor, slot) = self._queue.popleft(), self._idle.popleft()
                task.attempts += 1
                ref = actor.run.remote(slot, task.job, task.kwargs, task.limits)
                self._running[ref] = (task, actor, slot)

    def _complete_loop(self) -> None:
        """The background thread: complete each future when its ref is ready."""
        ray = _import_ray()
        while not self._closing:
            with self._lock:
                refs = list(self._running)
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
                    entry = self._running.pop(ref, None)
                if entry is not None:
                    self._finish(ray, ref, *entry)
            self._dispatch()

    def _finish(self, ray: Any, ref: Any, task: _Task, actor: Any, slot: int) -> None:
        """Complete `task` from its ready `ref` and free its slot, or, after an infrastructure
        fault, replace the actor and queue the task again."""
        exc = ray.exceptions
        if self._killing:
            _set_result(task.future, _cancelled())
            return
        try:
            result = ray.get(ref)
        except exc.TaskCancelledError:  # before RayTaskError: a cancelled task raises both
            _set_result(task.future, _cancelled())
        except exc.RayTaskError as e:  # the actor's method itself raised (the actor lives on)
            _set_exception(task.future, getattr(e, "cause", None) or e)
        except exc.RayError as e:  # actor / node died, object lost, Ray system error, OOM killer...
            self._replace_actor(ray, actor)
            self._retry_or_fail(task, f"{type(e).__name__}: {_first_line(str(e))}")
            return
        except Exception as e:  # noqa: BLE001 - e.g. a result that cannot be unpickled here
            _set_exception(task.future, e)
        else:
            _set_result(task.future, result)
        with self._lock:
            if actor in self._actors:  # not if it was replaced meanwhile (another slot's fault)
                self._idle.append((actor, slot))

    def _replace_actor(self, ray: Any, actor: Any) -> None:
        """A fresh actor in place of one lost to an infrastructure fault (once: its other slots'
        jobs fail too, and are retried, but find it already replaced)."""
        with self._lock:
            slots = self._actors.pop(actor, None)
            if slots is None:
                return
            self._idle = deque(e for e in self._idle if e[0] != actor)
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)  # may still live (e.g. its node is only unreachable)
        with self._lock:
            if not self._closing:
                self._new_actor(slots)

    def _retry_or_fail(self, task: _Task, why: str) -> None:
        task.errors.append(why)
        if task.attempts <= self.options.retries and not self._closing:
            self.infra_retries += 1
            log.warning("ray: %s lost to an infrastructure fault (%s); resubmitting (%d/%d)",
                        task.job, why, task.attempts, self.options.retries)
            with self._lock:
                self._queue.appendleft(task)
            return
        error = f"infrastructure fault after {task.attempts} attempt(s): {'; '.join(task.errors)}"
        _set_result(task.future, JobResult(False, error=error, killed_reason=CRASH, infra=True))


def _untrusted(job: str, trusted_prefixes: tuple[str, ...]) -> ValueError | None:
    """The error for a job path outside the trusted prefixes (the sandbox checks it again)."""
    module = job.partition(":")[0]
    if any(module.startswith(p) or module == p.rstrip(".") for p in trusted_prefixes):
        return None
    return ValueError(f"job function {job!r} is not under a trusted prefix {trusted_prefixes}")


def _cancelled() -> JobResult:
    return JobResult(False, error=_CANCELLED, killed_reason=CRASH, infra=True)


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
