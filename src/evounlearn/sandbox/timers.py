"""`interrupt_after`: stop a block of (loss) code stuck in a Python loop, from the inside.

An interval timer (SIGALRM) raises the given exception in the main thread after `seconds`; the
exception should derive from BaseException so that no `except Exception` on the way (the probe
calls catch those) swallows it. Only in the main thread (signals are delivered there) and when
nobody else handles SIGALRM; elsewhere it does nothing and the caller's own checks between calls
and the worker's wall limit remain. A torch operation in C runs to its end first (bounded by
the worker's memory limit); the exception comes at the next Python bytecode.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["interrupt_after"]


@contextlib.contextmanager
def interrupt_after(seconds: float | None, exc_type: type[BaseException]) -> Iterator[None]:
    """Raise `exc_type()` in the block after `seconds` (None: never)."""
    usable = (
        seconds is not None
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN, None)
    )
    if not usable:
        yield
        return

    def _handler(signum: int, frame: Any) -> None:
        raise exc_type()

    previous = signal.signal(signal.SIGALRM, _handler)
    signal.setitimer(signal.ITIMER_REAL, max(float(seconds), 1e-3))  # type: ignore[arg-type]
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)
