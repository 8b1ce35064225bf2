"""The isolated worker process's side (see `workers` for the design and the measurements): its
entry point `worker_main` enters the sandbox (own process group, scratch directory, output to a log
file, the OS layers of `confine`), then runs trusted job functions one by one under the CPU
(RLIMIT_CPU) and memory (RLIMIT_DATA) limits, sending each result back as JSON text.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import multiprocessing.connection as mpc
import os
import resource
import signal
import tempfile
import traceback
from typing import Any

from .confine import apply_layers
from .job_result import MEMORY_LIMIT
from .timers import set_deadline_slot

#: Set in the isolated worker; `compiler.compile_function` refuses to run where it is absent.
WORKER_ENV = "EVOUNLEARN_SANDBOX_WORKER"
LOG_NAME = "worker.log"  # in the scratch directory when no log_file is given



def process_status_kb(field_name: str, pid: int | str = "self") -> int | None:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmData, ...), or None."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cpu_used(children: bool = True) -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    total = ru.ru_utime + ru.ru_stime
    if children:
        rc = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += rc.ru_utime + rc.ru_stime
    return total


def _resolve(function_path: str) -> Any:
    module_name, _, attr = function_path.partition(":")
    fn: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        fn = getattr(fn, part)
    return fn


def _set_soft(which: int, soft: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY and soft > hard:
        soft = hard
    resource.setrlimit(which, (soft, hard))


def _reset_soft(which: int) -> None:
    _, hard = resource.getrlimit(which)
    resource.setrlimit(which, (hard, hard))


def _is_alloc_error(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    return isinstance(e, RuntimeError) and "can't allocate memory" in str(e)


def _send_json(conn: mpc.Connection, msg: list[Any]) -> None:  # pragma: no cover - child
    """Results travel as JSON text, never as pickles: the driver never unpickles worker data."""
    conn.send_bytes(json.dumps(msg, default=_json_default).encode())


def _json_default(obj: Any) -> Any:
    """The job edge's conversions: tensors / numpy arrays and scalars, paths, sets, dataclasses."""
    import dataclasses

    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"job result holds a {type(obj).__name__}, which is not JSON-ready")


def worker_main(
    conn: mpc.Connection,
    workdir: str,
    threads: int,
    isolate_network: bool = True,
    write_paths: list[str] | None = None,
    log_file: str | None = None,
    env: dict[str, str] | None = None,
    deadline_slot: Any = None,
    hidden_paths: list[str] | None = None,
) -> None:  # pragma: no cover - child
    """The worker process's entry point: enter the sandbox, then run jobs until told to stop.
    `env` is set first: e.g. this worker's own CUDA_VISIBLE_DEVICES, read when a job first
    touches CUDA (the fork server never does)."""
    os.environ.update(env or {})
    _redirect_output(log_file or os.path.join(workdir, LOG_NAME))
    _enter_sandbox(workdir, threads)
    set_deadline_slot(deadline_slot)
    writable = None if write_paths is None else [workdir, *write_paths]
    layers = apply_layers(isolate_network=isolate_network, write_paths=writable, hide=hidden_paths or ())
    _send_json(conn, ["ready", {"pid": os.getpid(), "rss_kb": process_status_kb("VmRSS"), "layers": layers}])
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if not msg or msg[0] != "job":
            break
        _, function_path, kwargs, cpu_limit, mem_limit_mb = msg
        cpu0 = _cpu_used()
        ok, value, error, killed = _run_job(function_path, kwargs, cpu_limit, mem_limit_mb)
        cpu = _cpu_used() - cpu0
        try:
            _send_json(conn, ["result", ok, value, error, cpu, killed])
        except (TypeError, ValueError) as e:  # not JSON-ready
            _send_json(conn, ["result", False, None, f"result could not be sent: {type(e).__name__}: {e}", cpu, None])


def _redirect_output(path: str) -> None:  # pragma: no cover - child
    """stdout / stderr (Python's and C's: warnings, torch messages) to the worker's log file,
    never the driver's terminal; Python warnings once per location."""
    import sys
    import warnings

    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        for target in (1, 2):
            os.dup2(fd, target)
        os.close(fd)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    warnings.simplefilter("default")


def _enter_sandbox(workdir: str, threads: int) -> None:  # pragma: no cover - child
    """Own process group, no core dumps, a private working directory, the worker marker."""
    with contextlib.suppress(OSError):
        os.setsid()
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.chdir(workdir)
    os.environ["TMPDIR"] = workdir
    tempfile.tempdir = workdir
    os.environ[WORKER_ENV] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import torch

        torch.set_num_threads(max(1, threads))
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
    except ImportError:
        pass


def _run_job(
    function_path: str, kwargs: dict[str, Any], cpu_limit: float | None, mem_limit_mb: int | None
) -> tuple[bool, Any, str | None, str | None]:  # pragma: no cover - child
    """Run one job under the CPU and memory rlimits: (ok, value, error, killed_reason)."""
    if cpu_limit is not None:
        # RLIMIT_CPU counts this process only (all its threads), in whole seconds: round to
        # nearest, but always at least one second ahead
        own = _cpu_used(children=False)
        _set_soft(resource.RLIMIT_CPU, max(int(own) + 1, int(own + cpu_limit + 0.5)))
    if mem_limit_mb is not None:
        data_kb = process_status_kb("VmData") or 0
        _set_soft(resource.RLIMIT_DATA, data_kb * 1024 + int(mem_limit_mb) * 1024 * 1024)
    try:
        return True, _resolve(function_path)(**kwargs), None, None
    except BaseException as e:  # noqa: BLE001 - everything is reported, nothing raised
        error = f"{type(e).__name__}: {e}"
        if _is_alloc_error(e):
            return False, None, error, MEMORY_LIMIT
        if not isinstance(e, RecursionError):
            error += "\n" + "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])
        return False, None, error, None
    finally:
        with contextlib.suppress(OSError, ValueError):
            _reset_soft(resource.RLIMIT_DATA)
        with contextlib.suppress(OSError, ValueError):
            _reset_soft(resource.RLIMIT_CPU)
