"""The probe tensors of a validation (`make_probe`) and their shape (`ProbeProfile`).

Probes are drawn fresh for every validation from a secret seed (`secrets`, held only in a local
variable of `validate_candidate`: a loss cannot recognise them by their values and behave only
there). A `ProbeProfile` shapes them like the run's real batches: the batch size of the run and
the range / mean / sd of the target model's per-sequence log-probs, the answer-token counts;
without one, the defaults below and random batch sizes. The fingerprint probes are a separate
draw from `fingerprint_seed`, which the caller keeps secret and equal for all candidates of one
search (fingerprints are comparable within a search only); without it, fixed legacy probes
(deterministic, but recognisable: pass a seed wherever de-duplication matters).

Default probes (faithful interface): 1-D tensors; current log-probs uniform in [-6, -0.05],
references within ~0.5 of them ("init" probe: reference == current), the forget rows already
moved 0.05..3 nats below the reference ("moved"), the retain rows below it ("retain-low"), plus
extreme ones (down to -25, up to -1e-5). Extended interface: laid out like a real right-padded
batch: [B, T] per-token log-probs (0 where the mask is 0), each row a prompt (mask 0, 2..48
tokens or the profile's real counts), then its answer (mask 1), then padding; forget and retain
widths apart; references per token; reductions use the mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .policy import interface_args

# (current forget, current retain, forget mask, retain mask, ref forget, ref retain) argument names
ARGUMENT_ROLES: dict[str, dict[str, str | None]] = {
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


#: "moved": the forget rows already moved below the reference by up to a few nats, the retain
#: rows near it (the window between "normal" and "forgotten" that a run goes through);
#: "retain-low": the retain rows slightly below the reference (a loss must not push them further)
NORMAL_KINDS = ("init", "normal", "normal", "moved", "retain-low", "normal")
EXTREME_KINDS = ("confident", "forgotten", "far-ref")
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
    tokens_max: int | None = None  # None: a random maximum per probe (4..64)
    prompt_min: int = 2  # prompt tokens before the answer (mask 0), as in real right-padded batches
    prompt_max: int = 48
    # samples of the real answer / prompt token counts: lengths are drawn from them when given
    token_counts: tuple[int, ...] | None = None
    prompt_counts: tuple[int, ...] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | ProbeProfile | None) -> ProbeProfile:
        """From a plain dict (unknown keys rejected), sanitised: a sane range, T in [1, 512]."""
        if isinstance(d, ProbeProfile):
            return d
        p = cls(**(d or {}))
        hi = min(float(p.logp_max), -1e-4)
        lo = min(float(p.logp_min), hi - 1e-3)
        t_max = None if p.tokens_max is None else max(1, min(int(p.tokens_max), 512))
        p_min = max(1, min(int(p.prompt_min), 256))  # real batches never start with an answer token
        counts = _counts(p.token_counts, 1, 512)
        prompts = _counts(p.prompt_counts, 1, 256)
        return cls(
            batch_size=None if p.batch_size is None else max(1, min(int(p.batch_size), 1024)),
            logp_min=max(lo, -100.0), logp_max=hi,
            logp_mean=p.logp_mean, logp_sd=None if p.logp_sd is None else abs(float(p.logp_sd)),
            tokens_min=max(1, min(int(p.tokens_min), t_max or 4)), tokens_max=t_max,
            prompt_min=p_min, prompt_max=max(p_min, min(int(p.prompt_max), 256)),
            token_counts=counts, prompt_counts=prompts,
        )


def _counts(xs: Any, lo: int, hi: int) -> tuple[int, ...] | None:
    """A sample of token counts, clipped to [lo, hi] and at most 1024 long (None when empty)."""
    if not xs:
        return None
    return tuple(max(lo, min(int(x), hi)) for x in list(xs)[:1024])


def profile_from_values(
    seq_logps: list[float], token_counts: list[int] | None = None, batch_size: int | None = None,
    prompt_counts: list[int] | None = None,
) -> dict[str, Any]:
    """A probe profile (as the plain dict the validation job takes) from the target model's
    per-sequence mean answer-token log-probs on the forget set, the answers' token counts and the
    prompts' token counts (samples of both kept: the extended probes draw their lengths there)."""
    xs = [float(x) for x in seq_logps if math.isfinite(float(x))]
    out: dict[str, Any] = {"batch_size": batch_size}
    if xs:
        mean = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / max(1, len(xs) - 1))
        out.update(logp_min=min(xs), logp_max=max(xs), logp_mean=mean, logp_sd=sd)
    if token_counts:
        out.update(tokens_min=max(1, min(token_counts)), tokens_max=max(token_counts),
                   token_counts=[int(x) for x in token_counts[:1024]])
    if prompt_counts:
        out.update(prompt_min=max(1, min(prompt_counts)), prompt_max=max(prompt_counts),
                   prompt_counts=[int(x) for x in prompt_counts[:1024]])
    return out


DEFAULT_PROFILE = ProbeProfile()


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
    "moved" (forget rows 0.05..3 nats below the reference), "retain-low" (retain rows 0.05..2
    nats below the reference), "confident" (log-probs in [-1e-3, -1e-5]), "forgotten" (forget
    log-probs in [-25, -10], reference near 0), "far-ref" (the reverse: forget near 0, reference
    in [-25, -10]).

    Extended interface: laid out like a real right-padded batch (`data.prompting`): each row has
    a prompt of `prompt_min..prompt_max` tokens (mask 0, log-prob 0), then its answer tokens
    (mask 1), then padding; the width is the longest row, forget and retain widths apart; lengths
    are drawn from the profile's samples of real counts when it has them. Rows are independent
    draws (no row is special: real batches are shuffled).
    """
    interface_args(interface)
    prof = profile or DEFAULT_PROFILE
    gen = torch.Generator().manual_seed(seed)
    roles = ARGUMENT_ROLES[interface]
    masks: tuple[torch.Tensor, torch.Tensor] | None = None
    if interface == "extended":
        t_max = prof.tokens_max or 4 + seed % 61
        masks = (_answer_mask(gen, batch, prof, t_max, dtype), _answer_mask(gen, batch, prof, t_max, dtype))
    shape_f = (batch,) if masks is None else tuple(masks[0].shape)
    shape_r = (batch,) if masks is None else tuple(masks[1].shape)

    def current(lo: float, hi: float, shape: tuple[int, ...]) -> torch.Tensor:
        return -_uniform(gen, shape, -hi, -lo, dtype)

    def typical(shape: tuple[int, ...]) -> torch.Tensor:  # like the target model's log-probs
        if prof.logp_mean is None or not prof.logp_sd:
            return current(prof.logp_min, prof.logp_max, shape)
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * prof.logp_sd + prof.logp_mean
        return x.clamp(prof.logp_min, prof.logp_max).to(dtype)

    def noise(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    if kind == "confident":
        lpf, lpr = current(-1e-3, -1e-5, shape_f), current(-1e-3, -1e-5, shape_r)
    elif kind == "forgotten":
        lpf, lpr = current(-25.0, -10.0, shape_f), current(-3.0, -0.05, shape_r)
    elif kind == "far-ref":
        lpf, lpr = current(-1.0, -0.01, shape_f), current(-3.0, -0.05, shape_r)
    else:
        lpf, lpr = typical(shape_f), typical(shape_r)
    if kind == "init":
        rf, rr = lpf.clone(), lpr.clone()
    elif kind == "forgotten":
        rf, rr = current(-1.0, -0.05, shape_f), lpr + 0.1 * noise(shape_r)
    elif kind == "far-ref":
        rf, rr = current(-25.0, -10.0, shape_f), lpr.clone()
    elif kind == "moved":  # the reference above: the forget rows have moved down already
        rf, rr = lpf.clone(), lpr + 0.05 * noise(shape_r)
        lpf = lpf - _uniform(gen, shape_f, 0.05, 3.0, dtype)
    elif kind == "retain-low":
        rf, rr = lpf + 0.3 * noise(shape_f), lpr.clone()
        lpr = lpr - _uniform(gen, shape_r, 0.05, 2.0, dtype)
    else:
        rf, rr = lpf + 0.5 * noise(shape_f), lpr + 0.3 * noise(shape_r)
    rf, rr = rf.clamp(max=-1e-6), rr.clamp(max=-1e-6)
    out: dict[str, torch.Tensor] = {}
    if masks is not None:
        mf, mr = masks
        lpf, rf, lpr, rr = lpf * mf, rf * mf, lpr * mr, rr * mr
        out[roles["mask_forget"]] = mf  # type: ignore[index]
        out[roles["mask_retain"]] = mr  # type: ignore[index]
    out[roles["forget"]] = lpf  # type: ignore[index]
    out[roles["retain"]] = lpr  # type: ignore[index]
    out[roles["ref_forget"]] = rf  # type: ignore[index]
    out[roles["ref_retain"]] = rr  # type: ignore[index]
    return out


def _draw(gen: torch.Generator, sample: tuple[int, ...] | None, lo: int, hi: int, n: int) -> torch.Tensor:
    """`n` counts: from the real sample when there is one, else uniform in [lo, hi]."""
    if sample:
        return torch.tensor(sample)[torch.randint(0, len(sample), (n,), generator=gen)]
    return torch.randint(lo, hi + 1, (n,), generator=gen)


def _answer_mask(gen: torch.Generator, batch: int, prof: ProbeProfile, t_max: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, width] float mask: per row `prompt` zeros, `answer` ones, then zeros to the width."""
    answers = _draw(gen, prof.token_counts, min(prof.tokens_min, t_max), t_max, batch)
    prompts = _draw(gen, prof.prompt_counts, prof.prompt_min, prof.prompt_max, batch)
    width = int((prompts + answers).max())
    cols = torch.arange(width)[None, :]
    return ((cols >= prompts[:, None]) & (cols < (prompts + answers)[:, None])).to(dtype)
