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
4. moderately extreme inputs (log-probs near 0, forget log-probs far below the reference, the
   reverse, batch of one) still give a finite value and finite gradients;
5. permutation invariance: permuting the batch rows (consistently across the arguments) keeps the
   value: `not invariant to the order of the batch rows (...)`;
6. fingerprint: sha256 (16 hex digits) of the values and gradients on fixed float64 probes, each
   rounded to 4 significant digits, so that the same function written differently (`2 * x` vs
   `x + x`, renamed variables) gets the same fingerprint (behavioural de-duplication).

Probes (faithful interface): 1-D tensors, B in {1, 2, 4, 8, 16}; current log-probs uniform in
[-6, -0.05], references within ~0.5 of them ("init" probe: reference == current), plus extreme
ones (down to -25, up to -1e-5). Extended interface: [B, T] per-token log-probs (0 where the mask
is 0), float masks with 1..T answer tokens per row, references per token; reductions use the mask.

The worker job that runs these checks on every candidate of a program is `jobs.validate_source`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .policy import INTERFACES, interface_args

__all__ = ["ValidationResult", "describe_error", "make_probe", "validate_candidate"]

# (current forget, current retain, forget mask, retain mask, ref forget, ref retain) argument names
_ROLES: dict[str, dict[str, str | None]] = {
    "faithful": {
        "forget": "log_probs_forget",
        "retain": "log_probs_retain",
        "mask_forget": None,
        "mask_retain": None,
        "ref_forget": "ref_log_probs_forget",
        "ref_retain": "ref_log_probs_retain",
    },
    "extended": {
        "forget": "tok_logp_forget",
        "retain": "tok_logp_retain",
        "mask_forget": "mask_forget",
        "mask_retain": "mask_retain",
        "ref_forget": "ref_tok_logp_forget",
        "ref_retain": "ref_tok_logp_retain",
    },
}

NORMAL_PROBES = (("init", 8, 11), ("normal", 4, 12), ("normal", 8, 13), ("normal", 16, 14), ("normal", 2, 15))
EXTREME_PROBES = (("confident", 8, 21), ("forgotten", 8, 22), ("far-ref", 8, 23), ("normal", 1, 24))
PERMUTATION_PROBE = ("normal", 8, 31)
FINGERPRINT_PROBES = (("init", 6, 101), ("normal", 6, 102), ("forgotten", 6, 103))
EXTENDED_T = 7


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


def _uniform(
    gen: torch.Generator, shape: tuple[int, ...], lo: float, hi: float, dtype: torch.dtype
) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo).to(dtype)


def make_probe(
    interface: str, kind: str, batch: int, seed: int, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Seeded probe tensors for one call, by argument name.

    kind: "init" (reference == current), "normal" (reference within ~0.5 of current),
    "confident" (log-probs in [-1e-3, -1e-5]), "forgotten" (forget log-probs in [-25, -10],
    reference near 0), "far-ref" (the reverse: forget near 0, reference in [-25, -10]).
    """
    interface_args(interface)
    gen = torch.Generator().manual_seed(seed)
    roles = _ROLES[interface]
    shape: tuple[int, ...] = (batch,) if interface == "faithful" else (batch, EXTENDED_T)

    def current(lo: float, hi: float) -> torch.Tensor:
        return -_uniform(gen, shape, -hi, -lo, dtype)

    if kind == "confident":
        lpf, lpr = current(-1e-3, -1e-5), current(-1e-3, -1e-5)
    elif kind == "forgotten":
        lpf, lpr = current(-25.0, -10.0), current(-3.0, -0.05)
    elif kind == "far-ref":
        lpf, lpr = current(-1.0, -0.01), current(-3.0, -0.05)
    else:
        lpf, lpr = current(-6.0, -0.05), current(-6.0, -0.05)
    if kind == "init":
        rf, rr = lpf.clone(), lpr.clone()
    elif kind == "forgotten":
        rf, rr = (
            current(-1.0, -0.05),
            lpr + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype),
        )
    elif kind == "far-ref":
        rf, rr = current(-25.0, -10.0), lpr.clone()
    else:
        noise = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        rf = lpf + 0.5 * noise
        rr = lpr + 0.3 * torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    rf, rr = rf.clamp(max=-1e-6), rr.clamp(max=-1e-6)
    out: dict[str, torch.Tensor] = {}
    if interface == "extended":
        lengths = torch.randint(1, EXTENDED_T + 1, (batch,), generator=gen)
        lengths[0] = EXTENDED_T
        mf = (torch.arange(EXTENDED_T)[None, :] < lengths[:, None]).to(dtype)
        lengths_r = torch.randint(1, EXTENDED_T + 1, (batch,), generator=gen)
        mr = (torch.arange(EXTENDED_T)[None, :] < lengths_r[:, None]).to(dtype)
        lpf, rf, lpr, rr = lpf * mf, rf * mf, lpr * mr, rr * mr
        out[roles["mask_forget"]] = mf  # type: ignore[index]
        out[roles["mask_retain"]] = mr  # type: ignore[index]
    out[roles["forget"]] = lpf  # type: ignore[index]
    out[roles["retain"]] = lpr  # type: ignore[index]
    out[roles["ref_forget"]] = rf  # type: ignore[index]
    out[roles["ref_retain"]] = rr  # type: ignore[index]
    return out


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
    roles = _ROLES[interface]
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


def _fingerprint(fn: Callable[..., Any], interface: str) -> tuple[str, list[float]]:
    parts: list[str] = [interface]
    values: list[float] = []
    for dtype in (torch.float64, torch.float32):
        parts, values = [interface, str(dtype)], []
        try:
            for kind, b, seed in FINGERPRINT_PROBES:
                c = _call(fn, interface, make_probe(interface, kind, b, seed, dtype), _label(kind, b))
                values.append(c.value)
                parts.append(_num(c.value))
                for g in (c.grad_forget, c.grad_retain):
                    flat = [] if g is None else g.detach().double().flatten().tolist()
                    parts.append(",".join(_num(x) for x in flat) if flat else "-")
            break
        except _Fail:
            if dtype == torch.float32:
                raise
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return digest, values




def validate_candidate(fn: Callable[..., Any], interface: str = "faithful") -> ValidationResult:
    """Run the probe checks of the module docstring on a compiled loss function."""
    interface_args(interface)
    try:
        calls = [
            (_label(kind, b), _call(fn, interface, make_probe(interface, kind, b, seed), _label(kind, b)))
            for kind, b, seed in NORMAL_PROBES
        ]
        _check_gradient_exists(calls, interface)
        result = _check_direction([c for _, c in calls], interface)
        for kind, b, seed in EXTREME_PROBES:
            _call(fn, interface, make_probe(interface, kind, b, seed), _label(kind, b))
        _check_permutation(fn, interface)
        result.fingerprint, result.probe_values = _fingerprint(fn, interface)
    except _Fail as e:
        return ValidationResult(False, str(e))
    except RecursionError as e:  # pragma: no cover - caught in _call normally
        return ValidationResult(False, f"runtime error: {describe_error(e)}")
    return result


def _moves(g: torch.Tensor | None) -> bool:
    return g is not None and bool((g != 0).any())


def _check_gradient_exists(calls: list[tuple[str, _Call]], interface: str) -> None:
    """Check 2: a gradient w.r.t. the current forget input, non-zero on the "init" probe."""
    fk = _ROLES[interface]["forget"]
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
    roles = _ROLES[interface]
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


def _check_permutation(fn: Callable[..., Any], interface: str) -> None:
    """Check 5: permuting the batch rows (consistently across arguments) keeps the value."""
    kind, b, seed = PERMUTATION_PROBE
    probe = make_probe(interface, kind, b, seed)
    v0 = _call(fn, interface, probe, _label(kind, b)).value
    perm = torch.roll(torch.arange(b), 3).flip(0)
    v1 = _call(fn, interface, {k: t[perm] for k, t in probe.items()}, _label(kind, b) + " permuted").value
    if abs(v1 - v0) > 1e-4 * (1.0 + abs(v0)):
        raise _Fail(
            f"not invariant to the order of the batch rows (value {v0:.6g} becomes {v1:.6g} "
            "when the rows are permuted)"
        )
