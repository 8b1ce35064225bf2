"""Run untrusted work in separate worker processes with OS limits.

A job is `(function_path, kwargs)`: `function_path` ("package.module:function") names a
**trusted** module-level function of this package (e.g. `evounlearn.sandbox.jobs:validate_source`)
that itself compiles and runs the untrusted code; only paths under `trusted_prefixes` are accepted.
The driver never imports or executes candidate code.

`IsolatedWorker` is one long-lived child process (its side: `worker_process.py`); `run(...)` sends
a job and waits for its `JobResult(ok, value, error, cpu_seconds, wall_seconds, killed_reason)`
(`job_result.py`). Nothing the child does is
raised in the driver: exceptions come back as `error`; crashes, limits and kills as
`killed_reason`, after which the worker is restarted transparently for the next job.

Process and limits (measured on a 2-core Linux box, torch 2.13 CPU, Python 3.11):
- start method: "forkserver" with torch and the sandbox modules preloaded in the fork server
  (`set_forkserver_preload(PRELOAD)`); the child's entry point is the module-level
  `worker_main` of `worker_process.py`. Starting a worker costs ~2 s once (the fork server imports
  torch), then ~0.02 s per worker or restart; "spawn" costs ~1.8 s every time (each child
  imports torch). The fork server only imports modules (no torch op runs there, so no OpenMP
  pool exists before the fork: the child starts with one thread), which avoids the
  fork-after-threads problems of plain "fork". Falls back to "spawn" where forkserver is
  unavailable. Like other multiprocessing children, a worker imports the parent's main script
  again (as `__mp_main__`, so its `if __name__ == "__main__":` block does not run); it needs
  nothing from it (its entry point and every job are imported by module path). A Ray actor,
  whose main script is Ray's worker process (re-importing it loaded ray into every sandbox,
  ~0.4 s per start), turns that off for its own process only (`search/executors/ray.py`).
- each worker calls `setsid()` (own process group, detached from the terminal), sets
  RLIMIT_CORE=0, runs in a fresh temporary directory (its cwd and TMPDIR, removed by the driver),
  sets torch to `threads` intra-op threads (default 1) and marks itself with
  `WORKER_ENV` so that `compiler.compile_function` only works there.
- wall clock: enforced by the driver; on timeout it kills the whole process group (SIGKILL) and
  reports "wall time limit".
- CPU time: before each job the worker sets the soft RLIMIT_CPU to (its CPU time so far + limit);
  the kernel then sends SIGXCPU, which terminates the worker: "cpu time limit". The hard limit is
  left alone (an unprivileged process could never raise it again).
- memory: RLIMIT_DATA soft limit = the worker's current VmData + `memory_limit_mb` before each
  job. Measured: with torch imported a worker has VmSize ~640 MB but VmData ~220 MB; RLIMIT_DATA
  counts private writable mappings (heap, anonymous mmap: where tensors live) and not file
  mappings (shared libraries) nor PROT_NONE reservations, so it works with torch imported
  (RLIMIT_AS also works on CPU, but counts all of the ~640 MB address space). CUDA reserves far
  more address space than it uses; RLIMIT_DATA should tolerate that since those reservations are
  PROT_NONE, but this was not measured on a GPU: if CUDA initialisation fails in a worker, pass
  `rlimit_data=False` and only the RSS watchdog below applies. The CPU limit counts all threads
  of the worker: scale it with `threads`.
  An allocation over the limit fails immediately inside the job (`torch.zeros(10**10)`: a
  RuntimeError "can't allocate memory" in 0.01 s; `[0] * 10**9`: MemoryError); the job reports
  "memory limit" and the worker is restarted. As a backstop the driver polls the worker's RSS
  every 0.1 s and kills the group when it exceeds its start value + limit + 256 MB.
- a segfault, `os._exit`, or any death of the child: "crash" with the signal or exit code in
  `error`. RecursionError and other exceptions: ok=False, `error` "RecursionError: ...",
  `killed_reason` None (the worker survives).

- hard step deadline: a job may declare that a block must end by a moment
  (`timers.hard_deadline(seconds)`, e.g. one call of a loss in training, see `guards.py`); the
  moment sits in a slot of shared memory (two doubles, one per worker) that the driver's watch
  loop reads every 0.1 s, and the worker's process group is killed once it is past: "step
  deadline". This stops a single C call (a torch op running for 45 minutes) that no signal
  handler inside the worker could interrupt.

killed_reason values: "wall time limit", "cpu time limit", "memory limit", "step deadline",
"crash", or None.

Defence in depth:
- results come back as JSON text (`send_bytes`), never as pickles: the driver never unpickles
  anything a worker sends. A job's return value must be JSON-ready; tensors / numpy values
  (`.tolist()`), tuples (lists), sets, paths and dataclasses are converted at the job edge, and
  anything else makes the job fail with "... not JSON-ready";
- the child's stdout and stderr (Python's and C's: warnings, torch messages) go to `log_file`
  (default: `worker.log` in its scratch directory), never to the driver's terminal;
- OS layers (`confine.py`), each skipped with its reason where the OS refuses it: PR_SET_PDEATHSIG
  (the worker dies with the fork server, which dies with the driver: no worker outlives a
  `kill -9` of the driver), a new network namespace (`isolate_network`, default on: no network;
  pass False for jobs that must download), Landlock (`write_paths`: None = off, default; a
  sequence = writes confined to the scratch directory, those paths and /dev/null, reads allowed
  everywhere but Ray's session directory and `hidden_paths`; /tmp is not writable, TMPDIR is the
  scratch directory; with ABI >= 6 no signal to, and no abstract Unix socket of, a process
  outside the worker), and with Landlock a seccomp filter refusing `socket(AF_UNIX)` (no pathname
  Unix socket). The first start logs one INFO line, e.g. "sandbox layers: rlimits, pdeathsig,
  netns=on, landlock=on (ABI 7: writes, reads, tcp, scopes), seccomp=on (no AF_UNIX sockets)";
  a pool logs it once; `IsolatedWorker.layers` holds them.

`WorkerPool(n)` runs up to n jobs in parallel, one worker process each, with the same API
(`run`, `submit` -> concurrent.futures.Future[JobResult], `map`). `Limits` bundles the three
per-job limits (`Limits(...).as_kwargs()` gives the keyword arguments of `run` / `submit`).
"""


from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .confine import describe_layers
from .forkserver_init import FORKSERVER_FLAG
from .job_result import CPU_LIMIT, CRASH, MEMORY_LIMIT, STEP_DEADLINE, WALL_LIMIT, JobResult
from .worker_process import process_status_kb, worker_main

log = logging.getLogger(__name__)

__all__ = ["DEFAULT", "IsolatedWorker", "WorkerPool", "preload_modules"]

#: The process name of the isolated workers (what `_preparation_data` recognises).
_WORKER_NAME = "evounlearn-worker"

#: Imported once by the fork server, so that a worker (re)starts in ~0.02 s.
PRELOAD = ("evounlearn.sandbox.forkserver_init", "torch", "torch.nn.functional", "evounlearn.sandbox.jobs", "evounlearn.sandbox.worker_process")
_EXTRA_PRELOAD: list[str] = []  # added by `preload_modules` (the jobs' heavy imports)
RSS_MARGIN_MB = 256
MAX_RESULT_BYTES = 512 * 1024 * 1024  # a bigger JSON result is refused (the worker is killed)
_POLL_S = 0.1


class _Default:
    """Marker: use the worker's default limit."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()



_CTX_LOCK = threading.Lock()


def preload_modules(*names: str) -> None:
    """Have the fork server also import `names` when it starts: the heavy imports every job of a
    run needs (e.g. `transformers.modeling_utils`, ~3 s), so that each worker's first job does not
    pay them. Call before the first worker of this process is created; a fork server already
    running keeps what it has (only speed is lost). A name that cannot be imported is skipped by
    the fork server (the job then imports, and reports, it)."""
    with _CTX_LOCK:
        for name in names:
            if name and name not in PRELOAD and name not in _EXTRA_PRELOAD:
                _EXTRA_PRELOAD.append(str(name))


def _context(start_method: str | None) -> mp.context.BaseContext:
    method = start_method
    if method is None:
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        with _CTX_LOCK:
            ctx.set_forkserver_preload([*PRELOAD, *_EXTRA_PRELOAD])
            _start_forkserver()
    return ctx


def _start_forkserver() -> None:
    """Start the fork server now when on the main thread, flagged to die with this process
    (`forkserver_init`); from another thread it starts later, unflagged (PR_SET_PDEATHSIG would
    fire when that thread ends), and still exits when this process's pipe to it closes."""
    from multiprocessing import forkserver

    if threading.current_thread() is not threading.main_thread():
        return
    os.environ[FORKSERVER_FLAG] = str(os.getpid())
    try:
        forkserver.ensure_running()
    except RuntimeError:  # e.g. a script's main module being re-imported in a child: start lazily
        pass
    finally:
        os.environ.pop(FORKSERVER_FLAG, None)


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


class IsolatedWorker:
    """One long-lived child process that runs trusted job functions under OS limits.

    Limits given here are defaults for every job; `run(...)` can override them per job
    (None = no limit). Not thread-safe per instance (use `WorkerPool` for parallel jobs).
    """

    def __init__(
        self,
        *,
        wall_limit_s: float | None = 600.0,
        cpu_limit_s: float | None = 600.0,
        memory_limit_mb: int | None = 4096,
        threads: int = 1,
        start_method: str | None = None,
        start_timeout_s: float = 180.0,
        trusted_prefixes: Iterable[str] = ("evounlearn.",),
        rlimit_data: bool = True,
        isolate_network: bool = True,
        write_paths: Iterable[str] | None = None,
        log_file: str | None = None,
        env: Mapping[str, str] | None = None,
        hidden_paths: Iterable[str] = (),
    ) -> None:
        self.wall_limit_s = wall_limit_s
        self.cpu_limit_s = cpu_limit_s
        self.memory_limit_mb = memory_limit_mb
        self.threads = threads
        self.start_timeout_s = start_timeout_s
        self.trusted_prefixes = tuple(trusted_prefixes)
        self.rlimit_data = rlimit_data
        self.isolate_network = isolate_network
        self.write_paths = None if write_paths is None else [os.path.abspath(p) for p in write_paths]
        self.log_file = None if log_file is None else os.path.abspath(log_file)
        self.env = {str(k): str(v) for k, v in (env or {}).items()}  # set in the child before any job
        self.hidden_paths = [os.path.abspath(p) for p in hidden_paths]  # not readable (with Landlock)
        self.layers: dict[str, str] = {}  # the confinement layers of the running child
        self._ctx = _context(start_method)
        # the child's hard deadline (timers.hard_deadline): [monotonic deadline or 0, budget s]
        self._deadline = self._ctx.RawArray("d", 2)
        self.start_method = self._ctx.get_start_method()
        self._proc: Any = None
        self._conn: mpc.Connection | None = None
        self._workdir: str | None = None
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self.restarts = 0  # number of times the process was replaced after a kill or crash
        self.starts = 0
        self.last_start_seconds = 0.0
        self.log_layers = True  # one INFO line at the first start (a pool logs once for all)

    # -- lifecycle
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def start(self) -> None:
        """Start the child process (no-op when it is running)."""
        if self.alive:
            return
        self._cleanup()
        t0 = time.monotonic()
        self._workdir = tempfile.mkdtemp(prefix="evounlearn-worker-")
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=worker_main,
            args=(child, self._workdir, self.threads, self.isolate_network, self.write_paths, self.log_file,
                  self.env, self._deadline, self.hidden_paths),
            daemon=True,
            name=_WORKER_NAME,
        )
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        ready = mpc.wait([parent, proc.sentinel], timeout=self.start_timeout_s)
        msg = None
        if parent in ready:
            with contextlib.suppress(EOFError, OSError, ValueError):
                msg = json.loads(parent.recv_bytes(MAX_RESULT_BYTES))
        if not isinstance(msg, list) or not msg or msg[0] != "ready":
            self.kill()
            raise RuntimeError(f"isolated worker failed to start (exit code {proc.exitcode})")
        first = not self.layers
        self.layers = dict(msg[1].get("layers") or {}) if isinstance(msg[1], dict) else {}
        if first and self.log_layers:
            log.info(describe_layers(self.layers))
        self.starts += 1
        self.last_start_seconds = time.monotonic() - t0

    def close(self) -> None:
        """Stop the child and remove its working directory."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._conn is not None and self.alive:
            with contextlib.suppress(OSError, BrokenPipeError):
                self._conn.send(("stop",))
            self._proc.join(2.0)
        self.kill()

    def __enter__(self) -> IsolatedWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort
        with contextlib.suppress(Exception):
            self.kill()

    def kill(self) -> None:
        """Kill the child's whole process group now (a job in flight completes with a "crash"
        JobResult) and remove its working directory; the next job starts a fresh child."""
        proc = self._proc
        if proc is not None:
            if proc.is_alive():
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError, OSError):
                    with contextlib.suppress(Exception):
                        proc.kill()
            proc.join(5.0)
            with contextlib.suppress(Exception):
                proc.close()
        self._proc = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def _restart_after_failure(self) -> None:
        self.kill()
        self.restarts += 1

    # -- jobs
    def _check_path(self, function_path: str) -> None:
        module, sep, attr = function_path.partition(":")
        if not sep or not module or not attr:
            raise ValueError(
                f"job function path must look like 'package.module:function', got {function_path!r}"
            )
        if not any(module.startswith(p) or module == p.rstrip(".") for p in self.trusted_prefixes):
            raise ValueError(
                f"job function {function_path!r} is not under a trusted prefix {self.trusted_prefixes}"
            )

    def run(
        self,
        function_path: str,
        kwargs: Mapping[str, Any] | None = None,
        *,
        wall_limit_s: float | None | _Default = DEFAULT,
        cpu_limit_s: float | None | _Default = DEFAULT,
        memory_limit_mb: int | None | _Default = DEFAULT,
    ) -> JobResult:
        """Run one job in the child and wait for it; never raises for anything the job does
        (only for a malformed or untrusted `function_path`, which is a programming error).
        Limits default to the worker's; None disables one."""
        self._check_path(function_path)
        wall = self.wall_limit_s if isinstance(wall_limit_s, _Default) else wall_limit_s
        cpu = self.cpu_limit_s if isinstance(cpu_limit_s, _Default) else cpu_limit_s
        mem = self.memory_limit_mb if isinstance(memory_limit_mb, _Default) else memory_limit_mb
        with self._lock:
            try:
                self.start()
            except Exception as e:
                return JobResult(False, error=f"worker start failed: {e}", killed_reason=CRASH, infra=True)
            return self._run_locked(function_path, dict(kwargs or {}), wall, cpu, mem)  # type: ignore[arg-type]

    def _run_locked(
        self,
        function_path: str,
        kwargs: dict[str, Any],
        wall: float | None,
        cpu: float | None,
        mem: int | None,
    ) -> JobResult:
        conn, proc = self._conn, self._proc
        assert conn is not None and proc is not None
        self._deadline[0] = self._deadline[1] = 0.0  # none left over from a killed job
        watch = _Watch(proc.pid, wall, mem, self._deadline)
        try:
            conn.send(("job", function_path, kwargs, cpu, mem if self.rlimit_data else None))
        except Exception as e:  # unpicklable kwargs or dead pipe
            if not proc.is_alive():
                self._restart_after_failure()
                return JobResult(False, error=f"worker died before the job: {e}", killed_reason=CRASH)
            return JobResult(False, error=f"could not send the job: {type(e).__name__}: {e}")
        outcome = _wait_for_result(conn, proc, watch)
        if isinstance(outcome, JobResult):
            if outcome.killed_reason is not None:
                self._restart_after_failure()
            return outcome
        result = _failure_result(outcome, proc.exitcode, watch, cpu)
        self._restart_after_failure()
        return result

    def submit(
        self, function_path: str, kwargs: Mapping[str, Any] | None = None, **limits: Any
    ) -> Future[JobResult]:
        """Run a job in the background (jobs of one worker run one after the other)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evounlearn-worker")
        return self._executor.submit(self.run, function_path, kwargs, **limits)

    def map(
        self, function_path: str, kwargs_list: Iterable[Mapping[str, Any]], **limits: Any
    ) -> list[JobResult]:
        """Run jobs one after the other; results in order."""
        return [self.run(function_path, kw, **limits) for kw in kwargs_list]


class _Watch:
    """The driver's view of one running job: elapsed time, CPU time and RSS of the child."""

    def __init__(self, pid: int, wall: float | None, mem: int | None, deadline: Any = None) -> None:
        self.pid, self.wall, self.mem = pid, wall, mem
        self.deadline = deadline  # the child's shared [deadline, budget] slot, or None
        self.budget = 0.0  # the budget of the step deadline that was run past
        self.rss0 = process_status_kb("VmRSS", pid) or 0
        self.cpu0 = self.last_cpu = _proc_cpu(pid)
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def cpu_seconds(self) -> float:
        return (self.last_cpu - self.cpu0) if (self.last_cpu is not None and self.cpu0 is not None) else 0.0

    def over_limit(self) -> str | None:
        """WALL_LIMIT / MEMORY_LIMIT / STEP_DEADLINE when the job is past one, else None."""
        if self.deadline is not None:
            at, budget = self.deadline[0], self.deadline[1]
            if at > 0 and time.monotonic() > at:
                self.budget = budget
                return STEP_DEADLINE
        now_cpu = _proc_cpu(self.pid)
        if now_cpu is not None:
            self.last_cpu = now_cpu
        if self.wall is not None and self.elapsed() >= self.wall:
            return WALL_LIMIT
        if self.mem is not None:
            rss = process_status_kb("VmRSS", self.pid)
            if rss is not None and rss - self.rss0 > (self.mem + RSS_MARGIN_MB) * 1024:
                return MEMORY_LIMIT
        return None


def _wait_for_result(conn: mpc.Connection, proc: Any, watch: _Watch) -> JobResult | str | None:
    """The job's JobResult, or the limit it ran past, or None when the child died."""
    while True:
        timeout = _POLL_S if watch.wall is None else max(0.0, min(_POLL_S, watch.wall - watch.elapsed()))
        ready = mpc.wait([conn, proc.sentinel], timeout=timeout)
        if conn in ready:
            try:
                msg = json.loads(conn.recv_bytes(MAX_RESULT_BYTES))
            except (EOFError, OSError, ValueError):  # closed, too big, or not JSON
                msg = None
            if isinstance(msg, list) and len(msg) == 6 and msg[0] == "result":
                _, ok, value, error, cpu_s, killed_in = msg
                return JobResult(ok, value, error, float(cpu_s), watch.elapsed(), killed_in)
            proc.join(2.0)  # the pipe closed: the child is dying
            return None
        if not proc.is_alive() or (proc.sentinel in ready):
            proc.join(1.0)
            return None
        killed = watch.over_limit()
        if killed is not None:
            return killed


def _failure_result(killed: str | None, code: int | None, watch: _Watch, cpu_limit: float | None) -> JobResult:
    """The JobResult of a job whose child was killed for `killed` or died with exit `code`."""
    times = {"cpu_seconds": watch.cpu_seconds(), "wall_seconds": watch.elapsed()}
    if killed == STEP_DEADLINE:
        error = (f"{killed} exceeded: one call ran past its hard deadline of {watch.budget:.3g} s "
                 "(stopped from outside the worker); worker killed")
        return JobResult(False, error=error, killed_reason=killed, **times)
    if killed is not None:
        limit, unit = (watch.wall, "s") if killed == WALL_LIMIT else (watch.mem, " MB")
        error = f"{killed} exceeded ({limit}{unit}); worker killed"
        return JobResult(False, error=error, killed_reason=killed, **times)
    if code is not None and code < 0 and -code == signal.SIGXCPU:
        return JobResult(False, error=f"cpu time limit exceeded ({cpu_limit} s)", killed_reason=CPU_LIMIT, **times)
    if code is not None and code < 0:
        why = f"worker died with {_signal_name(-code)}"
    else:
        why = f"worker exited with code {code}"
    return JobResult(False, error=why, killed_reason=CRASH, **times)


def _proc_cpu(pid: int) -> float | None:
    """utime + stime of a process in seconds (from /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
        fields = data[data.rindex(")") + 2 :].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, ValueError, IndexError):
        return None


class WorkerPool:
    """Up to `n` jobs in parallel, one IsolatedWorker process each; same API as IsolatedWorker."""

    def __init__(self, n: int, **worker_kwargs: Any) -> None:
        if n < 1:
            raise ValueError(f"a worker pool needs n >= 1, got {n}")
        self.n = n
        self.workers = [IsolatedWorker(**worker_kwargs) for _ in range(n)]
        for w in self.workers[1:]:
            w.log_layers = False  # one "sandbox layers" line per pool
        self._idle: queue.Queue[IsolatedWorker] = queue.Queue()
        for w in self.workers:
            self._idle.put(w)
        self._executor = ThreadPoolExecutor(max_workers=n, thread_name_prefix="evounlearn-pool")

    def start(self) -> None:
        """Start all worker processes (in parallel)."""
        list(self._executor.map(lambda w: w.start(), self.workers))

    def _run_one(
        self, function_path: str, kwargs: Mapping[str, Any] | None, limits: dict[str, Any]
    ) -> JobResult:
        worker = self._idle.get()
        try:
            return worker.run(function_path, kwargs, **limits)
        finally:
            self._idle.put(worker)

    def submit(
        self, function_path: str, kwargs: Mapping[str, Any] | None = None, **limits: Any
    ) -> Future[JobResult]:
        return self._executor.submit(self._run_one, function_path, kwargs, limits)

    def run(self, function_path: str, kwargs: Mapping[str, Any] | None = None, **limits: Any) -> JobResult:
        return self.submit(function_path, kwargs, **limits).result()

    def map(
        self, function_path: str, kwargs_list: Iterable[Mapping[str, Any]], **limits: Any
    ) -> list[JobResult]:
        futures = [self.submit(function_path, kw, **limits) for kw in kwargs_list]
        return [f.result() for f in futures]

    @property
    def restarts(self) -> int:
        return sum(w.restarts for w in self.workers)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for w in self.workers:
            w.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
