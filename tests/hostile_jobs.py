"""Trusted test jobs that try what a compromised loss would: network, writes, odd results.

Run in a worker as "tests.hostile_jobs:<name>" (the worker lists "tests.hostile_jobs" in its
trusted_prefixes).
"""

from __future__ import annotations

import os
import socket
import warnings
from typing import Any

TRUSTED = ("evounlearn.", "tests.hostile_jobs")


def try_socket(host: str = "127.0.0.1", port: int = 9) -> str:
    """"blocked: ..." when no socket can reach `host`, else "connected" / the refusal."""
    try:
        s = socket.create_connection((host, port), timeout=2)
    except ConnectionRefusedError:
        return "refused"  # the network exists (loopback answered)
    except OSError as e:
        return f"blocked: {e}"
    s.close()
    return "connected"


def try_write(path: str) -> str:
    """"written" or "blocked: ..."."""
    try:
        with open(path, "w") as fh:
            fh.write("x")
    except OSError as e:
        return f"blocked: {e}"
    return "written"


def layers() -> dict[str, Any]:
    return {"pid": os.getpid(), "ppid": os.getppid()}


def warn_and_print(n: int = 5) -> int:
    for i in range(n):
        warnings.warn(f"hostile warning {i}", UserWarning, stacklevel=1)
        print(f"hostile print {i}")
    os.write(2, b"hostile raw stderr\n")
    return n


def return_tuple_and_tensor() -> Any:
    import torch

    return {"t": (1, 2), "x": torch.tensor([1.5, 2.5]), "s": torch.tensor(3.0)}


def return_object() -> Any:
    return object()


def guarded_c_call(honest_calls: int = 3, rows: int = 10**6) -> str:
    """A training guard around a loss that, after `honest_calls` honest calls, runs ONE torch call
    over rows x rows elements (10**6: ~45 minutes): the driver must kill the worker ("step
    deadline"); returns "finished" only if nothing stopped it."""
    import torch

    from evounlearn.sandbox.guards import TrainingGuard

    guard = TrainingGuard("faithful")

    def bomb(lpf: Any, lpr: Any, rf: Any, rr: Any) -> Any:
        x = lpf.mean() - lpr.mean()
        if guard.calls >= honest_calls:
            x = x + 0.0 * lpf[0:1].expand(rows, rows).sum()
        return x

    for step in range(honest_calls + 1):
        g = torch.Generator().manual_seed(step)
        lpf = (-torch.rand(8, generator=g)).requires_grad_(True) * 1.0
        lpr = (-torch.rand(8, generator=g)).requires_grad_(True) * 1.0
        guard.call(bomb, [lpf, lpr, lpf.detach().clone(), lpr.detach().clone()]).backward()
    return "finished"


def hard_deadline_c_call(seconds: float = 0.5, rows: int = 10**6) -> str:
    """One long torch call inside `timers.hard_deadline(seconds)`."""
    import torch

    from evounlearn.sandbox.timers import hard_deadline

    with hard_deadline(seconds):
        torch.ones(1).expand(rows, rows).sum()
    return "finished"


def try_kill(pid: int) -> str:
    """"blocked: ..." when this worker may not signal `pid` (kill with signal 0 tests only)."""
    try:
        os.kill(pid, 0)
    except OSError as e:
        return f"blocked: {e}"
    return "allowed"


def try_unix(address: str) -> str:
    """Connect to a Unix socket: a path, or "@name" for the abstract namespace."""
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as e:
        return f"blocked: {e}"
    try:
        s.settimeout(2)
        s.connect(target)
    except OSError as e:
        return f"blocked: {e}"
    finally:
        s.close()
    return "connected"


def try_read(path: str) -> str:
    try:
        with open(path) as fh:
            return "read: " + fh.read(64)
    except OSError as e:
        return f"blocked: {e}"
