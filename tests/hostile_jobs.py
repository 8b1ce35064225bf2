"""Trusted test jobs that try what a compromised loss would (W7): network, writes, odd results.

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
