"""Training guards: a loss program watched on the real batches, where probes cannot reach.

Probe validation (`probes.py`) sees only probe tensors; a loss could still behave differently on
the real batches (recognise them by shape or statistics). `TrainingGuard.call(fn, args)` runs
the loss on one real batch and stops training with a `TrainingGuardError` ("training guard:
...") when:

- the value or its gradient w.r.t. the current log-probs is not finite;
- on the first `direction_steps` calls (default 3): the same direction rule as the probes,
  on the real batch: d loss / d forget log-probs (summed over the batch, masked) must not be
  negative (the loss must not decrease as forget log-probs rise: minimising it would raise
  them), and d loss / d retain log-probs must not be positive when the retain input is used.
  Measured on detached copies of the batch's tensors (a second call of the loss: cheap next to
  the model's forward pass), so the training graph is untouched;
- the call takes longer than `time_ratio` (default 20) times a plain NPO-like loss on the same
  tensors, and longer than `time_floor_s` (default 1 s: timings of sub-millisecond calls are
  noise). In the main thread an interval timer also interrupts a call stuck in a Python loop.

The guard is generic over the interface (argument roles as in `probes.py`) and keeps only
counters; `methods/evolved.py` holds one per training run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .policy import INTERFACES, SandboxError
from .probes import _ROLES
from .timers import interrupt_after

__all__ = ["GuardConfig", "TrainingGuard", "TrainingGuardError"]


class TrainingGuardError(SandboxError):
    """A training guard tripped; the message starts with "training guard:"."""


@dataclass(frozen=True)
class GuardConfig:
    direction_steps: int = 3
    time_ratio: float = 20.0
    time_floor_s: float = 1.0


class _TimeUp(BaseException):
    pass


class TrainingGuard:
    """Watches the calls of one loss function during one training run (see module docstring)."""

    def __init__(self, interface: str, config: GuardConfig | None = None) -> None:
        self.names = INTERFACES[interface][0]
        self.roles = _ROLES[interface]
        self.config = config or GuardConfig()
        self.calls = 0
        # the reference loss's time by batch shape: measured once per shape, not on every step
        self._reference: dict[tuple[int, ...], float] = {}

    def _fail(self, what: str, detail: str = "") -> TrainingGuardError:
        more = f" ({detail})" if detail else ""
        return TrainingGuardError(f"training guard: {what} on real batches at step {self.calls + 1}{more}")

    def call(self, fn: Callable[..., Any], args: Sequence[torch.Tensor]) -> Any:
        """`fn(*args)` under the guards; returns its value (checked by the caller for type)."""
        budget = max(self.config.time_ratio * self._reference_seconds(args), self.config.time_floor_s)
        t0 = time.perf_counter()
        try:
            with interrupt_after(budget * 1.5, _TimeUp):
                out = fn(*args)
        except _TimeUp:
            raise self._slow(time.perf_counter() - t0, budget) from None
        elapsed = time.perf_counter() - t0
        if elapsed > budget:
            raise self._slow(elapsed, budget)
        if isinstance(out, torch.Tensor) and out.numel() == 1 and not bool(torch.isfinite(out.detach()).all()):
            raise self._fail(f"non-finite loss ({float(out.detach().reshape(()))})")
        if self.calls < self.config.direction_steps:
            self._check_direction(fn, args)
        self.calls += 1
        return out

    def _slow(self, elapsed: float, budget: float) -> TrainingGuardError:
        return self._fail(
            f"the loss took {elapsed:.3g} s, over its budget of {budget:.3g} s",
            f"{self.config.time_ratio:g}x a plain NPO-like loss on the same tensors, at least {self.config.time_floor_s:g} s",
        )

    def _reference_seconds(self, args: Sequence[torch.Tensor]) -> float:
        """The best of two timings of an NPO-like loss (with its backward) on detached copies, once
        per batch shape (the same shape costs the same: timing it again every step is waste)."""
        by_name = dict(zip(self.names, args))
        shape = tuple(by_name[self.roles["forget"]].shape)
        if shape not in self._reference:
            self._reference[shape] = self._time_reference(by_name)
        return self._reference[shape]

    def _time_reference(self, by_name: dict[str, Any]) -> float:
        lpf = by_name[self.roles["forget"]].detach().float().requires_grad_(True)
        ref = by_name[self.roles["ref_forget"]]
        ref = torch.zeros_like(lpf) if ref is None else ref.detach().float()
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            with torch.enable_grad():
                value = -F.logsigmoid(-0.1 * (lpf - ref)).mean() * 20.0
                value.backward()
            best = min(best, time.perf_counter() - t0)
        return best

    def _check_direction(self, fn: Callable[..., Any], args: Sequence[torch.Tensor]) -> None:
        fk, rk = self.roles["forget"], self.roles["retain"]
        leaves = {
            n: (a.detach().clone().requires_grad_(n in (fk, rk)) if isinstance(a, torch.Tensor) else a)
            for n, a in zip(self.names, args)
        }
        with torch.enable_grad():
            value = fn(*[leaves[n] for n in self.names])
            if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.requires_grad:
                return  # a wrong return type is the caller's error; no graph: nothing moves
            grads = torch.autograd.grad(value.reshape(()), [leaves[fk], leaves[rk]], allow_unused=True)
        sums = []
        for g, name, mask_name in ((grads[0], fk, self.roles["mask_forget"]), (grads[1], rk, self.roles["mask_retain"])):
            if g is not None and mask_name is not None:
                g = g * leaves[mask_name]
            if g is not None and not bool(torch.isfinite(g).all()):
                raise self._fail(f"non-finite gradient w.r.t. {name}")
            sums.append((0.0, 0.0) if g is None else (float(g.sum()), float(g.abs().sum())))
        (gf, sf), (gr, sr) = sums
        if gf < -1e-6 * sf:
            raise self._fail("loss decreases in forget log-probs", f"sum of d loss/d {fk} = {gf:.4g}, expected >= 0")
        if gr > 1e-6 * sr:
            raise self._fail("loss increases with retain log-probs", f"sum of d loss/d {rk} = {gr:.4g}, expected <= 0")
