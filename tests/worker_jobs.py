"""Trusted test jobs for the isolated workers: jobs that misbehave on purpose.

Run in a worker as "tests.worker_jobs:diagnostic_job" (the worker must list "tests.worker_jobs"
in its trusted_prefixes); used to check the limits, restarts and crash reporting.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from evounlearn.sandbox import WORKER_ENV
from evounlearn.sandbox.worker_process import process_status_kb

DIAG = "tests.worker_jobs:diagnostic_job"
TRUSTED = ("evounlearn.", "tests.worker_jobs")


def diagnostic_job(action: str = "echo", value: Any = None, seconds: float = 0.0, megabytes: int = 0) -> Any:
    """action: "echo" (returns value), "info" (pid, cwd, env marker, process group; after
    sleeping `seconds`), "sleep",
    "spin" (burns CPU for `seconds`), "alloc" (allocates and touches `megabytes`), "segfault",
    "exit" (os._exit(3)), "recursion" (unbounded recursion), "raise" (ValueError), "modules"
    (which of the module names in `value` are imported).
    """
    if action == "echo":
        return value
    if action == "info":
        started = time.time()
        time.sleep(seconds)
        return {
            "started": started,
            "ended": time.time(),
            "pid": os.getpid(),
            "ppid": os.getppid(),  # the fork server that started this worker
            "cwd": os.getcwd(),
            "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "marker": os.environ.get(WORKER_ENV),
            "pgid": os.getpgid(0),
            "vm_data_kb": process_status_kb("VmData"),
            "vm_rss_kb": process_status_kb("VmRSS"),
            "vm_size_kb": process_status_kb("VmSize"),
        }
    if action == "modules":  # which of the names in `value` this worker has imported already
        return sorted(name for name in value if name in sys.modules)
    if action == "sleep":
        time.sleep(seconds)
        return seconds
    if action == "spin":
        end = time.process_time() + seconds
        x = 0
        while time.process_time() < end:
            x += 1
        return x
    return _crash(action, megabytes)


def _crash(action: str, megabytes: int) -> Any:
    if action == "alloc":
        import torch

        t = torch.ones(int(megabytes) * (1 << 20) // 4, dtype=torch.float32)
        return float(t.sum())
    if action == "segfault":
        import ctypes

        ctypes.string_at(0)
    if action == "exit":
        os._exit(3)
    if action == "recursion":

        def f(n: int) -> int:
            return f(n + 1) + 1

        return f(0)
    if action == "raise":
        raise ValueError("diagnostic failure")
    raise ValueError(f"unknown diagnostic action {action!r}")
