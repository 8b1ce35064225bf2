"""`interrupt_after`: stop a block of (loss) code stuck in a Python loop, from the inside.

An interval timer (SIGALRM) raises the given exception in the main thread after `seconds`; the
exception should derive from BaseException so that no `except Exception` on the way (the probe
calls catch those) swallows it. Only in the main thread (signals are delivered there) and when
nobody else handles SIGALRM; elsewhere it does nothing and the caller's own checks between calls
and the worker's wall limit remain. A torch operation in C runs to its end first (bounded by
the worker's memory limit); the exception comes at the next Python bytecode.

`hard_deadline`: the deadline that a C call cannot outlive. Inside an isolated worker
(`worker_process.worker_main` registers a slot of shared memory with `set_deadline_slot`) it writes
the moment the block must end into that slot; the driver's watch loop (`workers._Watch`, every
0.1 s) reads it and kills the worker's process group once it is past, whatever the worker is
doing: one torch call of 45 minutes is stopped like a Python loop, within ~0.1 s of the
deadline. Outside a worker (no slot) it does nothing: `interrupt_after` and the caller's own
checks remain.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["hard_deadline", "hard_deadline_active", "interrupt_after", "set_deadline_slot"]

# [deadline as time.monotonic() (0: none), its budget in seconds], shared with the driver; None
# outside an isolated worker. CLOCK_MONOTONIC is system-wide, so both processes read one clock.
_SLOT: Any = None


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


def set_deadline_slot(slot: Any) -> None:
    """Register the worker's shared deadline slot (two doubles; called by `worker_process.worker_main`)."""
    global _SLOT
    _SLOT = slot


def hard_deadline_active() -> bool:
    """Whether `hard_deadline` is enforced here (inside an isolated worker)."""
    return _SLOT is not None


@contextlib.contextmanager
def hard_deadline(seconds: float | None) -> Iterator[None]:
    """Have the driver kill this worker when the block runs past `seconds` (None: no deadline).
    Nested blocks restore the outer deadline on exit."""
    slot = _SLOT
    if slot is None or seconds is None:
        yield
        return
    previous = (slot[0], slot[1])
    slot[1] = float(seconds)  # the budget first: the driver reads the deadline, then the budget
    slot[0] = time.monotonic() + float(seconds)
    try:
        yield
    finally:
        slot[0], slot[1] = previous
