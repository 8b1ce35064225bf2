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
6. fingerprint: sha256 (16 hex digits) of the values and gradients on float64 probes, each
   rounded to 4 significant digits, so that the same function written differently (`2 * x` vs
   `x + x`, renamed variables) gets the same fingerprint (behavioural de-duplication).

Probes are drawn fresh for every validation from a secret seed (`secrets`, held only in a local
variable of `validate_candidate`: a loss cannot recognise them by their values and behave only
there). A `ProbeProfile` shapes them like the run's real batches: the batch size of the run and
the range / mean / sd of the target model's per-sequence log-probs, the answer-token counts;
without one, the defaults below and random batch sizes. The fingerprint probes are a separate
draw from `fingerprint_seed`, which the caller keeps secret and equal for all candidates of one
search (fingerprints are comparable within a search only); without it, fixed legacy probes
(deterministic, but recognisable: pass a seed wherever de-duplication matters).

Default probes (faithful interface): 1-D tensors; current log-probs uniform in [-6, -0.05],
references within ~0.5 of them ("init" probe: reference == current), plus extreme ones (down to
-25, up to -1e-5). Extended interface: [B, T] per-token log-probs (0 where the mask is 0), float
masks with 1..T answer tokens per row, references per token; reductions use the mask.

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

__all__ = [
    "ProbeProfile",
    "ValidationResult",
    "describe_error",
    "make_probe",
    "profile_from_values",
    "validate_candidate",
]

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

NORMAL_KINDS = ("init", "normal", "normal", "normal", "normal")
EXTREME_KINDS = ("confident", "forgotten", "far-ref")
#: the legacy fixed fingerprint probes (used only when no fingerprint seed is given)
FINGERPRINT_PROBES = (("init", 6, 101), ("normal", 6, 102), ("forgotten", 6, 103))
EXTENDED_T = 7
INIT_PROBE_ROWS = 64


@dataclass(frozen=True)
class ProbeProfile:
    """What real batches look like, so that probes cannot be told apart from them by shape or range.

    `batch_size`: the run's batch size (None: random sizes); per-sequence (mean answer-token)
    log-probs of the target model on the forget set: `logp_min`..`logp_max`, and when given drawn
    from N(`logp_mean`, `logp_sd`) clipped to the range (else uniform); `tokens_min`..`tokens_max`:
    answer lengths (the extended interface's T is `tokens_max`)."""

    batch_size: int | None = None
    logp_min: float = -6.0
    logp_max: float = -0.05
    logp_mean: float | None = None
    logp_sd: float | None = None
    tokens_min: int = 1
    tokens_max: int | None = None  # None: a random width per probe (4..24)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | ProbeProfile | None) -> ProbeProfile:
        """From a plain dict (unknown keys rejected), sanitised: a sane range, T in [1, 512]."""
        if isinstance(d, ProbeProfile):
            return d
        p = cls(**(d or {}))
        hi = min(float(p.logp_max), -1e-4)
        lo = min(float(p.logp_min), hi - 1e-3)
        t_max = None if p.tokens_max is None else max(1, min(int(p.tokens_max), 512))
        return cls(
            batch_size=None if p.batch_size is None else max(1, min(int(p.batch_size), 1024)),
            logp_min=max(lo, -100.0), logp_max=hi,
            logp_mean=p.logp_mean, logp_sd=None if p.logp_sd is None else abs(float(p.logp_sd)),
            tokens_min=max(1, min(int(p.tokens_min), t_max or 4)), tokens_max=t_max,
        )


def profile_from_values(
    seq_logps: list[float], token_counts: list[int] | None = None, batch_size: int | None = None
) -> dict[str, Any]:
    """A probe profile (as the plain dict the validation job takes) from the target model's
    per-sequence mean answer-token log-probs on the forget set and the answers' token counts."""
    xs = [float(x) for x in seq_logps if math.isfinite(float(x))]
    out: dict[str, Any] = {"batch_size": batch_size}
    if xs:
        mean = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / max(1, len(xs) - 1))
        out.update(logp_min=min(xs), logp_max=max(xs), logp_mean=mean, logp_sd=sd)
    if token_counts:
        out.update(tokens_min=max(1, min(token_counts)), tokens_max=max(token_counts))
    return out


DEFAULT_PROFILE = ProbeProfile()


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
    interface: str,
    kind: str,
    batch: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    profile: ProbeProfile | None = None,
) -> dict[str, torch.Tensor]:
    """Seeded probe tensors for one call, by argument name.

    kind: "init" (reference == current), "normal" (reference within ~0.5 of current),
    "confident" (log-probs in [-1e-3, -1e-5]), "forgotten" (forget log-probs in [-25, -10],
    reference near 0), "far-ref" (the reverse: forget near 0, reference in [-25, -10]).
    """
    interface_args(interface)
    prof = profile or DEFAULT_PROFILE
    gen = torch.Generator().manual_seed(seed)
    roles = _ROLES[interface]
    width = prof.tokens_max or 4 + seed % 21
    shape: tuple[int, ...] = (batch,) if interface == "faithful" else (batch, width)

    def current(lo: float, hi: float) -> torch.Tensor:
        return -_uniform(gen, shape, -hi, -lo, dtype)

    def typical() -> torch.Tensor:  # like the target model's log-probs
        if prof.logp_mean is None or not prof.logp_sd:
            return current(prof.logp_min, prof.logp_max)
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * prof.logp_sd + prof.logp_mean
        return x.clamp(prof.logp_min, prof.logp_max).to(dtype)

    if kind == "confident":
        lpf, lpr = current(-1e-3, -1e-5), current(-1e-3, -1e-5)
    elif kind == "forgotten":
        lpf, lpr = current(-25.0, -10.0), current(-3.0, -0.05)
    elif kind == "far-ref":
        lpf, lpr = current(-1.0, -0.01), current(-3.0, -0.05)
    else:
        lpf, lpr = typical(), typical()
    rf, rr = _references(kind, lpf, lpr, current, lambda: torch.randn(shape, generator=gen, dtype=torch.float64))
    out: dict[str, torch.Tensor] = {}
    if interface == "extended":
        lo_t = prof.tokens_min
        lengths = torch.randint(lo_t, width + 1, (batch,), generator=gen)
        lengths[0] = width
        mf = (torch.arange(width)[None, :] < lengths[:, None]).to(dtype)
        lengths_r = torch.randint(lo_t, width + 1, (batch,), generator=gen)
        mr = (torch.arange(width)[None, :] < lengths_r[:, None]).to(dtype)
        lpf, rf, lpr, rr = lpf * mf, rf * mf, lpr * mr, rr * mr
        out[roles["mask_forget"]] = mf  # type: ignore[index]
        out[roles["mask_retain"]] = mr  # type: ignore[index]
    out[roles["forget"]] = lpf  # type: ignore[index]
    out[roles["retain"]] = lpr  # type: ignore[index]
    out[roles["ref_forget"]] = rf  # type: ignore[index]
    out[roles["ref_retain"]] = rr  # type: ignore[index]
    return out



def _references(kind: str, lpf: torch.Tensor, lpr: torch.Tensor, current: Callable[[float, float], torch.Tensor],
                noise: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference model's log-probs for a probe of `kind` (see `make_probe`), kept below 0."""
    if kind == "init":
        rf, rr = lpf.clone(), lpr.clone()
    elif kind == "forgotten":
        rf, rr = current(-1.0, -0.05), lpr + 0.1 * noise().to(lpr.dtype)
    elif kind == "far-ref":
        rf, rr = current(-25.0, -10.0), lpr.clone()
    else:
        rf = lpf + 0.5 * noise().to(lpf.dtype)
        rr = lpr + 0.3 * noise().to(lpr.dtype)
    return rf.clamp(max=-1e-6), rr.clamp(max=-1e-6)

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
    for dtype in (torch.float64, torch.float32):
        parts, values = [interface, str(dtype)], []
        try:
            for kind, b, pseed in probes:
                c = _call(fn, interface, make_probe(interface, kind, b, pseed, dtype, prof), _label(kind, b))
                values.append(c.value)
                parts.append(_num(c.value))
                for g in (c.grad_forget, c.grad_retain):
                    flat = [] if g is None else g.detach().double().flatten().tolist()
                    parts.append(",".join(_num(x) for x in flat) if flat else "-")
            break
        except _Fail:
            if dtype == torch.float32:
                raise
    if parts[1] == str(torch.float64):
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
        calls = [
            (_label(kind, b), _call(fn, interface, make_probe(interface, kind, b, seed, profile=prof), _label(kind, b)))
            for kind, b, seed in normal
        ]
        _check_gradient_exists(calls, interface)
        result = _check_direction([c for _, c in calls], interface)
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
