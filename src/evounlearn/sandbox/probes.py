"""Probe-tensor validation of compiled losses and their behavioural fingerprints (in the worker).

`validate_candidate(fn, interface)` calls a compiled loss on seeded probe tensors and checks, in
order (the first failure is the reason):

1. every probe call returns a finite floating-point scalar tensor (0-dim or one element);
   reasons: `returns float instead of a scalar tensor`, `returns a tensor of shape [8] instead
   of a scalar`, `non-finite loss (nan) on probe 'normal B=8'`, `runtime error on probe 'init
   B=8': ZeroDivisionError: ...`, `memory limit on probe ...: ...`;
2. the loss has a gradient w.r.t. the current-model forget input, non-zero when the reference
   equals the current model (the first training step): `no gradient w.r.t. the current-model
   inputs (constant or detached loss)`, `zero gradient w.r.t. log_probs_forget ...`;
   gradients must be finite: `non-finite gradient w.r.t. log_probs_forget on probe ...`;
3. direction, averaged over the normal probes: d loss / d forget log-probs (summed over the batch)
   > 0, and, when the retain input is used at all, d loss / d retain log-probs <= 0:
   `wrong direction: the loss decreases as forget log-probs increase (...)`,
   `wrong direction: the loss increases with retain log-probs (...)`;
3b. per row, on every normal probe (`row_violation`, shared with the training guards): forget
   rows at or above the reference pushed up, or retain rows at or below it pushed down, may
   carry at most 25% of the gradient's mass (a batch sum near 0 can hide half the rows going
   the wrong way): `wrong direction per row on probe 'retain-low B=4': the loss pushes retain
   rows down: ...`;
4. moderately extreme inputs (log-probs near 0, forget log-probs far below the reference, the
   reverse, batch of one) still give a finite value and finite gradients;
5. permutation invariance: permuting the batch rows (consistently across the arguments) keeps the
   value: `not invariant to the order of the batch rows (...)`;
6. fingerprint: sha256 (16 hex digits) of the values and gradients on float64 probes, each
   rounded to 4 significant digits, so that the same function written differently (`2 * x` vs
   `x + x`, renamed variables) gets the same fingerprint (behavioural de-duplication). A loss
   that fails on float64 inputs fails validation (`fails on float64 inputs ...`), and its
   float32 values must match the float64 ones.

The probe tensors, and the `ProbeProfile` that shapes them like the run's batches, are
`probe_inputs.py`.

The worker job that runs these checks on every candidate of a program is `jobs.validate_source`.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .policy import INTERFACES, interface_args
from .probe_inputs import (
    ARGUMENT_ROLES,
    DEFAULT_PROFILE,
    EXTENDED_T,
    EXTREME_KINDS,
    INIT_PROBE_ROWS,
    NORMAL_KINDS,
    ProbeProfile,
    make_probe,
)

__all__ = [
    "ValidationResult",
    "describe_error",
    "row_grads",
    "row_values",
    "row_violation",
    "validate_candidate",
]

#: a row-level rule (`row_violation`) fails when more than this share of the gradient's mass
#: pushes rows the wrong way: forget rows at or above the reference up, retain rows at or below it down
ROW_SHARE = 0.25
#: the legacy fixed fingerprint probes (used only when no fingerprint seed is given)
FINGERPRINT_PROBES = (("init", 6, 101), ("normal", 6, 102), ("forgotten", 6, 103))


@dataclass
class ValidationResult:
    """Outcome of the probe checks. `reason` is "ok" or the first failed check."""

    ok: bool
    reason: str
    fingerprint: str | None = None
    probe_values: list[float] = field(default_factory=list)  # values on the fingerprint probes
    uses_retain: bool = False  # the loss has a non-zero gradient w.r.t. the retain input
    grad_forget: float = 0.0  # mean over normal probes of sum(d loss / d forget input)
    grad_retain: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Fail(Exception):
    pass


def row_values(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-row (sequence) values: `x` itself (faithful, [B]) or its masked mean over tokens."""
    if mask is None:
        return x.reshape(-1)
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def row_grads(g: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor | None:
    """Per-row effect of a (masked) gradient: d loss / d row, summed over the row's tokens."""
    if g is None:
        return None
    return g.reshape(-1) if mask is None else (g * mask).sum(-1)


def row_violation(
    gf: torch.Tensor | None, gr: torch.Tensor | None, gap_f: torch.Tensor, gap_r: torch.Tensor,
    tol: float = 0.0,
) -> str | None:
    """The row-level direction rule, or None when it holds.

    `gf` / `gr`: per-row d loss / d forget / retain row log-prob; `gap_*`: per-row current minus
    reference log-prob. Minimising the loss moves row i against its gradient, so a forget row
    with gf < 0 is pushed UP and a retain row with gr > 0 is pushed DOWN. Pulling a row back
    towards the reference is legitimate (a retain row above it, a forget row far below it), so
    only rows on the wrong side count: forget rows not below the reference (gap_f >= -tol) pushed
    up, retain rows not above it (gap_r <= tol) pushed down. `tol` is 0: a row above the
    reference by rounding noise may be pulled back to it (an L1 pull has full weight there). The rule fails when such rows carry
    more than ROW_SHARE of the gradient's total mass: a loss whose batch sum looks right while
    it pushes half of the rows the wrong way is caught."""
    for g, gap, sign, what in ((gf, gap_f, -1.0, "forget rows up"), (gr, gap_r, 1.0, "retain rows down")):
        if g is None:
            continue
        g = g.detach().double()
        total = float(g.abs().sum())
        if total <= 0.0:
            continue
        gap = gap.detach().double().reshape(-1)
        wrong_rows = (gap <= tol) if sign > 0 else (gap >= -tol)
        wrong = float(((sign * g).clamp(min=0.0) * wrong_rows).sum())
        if wrong > ROW_SHARE * total:
            side = "at or below" if sign > 0 else "at or above"
            return (f"pushes {what}: {wrong / total:.0%} of the gradient's mass moves rows {side} the "
                    f"reference the wrong way (at most {ROW_SHARE:.0%})")
    return None


def _is_alloc_error(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in msg or "not enough memory" in msg)


def describe_error(e: BaseException, limit: int = 300) -> str:
    """`Type: message` on one line, cut at `limit` characters."""
    msg = " ".join(str(e).split())
    if len(msg) > limit:
        msg = msg[:limit] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


@dataclass
class _Call:
    value: float
    grad_forget: torch.Tensor | None  # masked gradient
    grad_retain: torch.Tensor | None
    has_graph: bool


def _call(fn: Callable[..., Any], interface: str, probe: dict[str, torch.Tensor], label: str) -> _Call:
    names, _ = INTERFACES[interface]
    roles = ARGUMENT_ROLES[interface]
    fk, rk = roles["forget"], roles["retain"]
    inputs = {k: v.clone() for k, v in probe.items()}
    inputs[fk].requires_grad_(True)  # type: ignore[index]
    inputs[rk].requires_grad_(True)  # type: ignore[index]
    try:
        with torch.enable_grad():
            out = fn(*[inputs[n] for n in names])
            if not isinstance(out, torch.Tensor):
                raise _Fail(f"returns {type(out).__name__} instead of a scalar tensor")
            if out.numel() != 1:
                raise _Fail(f"returns a tensor of shape {list(out.shape)} instead of a scalar")
            if not out.is_floating_point():
                raise _Fail(f"returns a {out.dtype} tensor instead of a floating-point scalar")
            value = float(out.detach().reshape(()))
            if not math.isfinite(value):
                raise _Fail(f"non-finite loss ({value}) on probe '{label}'")
            grads: tuple[torch.Tensor | None, ...] = (None, None)
            if out.requires_grad:
                grads = torch.autograd.grad(
                    out.reshape(()),
                    [inputs[fk], inputs[rk]],
                    allow_unused=True,  # type: ignore[index]
                )
    except _Fail:
        raise
    except Exception as e:
        if _is_alloc_error(e):
            raise _Fail(f"memory limit on probe '{label}': {describe_error(e)}") from None
        raise _Fail(f"runtime error on probe '{label}': {describe_error(e)}") from None
    masked: list[torch.Tensor | None] = []
    for g, mk, nm in ((grads[0], roles["mask_forget"], fk), (grads[1], roles["mask_retain"], rk)):
        if g is None:
            masked.append(None)
            continue
        if not bool(torch.isfinite(g).all()):
            raise _Fail(f"non-finite gradient w.r.t. {nm} on probe '{label}'")
        masked.append(g * probe[mk] if mk is not None else g)
    return _Call(value, masked[0], masked[1], out.requires_grad)


def _label(kind: str, batch: int) -> str:
    return f"{kind} B={batch}"


def _num(v: float) -> str:
    if not math.isfinite(v):
        return repr(v)
    if abs(v) < 1e-9:
        return "0"
    return f"{v:.3e}"


def _fingerprint_probes(seed: int | None, profile: ProbeProfile) -> list[tuple[str, int, int]]:
    """(kind, batch, seed) of the fingerprint probes: the legacy fixed ones without a seed."""
    if seed is None:
        return list(FINGERPRINT_PROBES)
    rng = _Rng(seed)
    # the run's batch size, else a size of its own per probe: a loss cannot single them out by shape
    return [(kind, profile.batch_size or 2 + rng.below(63), rng.below(2**62)) for kind in ("init", "normal", "forgotten")]


class _Rng:
    """A small deterministic generator for the fingerprint draw (same seed, same probes)."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(int(seed) % 2**63)

    def below(self, n: int) -> int:
        return int(torch.randint(0, n, (1,), generator=self.gen))


def _fingerprint(
    fn: Callable[..., Any], interface: str, seed: int | None = None, profile: ProbeProfile = DEFAULT_PROFILE
) -> tuple[str, list[float]]:
    parts: list[str] = [interface]
    values: list[float] = []
    probes = _fingerprint_probes(seed, profile)
    prof = ProbeProfile(tokens_max=EXTENDED_T) if seed is None else profile
    # float64 only: a loss that fails there fails validation (no silent float32 fallback that
    # would skip the precision-consistency check below)
    parts, values = [interface, str(torch.float64)], []
    for kind, b, pseed in probes:
        try:
            c = _call(fn, interface, make_probe(interface, kind, b, pseed, torch.float64, prof), _label(kind, b))
        except _Fail as e:
            raise _Fail(f"fails on float64 inputs (the fingerprint probes): {e}") from None
        values.append(c.value)
        parts.append(_num(c.value))
        for g in (c.grad_forget, c.grad_retain):
            flat = [] if g is None else g.detach().double().flatten().tolist()
            parts.append(",".join(_num(x) for x in flat) if flat else "-")
    _check_precision_consistent(fn, interface, probes, prof, values)
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return digest, values


def _check_precision_consistent(
    fn: Callable[..., Any], interface: str, probes: list[tuple[str, int, int]], prof: ProbeProfile,
    values64: list[float],
) -> None:
    """The float64 fingerprint must describe the float32 loss that trains: a loss that behaves
    differently when given float64 tensors (recognising the fingerprint probes) is rejected."""
    for (kind, b, pseed), v64 in zip(probes, values64):
        label = _label(kind, b)
        v32 = _call(fn, interface, make_probe(interface, kind, b, pseed, torch.float32, prof), label).value
        if abs(v32 - v64) > 1e-2 * (1.0 + abs(v64)):
            raise _Fail(
                f"the loss behaves differently on float64 and float32 inputs (value {v64:.6g} vs "
                f"{v32:.6g} on probe '{label}')"
            )




def _validation_draw(profile: ProbeProfile) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """(normal probes, extreme probes) as (kind, batch, seed), from a fresh secret seed.

    Most probes have the run's batch size (a loss that behaves only at other sizes is caught);
    one normal probe has another size, the "init" one at least INIT_PROBE_ROWS rows, the last
    extreme probe is a batch of one."""
    rng = secrets.SystemRandom()

    def size() -> int:
        return profile.batch_size if profile.batch_size else rng.randint(2, 32)

    other = rng.randint(2, max(3, 2 * (profile.batch_size or 16)))
    normal = [(kind, size(), rng.getrandbits(62)) for kind in NORMAL_KINDS]
    normal[-1] = (normal[-1][0], other, normal[-1][2])
    # the "init" probe decides whether the first step can move at all: a large batch, so that a
    # loss that moves only on some rows (a clamp, a hinge) gets the same verdict on every draw
    normal[0] = ("init", max(INIT_PROBE_ROWS, profile.batch_size or 0), normal[0][2])
    extreme = [(kind, size(), rng.getrandbits(62)) for kind in EXTREME_KINDS]
    extreme.append(("normal", 1, rng.getrandbits(62)))
    return normal, extreme


def validate_candidate(
    fn: Callable[..., Any],
    interface: str = "faithful",
    *,
    profile: ProbeProfile | dict[str, Any] | None = None,
    fingerprint_seed: int | None = None,
) -> ValidationResult:
    """Run the probe checks of the module docstring on a compiled loss function, on probes drawn
    fresh from a secret seed and shaped by `profile`; fingerprint on the `fingerprint_seed` draw."""
    interface_args(interface)
    prof = ProbeProfile.from_dict(profile)
    normal, extreme = _validation_draw(prof)
    try:
        probes = [make_probe(interface, kind, b, seed, profile=prof) for kind, b, seed in normal]
        calls = [
            (_label(kind, b), _call(fn, interface, probe, _label(kind, b)))
            for (kind, b, _), probe in zip(normal, probes)
        ]
        _check_gradient_exists(calls, interface)
        result = _check_direction([c for _, c in calls], interface)
        for (label, c), probe in zip(calls, probes):
            _check_rows(c, probe, interface, label)
        for kind, b, seed in extreme:
            _call(fn, interface, make_probe(interface, kind, b, seed, profile=prof), _label(kind, b))
        _check_permutation(fn, interface, prof)
        result.fingerprint, result.probe_values = _fingerprint(fn, interface, fingerprint_seed, prof)
    except _Fail as e:
        return ValidationResult(False, str(e))
    except RecursionError as e:  # pragma: no cover - caught in _call normally
        return ValidationResult(False, f"runtime error: {describe_error(e)}")
    return result


def _moves(g: torch.Tensor | None) -> bool:
    return g is not None and bool((g != 0).any())


def _check_gradient_exists(calls: list[tuple[str, _Call]], interface: str) -> None:
    """Check 2: a gradient w.r.t. the current forget input, non-zero on the "init" probe."""
    fk = ARGUMENT_ROLES[interface]["forget"]
    if not any(c.has_graph for _, c in calls):
        raise _Fail("no gradient w.r.t. the current-model inputs (constant or detached loss)")
    init_label, init = calls[0]
    if _moves(init.grad_forget):
        return
    if not any(_moves(c.grad_forget) for _, c in calls):
        raise _Fail(f"zero gradient w.r.t. {fk} (the loss does not depend on the current forget log-probs)")
    raise _Fail(
        f"zero gradient w.r.t. {fk} on probe '{init_label}' (reference == current: "
        "the first training step would not move)"
    )


def _mean_sums(grads: list[torch.Tensor | None]) -> tuple[float, float]:
    """(mean of the gradients' sums, mean of their absolute sums) over the probes."""
    sums = [float(g.sum()) if g is not None else 0.0 for g in grads]
    abs_sums = [float(g.abs().sum()) if g is not None else 0.0 for g in grads]
    return sum(sums) / len(sums), sum(abs_sums) / len(abs_sums)


def _check_direction(calls: list[_Call], interface: str) -> ValidationResult:
    """Check 3; returns the passing result (without fingerprint) with the mean gradients."""
    roles = ARGUMENT_ROLES[interface]
    mean_gf, scale_f = _mean_sums([c.grad_forget for c in calls])
    mean_gr, scale_r = _mean_sums([c.grad_retain for c in calls])
    uses_retain = any(c.grad_retain is not None and float(c.grad_retain.abs().sum()) > 0 for c in calls)
    if not mean_gf > 1e-6 * scale_f:  # > 0, beyond rounding noise (scale_f > 0 here)
        raise _Fail(
            f"wrong direction: the loss must increase with the forget log-probs "
            f"(mean d loss/d {roles['forget']} = {mean_gf:.4g}, expected > 0)"
        )
    if uses_retain and mean_gr > 1e-6 * scale_r:
        raise _Fail(
            f"wrong direction: the loss must not increase with the retain log-probs "
            f"(mean d loss/d {roles['retain']} = {mean_gr:.4g}, expected <= 0)"
        )
    return ValidationResult(True, "ok", uses_retain=uses_retain, grad_forget=mean_gf, grad_retain=mean_gr)


def _check_rows(c: _Call, probe: dict[str, torch.Tensor], interface: str, label: str) -> None:
    """Check 3b: the row-level rule (`row_violation`) on one probe."""
    roles = ARGUMENT_ROLES[interface]
    mf = probe[roles["mask_forget"]] if roles["mask_forget"] else None
    mr = probe[roles["mask_retain"]] if roles["mask_retain"] else None
    gap_f = row_values(probe[roles["forget"]], mf) - row_values(probe[roles["ref_forget"]], mf)  # type: ignore[index]
    gap_r = row_values(probe[roles["retain"]], mr) - row_values(probe[roles["ref_retain"]], mr)  # type: ignore[index]
    # the gradients are masked already: per-row sums
    why = row_violation(row_grads(c.grad_forget, None if mf is None else torch.ones_like(mf)),
                        row_grads(c.grad_retain, None if mr is None else torch.ones_like(mr)), gap_f, gap_r)
    if why is not None:
        raise _Fail(f"wrong direction per row on probe '{label}': the loss {why}")


def _derangement(b: int, seed: int) -> torch.Tensor:
    """A random permutation that moves every row (so a loss reading any fixed row is caught)."""
    gen = torch.Generator().manual_seed(seed ^ 0x5EED)
    rows = torch.arange(b)
    for _ in range(100):  # ~e tries on average
        perm = torch.randperm(b, generator=gen)
        if not bool((perm == rows).any()):
            return perm
    return torch.roll(rows, 1)


def _check_permutation(fn: Callable[..., Any], interface: str, profile: ProbeProfile) -> None:
    """Check 5: permuting the batch rows (consistently across arguments) keeps the value."""
    rng = secrets.SystemRandom()
    kind, b, seed = "normal", max(2, profile.batch_size or rng.randint(4, 32)), rng.getrandbits(62)
    probe = make_probe(interface, kind, b, seed, profile=profile)
    v0 = _call(fn, interface, probe, _label(kind, b)).value
    perm = _derangement(b, seed)
    v1 = _call(fn, interface, {k: t[perm] for k, t in probe.items()}, _label(kind, b) + " permuted").value
    if abs(v1 - v0) > 1e-4 * (1.0 + abs(v0)):
        raise _Fail(
            f"not invariant to the order of the batch rows (value {v0:.6g} becomes {v1:.6g} "
            "when the rows are permuted)"
        )
