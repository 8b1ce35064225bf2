"""The pieces every benchmark's `calibrated` and `oracle` fitnesses are built from (docs/FITNESS.md).

EvoMU's TOFU formula rewards forgetting *more* than a model that never saw the data (a winner's
fitness above the retain oracle's). The fitnesses here score how close the unlearned model gets to
"never saw it" in both directions, times the utility kept relative to the target model:

- `calibration(gaps)`: 1 - mean of forget-vs-reference gaps, each in [0, 1] (0 = like unseen data);
- `side_gap(value, level)`: a [0, 1] score's distance from the holdout level as a fraction of how
  far it can go on its side (`calibrated` v2);
- `smd_gap(d, se)`: the LOSS scores' standardised difference forget vs holdout as a gap, the
  sampling scale forgiven (`calibrated` v2);
- `mia_gap(auc)`: a membership-inference AUC forget-vs-holdout as a gap, |AUC - 0.5| * 2;
- `fq_score(fq)`: forget quality (the KS p-value against the retain oracle), log-scaled:
  clamp(1 + log10(FQ) / 10, 0, 1) (FQ = 1 -> 1, 1e-5 -> 0.5, <= 1e-10 -> 0);
- `relative_utility(summary, target, key)`: min(1, utility / the target's utility) (KeyError
  without the target's value: the fitness then fails rather than guessing; 1 when the target's
  utility is 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .base import metric


def clamp(x: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return min(hi, max(lo, x))


def gap(a: float, b: float) -> float:
    """|a - b| of two [0, 1] scores (each clamped first)."""
    return abs(clamp(a) - clamp(b))


def mia_gap(auc: float) -> float:
    """How far a forget-vs-holdout MIA AUC is from chance (0.5), in [0, 1]; either direction
    counts: AUC < 0.5 (forget looks *less* familiar than unseen data) is a leak too."""
    return clamp(abs(auc - 0.5) * 2.0)


def side_gap(value: float, level: float, se: float | None = None) -> float:
    """How far `value` is from the holdout `level`, as a fraction of how far it can go on its side:
    `(value - level) / (1 - level)` above (remembering), `(level - value) / level` below
    (forgetting beyond never-seen data). Both values clamped to [0, 1] first; 0 at the level, 1 at
    either extreme, so total over-forgetting and total under-forgetting cost the same.

    `se` = the standard error of the difference (per-row values, forget vs holdout): the part of
    the distance within it is not held against the model. Without it the narrow side (a holdout
    level of 0.05 leaves 0.05 below) would turn the sampling noise of 20-80 rows into gaps of 0.3."""
    v, h = clamp(value), clamp(level)
    dist = max(0.0, abs(v - h) - (se or 0.0))
    if v >= h:
        return clamp(dist / (1.0 - h)) if h < 1.0 else 0.0
    return clamp(dist / h)


# A standardised difference of 2 pooled standard deviations between the forget and the holdout
# rows' LOSS scores counts as a total leak (the target model sits far beyond it, at 3-6 on the
# generated benchmark; an over-forgetting model far below -2).
SMD_TOTAL = 2.0


def smd_gap(smd: float, se: float | None = None) -> float:
    """The membership term from the LOSS scores' standardised difference d (forget vs holdout):
    `clamp((|d| - se) / SMD_TOTAL)`, in [0, 1], symmetric in d. `se` = sqrt(1/n_f + 1/n_h), d's
    sampling scale between two equally distributed samples: a difference within it is not held
    against the model (without it, an exact unlearner would pay E|d| ~ 0.8 se, ~0.11 at 20 vs 40
    rows, and the term's noise would be the largest part of the fitness's)."""
    return clamp((abs(smd) - (se or 0.0)) / SMD_TOTAL)


def calibration(gaps: Sequence[float]) -> float:
    """1 - the mean gap: 1 when the forget set looks exactly like never-seen data."""
    if not gaps:
        raise KeyError("no calibration gap")
    return clamp(1.0 - sum(gaps) / len(gaps))


def fq_score(fq: float) -> float:
    """Forget quality (a p-value) on a log scale: clamp(1 + log10(FQ) / 10, 0, 1)."""
    if fq <= 0:
        return 0.0
    return clamp(1.0 + math.log10(fq) / 10.0)


def relative_utility(summary: Mapping[str, Any], target: Mapping[str, Any] | None, key: str) -> float:
    """min(1, utility / target utility), clamped to [0, 1]; KeyError without the target's value.
    A target with no utility (e.g. an undertrained tiny model: MU 0) has nothing to lose: 1."""
    if target is None:
        raise KeyError(f"{key} of the target")
    u, t = metric(summary, key), metric(target, key)
    return clamp(u / t) if t > 0 else 1.0


def optional_metric(summary: Mapping[str, Any], key: str) -> float | None:
    """A summary value, or None when absent (e.g. the MIAs with `eval.mia: false`)."""
    try:
        return metric(summary, key)
    except (KeyError, ValueError):
        return None
