"""Training guards: a loss program watched on the real batches of the whole run.

Probe validation (`probes.py`) sees only probe tensors; a loss could still behave differently on
the real batches (recognise them by shape or statistics, or wait until the run has moved).
`TrainingGuard.call(fn, args)` runs the loss on one real batch and stops training with a
`TrainingGuardError` ("training guard: ...") when:

- the value or its gradient w.r.t. the current log-probs is not finite, or the first step's
  gradient w.r.t. the forget log-probs is zero (validation's "init" rule, on the real batch);
- direction, on every checked step: the first `direction_steps` (default 3), then each later
  step with probability `check_fraction` (default 1: every step; drawn from a secret generator
  so a loss cannot know which steps are checked). The gradient is taken on the call's own graph
  (`torch.autograd.grad` w.r.t. the real inputs, graph kept for the training backward), so the
  checked call is the call that trains. Rules: the batch sums as in the probes (d loss / d forget
  log-probs not negative; d loss / d retain log-probs not positive, summed over the retain rows
  at or below the reference: a row above it may be pulled back, as a KL-like term does) AND the
  row-level rule of `probes.row_violation` (forget rows at or above the reference pushed up, or
  retain rows at or below it pushed down, carrying more than 25% of the gradient's mass);
- order: on a random `permute_fraction` of the checked steps (and the first), the loss is called
  again on the batch with its rows permuted; a different value means the loss singles out rows
  by position;
- retain watchdog: when the loss uses the retain input, the mean over the retain rows of
  (current - reference) per-token log-prob, smoothed over steps, falls more than
  `retain_margin` nats below 0 (the loss was meant to protect retain and does not);
- time: each call (forward, and the checked backward) gets a budget of
  max(`time_ratio` x an NPO-like loss on the same batch, `step_ratio` x the model's own step
  time between two calls, `time_floor_s`). A loss whose calls run over the budget persistently
  (the last 8 calls' total, the largest one dropped, over 7 budgets: one stall of a busy machine
  is ignored) is stopped, and so is one whose total over the run exceeds `step_ratio` x the
  model's total + `total_slack_s` (3 s: slow only now and then); a call running past `hard_grace_s` more than its budget is killed from
  OUTSIDE the worker by the driver (`timers.hard_deadline`, "step deadline"): a single C call
  of 45 minutes is stopped within ~2 s of its budget. In the main thread an interval timer also
  interrupts a Python loop a little before that, with the guard's own message.

The guard is generic over the interface (argument roles as in `probe_inputs.py`); `methods/evolved.py`
holds one per training run.
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .policy import INTERFACES, SandboxError
from .probe_inputs import ARGUMENT_ROLES
from .probes import row_grads, row_values, row_violation
from .timers import hard_deadline, interrupt_after

__all__ = ["GuardConfig", "TrainingGuard", "TrainingGuardError"]


class TrainingGuardError(SandboxError):
    """A training guard tripped; the message starts with "training guard:"."""


@dataclass(frozen=True)
class GuardConfig:
    direction_steps: int = 3  # always checked
    check_fraction: float = 1.0  # share of the later steps checked (drawn at random)
    permute_fraction: float = 0.25  # share of the checked steps with the row-order check
    retain_margin: float = 3.0  # nats per token below the reference (smoothed); 0: off
    time_ratio: float = 20.0
    step_ratio: float = 1.0  # x the model's step time between two loss calls
    time_floor_s: float = 0.05
    hard_grace_s: float = 2.0  # a call is killed from outside this long past its budget
    total_slack_s: float = 3.0  # the run's total: the loss's time may exceed the model's by this much
    first_grace_s: float = 10.0  # the first calls may initialise lazily (kernels, allocators)


class _TimeUp(BaseException):
    pass


_WINDOW = 8


class TrainingGuard:
    """Watches the calls of one loss function during one training run (see module docstring)."""

    def __init__(self, interface: str, config: GuardConfig | None = None) -> None:
        self.names = INTERFACES[interface][0]
        self.roles = ARGUMENT_ROLES[interface]
        self.config = config or GuardConfig()
        self.calls = 0
        self.checked = 0
        self.uses_retain = False
        self._rng = secrets.SystemRandom()  # which steps are checked: nothing a loss can read
        # the reference loss's time by batch shape: measured once per shape, not on every step
        self._reference: dict[tuple[int, ...], float] = {}
        self._times: deque[float] = deque(maxlen=_WINDOW)  # the loss's own seconds per call
        self._gaps: deque[float] = deque(maxlen=16)  # the model's seconds between two calls
        self._last_end: float | None = None
        self._last_backward = 0.0
        self._retain_gap: float | None = None  # smoothed mean (current - reference) retain gap
        self._total_cost = 0.0  # the loss's seconds over the run (from the third call: no lazy start)
        self._total_gap = 0.0  # the model's seconds over the same calls

    def _fail(self, what: str, detail: str = "") -> TrainingGuardError:
        more = f" ({detail})" if detail else ""
        return TrainingGuardError(f"training guard: {what} on real batches at step {self.calls + 1}{more}")

    # -- the call ------------------------------------------------------------------------------
    def call(self, fn: Callable[..., Any], args: Sequence[torch.Tensor]) -> Any:
        """`fn(*args)` under the guards; returns its value (checked by the caller for type)."""
        _sync(args)
        start = time.perf_counter()
        if self._last_end is not None:  # the model's forward / backward / optimizer since the last call
            self._gaps.append(max(0.0, start - self._last_end - self._last_backward))
        budget = self.budget(args)
        out, elapsed = self._timed(lambda: fn(*args), budget, "the loss")
        if isinstance(out, torch.Tensor) and out.numel() == 1 and not bool(torch.isfinite(out.detach()).all()):
            raise self._fail(f"non-finite loss ({float(out.detach().reshape(()))})")
        cost = elapsed
        if self._is_checked():
            _, backward = self._timed(lambda: self._check_direction(out, args), budget, "the loss's gradient")
            self._last_backward = backward
            cost += backward
            if self.checked == 0 or self._rng.random() < self.config.permute_fraction:
                self._check_order(fn, args, out, budget)
            self.checked += 1
        self._times.append(cost)
        if self.calls >= 2:
            self._total_cost += cost
            self._total_gap += self._gaps[-1] if self._gaps else 0.0
        self._check_time(budget)
        self._watch_retain(args)
        self.calls += 1
        _sync(args)
        self._last_end = time.perf_counter()
        return out

    def _is_checked(self) -> bool:
        return self.calls < self.config.direction_steps or self._rng.random() < self.config.check_fraction

    def _timed(self, block: Callable[[], Any], budget: float, what: str) -> tuple[Any, float]:
        """Run `block` under the soft timer (a Python loop) and the hard deadline (a C call)."""
        grace = self.config.first_grace_s if self.calls < 2 else self.config.hard_grace_s
        hard = budget + grace
        t0 = time.perf_counter()
        try:
            with hard_deadline(hard), interrupt_after(budget + 0.75 * grace, _TimeUp):
                value = block()
                _sync_value(value)
        except _TimeUp:
            raise self._slow(f"{what} took over {time.perf_counter() - t0:.3g} s", budget) from None
        return value, time.perf_counter() - t0

    # -- time ----------------------------------------------------------------------------------
    def budget(self, args: Sequence[torch.Tensor]) -> float:
        """The per-call budget in seconds (see the module docstring)."""
        c = self.config
        step = statistics.median(self._gaps) if len(self._gaps) >= 3 else 0.0
        return max(c.time_ratio * self._reference_seconds(args), c.step_ratio * step, c.time_floor_s)

    def _check_time(self, budget: float) -> None:
        c = self.config
        if self._total_cost > c.step_ratio * self._total_gap + c.total_slack_s:
            # slow now and then, under every per-call limit: the run's total still counts
            raise self._slow(f"the loss took {self._total_cost:.3g} s in all against the model's "
                             f"{self._total_gap:.3g} s (+{c.total_slack_s:g} s)", budget)
        if len(self._times) < 4:
            return
        times = sorted(self._times)
        trimmed = sum(times[:-1])  # the largest dropped: one stall is not the loss's doing
        if trimmed > (len(times) - 1) * budget:
            raise self._slow(f"the loss took {trimmed / (len(times) - 1):.3g} s per call over the last "
                             f"{len(times) - 1} calls", budget)

    def _slow(self, what: str, budget: float) -> TrainingGuardError:
        c = self.config
        return self._fail(
            f"{what}, over its budget of {budget:.3g} s",
            f"max({c.time_ratio:g}x a plain NPO-like loss on the same tensors, {c.step_ratio:g}x the "
            f"model's step, {c.time_floor_s:g} s)",
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
            _sync_value(lpf.grad)
            best = min(best, time.perf_counter() - t0)
        return best

    # -- direction, rows, order ----------------------------------------------------------------
    def _masks(self, by_name: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        mf, mr = self.roles["mask_forget"], self.roles["mask_retain"]
        return (None if mf is None else by_name[mf]), (None if mr is None else by_name[mr])

    def _check_direction(self, out: Any, args: Sequence[torch.Tensor]) -> None:
        """The sum and row rules on the gradient of this call's own graph w.r.t. the real inputs."""
        fk, rk = self.roles["forget"], self.roles["retain"]
        by_name = dict(zip(self.names, args))
        inputs = [by_name[fk], by_name[rk]]
        if not (isinstance(out, torch.Tensor) and out.numel() == 1 and out.requires_grad):
            return  # a wrong return type is the caller's error; no graph: nothing moves
        if not all(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs):
            return  # not a training call (no graph to the log-probs)
        with torch.enable_grad():
            grads = torch.autograd.grad(out.reshape(()), inputs, retain_graph=True, allow_unused=True)
        mf, mr = self._masks(by_name)
        masked: list[torch.Tensor | None] = []
        sums = []
        for g, name, mask in ((grads[0], fk, mf), (grads[1], rk, mr)):
            if g is not None and mask is not None:
                g = g * mask
            if g is not None and not bool(torch.isfinite(g).all()):
                raise self._fail(f"non-finite gradient w.r.t. {name}")
            masked.append(g)
            sums.append((0.0, 0.0) if g is None else (float(g.sum()), float(g.abs().sum())))
        (gf, sf), (gr, sr) = sums
        self.uses_retain = self.uses_retain or sr > 0
        if self.calls == 0 and sf == 0.0:
            # the first step is where validation's "init" probe stands (current == reference): a
            # loss that moves there on probes but not on the real batch would silently not train
            raise self._fail("no gradient w.r.t. the forget log-probs on the first step",
                             f"d loss/d {fk} is 0 on every row")
        if gf < -1e-6 * sf:
            raise self._fail("loss decreases in forget log-probs", f"sum of d loss/d {fk} = {gf:.4g}, expected >= 0")
        gap_f, gap_r = self._gaps_of(by_name)
        rows_r = row_grads(masked[1], mr)
        if rows_r is not None:
            # the retain rows above the reference model may be pulled back to it (a KL-like term
            # keeping retain near the reference): the rule sums the rows at or below it only
            gr = float((rows_r.double() * (gap_r.reshape(-1).double() <= 0.0)).sum())
        if gr > 1e-6 * sr:
            raise self._fail("loss increases with retain log-probs",
                             f"sum of d loss/d {rk} over the rows at or below the reference = {gr:.4g}, "
                             "expected <= 0")
        why = row_violation(row_grads(masked[0], mf), row_grads(masked[1], mr), gap_f, gap_r)
        if why is not None:
            raise self._fail(f"the loss {why}")

    def _gaps_of(self, by_name: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row current minus reference log-prob, forget and retain (zeros without a reference)."""
        mf, mr = self._masks(by_name)
        out = []
        for cur, ref, mask in ((self.roles["forget"], self.roles["ref_forget"], mf),
                               (self.roles["retain"], self.roles["ref_retain"], mr)):
            c = row_values(by_name[cur].detach().float(), None if mask is None else mask.float())
            r = by_name.get(ref)  # type: ignore[arg-type]
            out.append(c - row_values(r.detach().float(), None if mask is None else mask.float())
                       if isinstance(r, torch.Tensor) else torch.zeros_like(c))
        return out[0], out[1]

    def _check_order(self, fn: Callable[..., Any], args: Sequence[torch.Tensor], out: Any, budget: float) -> None:
        """The loss on the same batch with its rows permuted (detached copies) has the same value."""
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            return
        b = int(args[0].shape[0]) if args[0].dim() > 0 else 0
        if b < 2 or any(isinstance(a, torch.Tensor) and (a.dim() == 0 or a.shape[0] != b) for a in args):
            return
        perm = torch.randperm(b, generator=torch.Generator().manual_seed(self._rng.getrandbits(62)))
        perm = torch.roll(perm, 1) if bool((perm == torch.arange(b)).all()) else perm
        moved = [a.detach()[perm.to(a.device)] if isinstance(a, torch.Tensor) else a for a in args]
        with torch.no_grad():
            value, _ = self._timed(lambda: fn(*moved), budget, "the loss")
        v0, v1 = float(out.detach().reshape(())), float(value.reshape(())) if isinstance(value, torch.Tensor) else None
        if v1 is None or abs(v1 - v0) > 1e-3 * (1.0 + abs(v0)):
            raise self._fail("the loss depends on the order of the batch rows",
                             f"value {v0:.6g} becomes {v1 if v1 is None else f'{v1:.6g}'} with the rows permuted")

    def _watch_retain(self, args: Sequence[torch.Tensor]) -> None:
        """Stop when the retain rows fall `retain_margin` below the reference (smoothed)."""
        margin = self.config.retain_margin
        if margin <= 0 or not self.uses_retain:
            return
        _, gap_r = self._gaps_of(dict(zip(self.names, args)))
        now = float(gap_r.mean()) if gap_r.numel() else 0.0
        self._retain_gap = now if self._retain_gap is None else 0.7 * self._retain_gap + 0.3 * now
        if self._retain_gap < -margin:
            raise self._fail(
                "retain log-probs fell below the reference model's",
                f"mean retain log-prob {self._retain_gap:.3g} nats/token from the reference, margin {margin:g}",
            )


def _sync(args: Sequence[Any]) -> None:
    """Wait for the GPU's queued work, so that a time measures what it says (no-op on CPU)."""
    for a in args:
        if isinstance(a, torch.Tensor):
            if a.is_cuda:
                torch.cuda.synchronize(a.device)
            return


def _sync_value(value: Any) -> None:
    if isinstance(value, torch.Tensor) and value.is_cuda:
        torch.cuda.synchronize(value.device)
