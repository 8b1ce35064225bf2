"""Reading a parent's measured metrics: is it under-forgetting, over-forgetting or losing utility?

The forget level is compared with the level a model that never saw the forget set reaches:
the candidate's own holdout ROUGE / probability when its metrics carry them, else the request's
reference holdout level, else the retain oracle's forget level. A membership-inference AUC of the
forget set against the holdout set far above 0.5 also says "still remembered", far below 0.5
"forgotten too hard" (the forget set now looks less familiar than unseen data). Utility is
compared with the target model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..base import ReferenceLevels, metric_value

UNDER = "under-forgetting"
OVER = "over-forgetting"
UTILITY = "utility loss"

# Margins: a gap smaller than these is read as "at the level" (metric noise on small splits).
LEVEL_MARGIN = 0.05  # absolute, on ROUGE / probability
LEVEL_REL = 0.25  # ... or this share of the target-to-level gap (below: of the level), if larger
AUC_MARGIN = 0.1  # |AUC - 0.5| beyond this is a finding
UTILITY_DROP = 0.1  # relative utility drop against the target that counts as utility loss
MIA_KEYS = ("mia_loss", "mia_min_k", "mia_min_k_plus_plus", "mia_zlib", "mia_gradnorm", "mia_auc")


@dataclass(frozen=True)
class Diagnosis:
    """What the metrics call for. `findings` in priority order (UTILITY, OVER, UNDER), each with
    its evidence, e.g. ("under-forgetting", "forget ROUGE 0.61 vs holdout 0.18")."""

    findings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def primary(self) -> str | None:
        return self.findings[0][0] if self.findings else None

    def has(self, kind: str) -> bool:
        return any(k == kind for k, _ in self.findings)

    def describe(self) -> str:
        return "; ".join(f"{k} ({why})" for k, why in self.findings)


def _level_finding(name: str, value: float | None, goal: tuple[float, str] | None,
                   target: float | None, margin: float = LEVEL_MARGIN) -> tuple[str, str] | None:
    if value is None or goal is None:
        return None
    level, label = goal
    # Above the level the gap is read against the target-to-level gap, below it against the
    # level itself (the level may sit near 0, where any fall is a large one).
    up = max(margin, LEVEL_REL * abs(target - level)) if target is not None else margin
    down = max(margin, LEVEL_REL * abs(level))
    why = f"{name} {value:.2f} vs {label} {level:.2f}"
    if value > level + up:
        return UNDER, why
    if value < level - down:
        return OVER, why
    return None


def _goal(own: float | None, holdout: float | None, oracle: float | None) -> tuple[float, str] | None:
    for v, label in ((own, "holdout"), (holdout, "holdout"), (oracle, "oracle")):
        if v is not None:
            return v, label
    return None


def diagnose(metrics: Mapping[str, Any] | None, reference: ReferenceLevels | None,
             margin: float = LEVEL_MARGIN) -> Diagnosis:
    """The findings of a parent's metrics against the reference levels (empty when unknown). A
    gap to the level smaller than `margin` (absolute, on ROUGE / probability) is read as noise:
    `OfflineConfig.level_margin`, set from the metrics' seed sd in the noise datasheet."""
    ref = reference or ReferenceLevels()
    m = metrics if isinstance(metrics, Mapping) else {}
    level: list[tuple[str, str]] = []
    for name, key, own_key, holdout, oracle, target in (
        ("forget ROUGE", "forget_rouge", "holdout_rouge", ref.holdout_rouge, ref.oracle_forget_rouge,
         ref.target_forget_rouge),
        ("forget Prob", "forget_prob", "holdout_prob", ref.holdout_prob, ref.oracle_forget_prob,
         ref.target_forget_prob),
    ):
        f = _level_finding(name, metric_value(m, key), _goal(metric_value(m, own_key), holdout, oracle), target,
                           margin)
        if f is not None:
            level.append(f)
    for key in MIA_KEYS:
        auc = metric_value(m, key)
        if auc is not None and 0.0 <= auc <= 1.0:
            if auc > 0.5 + AUC_MARGIN:
                level.append((UNDER, f"{key} AUC {auc:.2f} >> 0.5"))
            elif auc < 0.5 - AUC_MARGIN:
                level.append((OVER, f"{key} AUC {auc:.2f} << 0.5"))
            break  # one MIA is enough evidence; the first key present is the primary attack
    findings: list[tuple[str, str]] = []
    utility, target_u = metric_value(m, ref.utility_key), ref.target_utility
    if utility is not None and target_u is not None and target_u > 0 and utility < target_u * (1 - UTILITY_DROP):
        findings.append((UTILITY, f"model utility {utility:.2f} vs target {target_u:.2f}"))
    # The first forget-level finding decides (ROUGE before Prob before MIA); conflicting later
    # evidence is ignored rather than averaged.
    if level:
        kind = level[0][0]
        findings.append((kind, ", ".join(why for k, why in level if k == kind)))
    findings.sort(key=lambda f: (UTILITY, OVER, UNDER).index(f[0]))
    return Diagnosis(findings)
