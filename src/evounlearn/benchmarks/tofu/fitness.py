"""TOFU-shaped benchmarks, fitnesses (docs/FITNESS.md; the utility is MU for all three):

- `evomu` (the EvoMU paper's, the default): `0.5 * MU + 0.5 * mean(1 - forget_ROUGE, 1 - forget_Prob)`,
  every value clamped to [0, 1];
- `calibrated` (version 2): `(1 - mean(side_gap(ROUGE_f, ROUGE_h), side_gap(Prob_f, Prob_h),
  clamp((|d_LOSS| - se_d) / 2))) * min(1, MU / MU_target)` (each side gap less its standard error) with h = the holdout split matching the
  forget split (`CALIBRATED_FORMULA`); `tofu_calibrated_v1_fitness` keeps the earlier formula (not registered: for comparisons with
  older results, e.g. benchmarks/noise.py);
- `oracle`: `clamp(1 + log10(FQ) / 10, 0, 1) * min(1, MU / MU_target)` (FQ needs the retain
  oracle's results);
- `robust`: calibrated's first factor of the worst case among the model and the model after each
  recovery attack of its run, times `min(1, MU / MU_target)` (`ROBUST_FORMULA`; the attacks each
  part runs: `ROBUST_PART_OPTIONS`).
"""


from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

# torch, transformers and the evaluation stack are imported inside the functions that use them:
# the command line imports this module to check a command's options and data in well under a
# second, before anything heavy is loaded.
if TYPE_CHECKING:
    pass
from ..base import (
    FitnessSpec,
    metric,
)
from ..fitness import (
    calibration,
    fq_score,
    gap,
    mia_gap,
    optional_metric,
    relative_utility,
    side_gap,
    smd_gap,
)


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


def tofu_fitness(summary: Mapping[str, Any], target: Mapping[str, Any] | None = None) -> float:
    """The EvoMU paper's fitness: `0.5 * MU + 0.5 * mean(1 - forget_rouge, 1 - forget_prob)`, clamped to [0, 1]."""
    mu = _clamp(metric(summary, "model_utility"))
    rouge = _clamp(metric(summary, "forget_rouge"))
    prob = _clamp(metric(summary, "forget_prob"))
    return 0.5 * mu + 0.5 * (_clamp(1.0 - rouge) + _clamp(1.0 - prob)) / 2.0


def tofu_calibrated_fitness(summary: Mapping[str, Any], target: Mapping[str, Any] | None = None) -> float:
    """`calibrated` version 2 (docs/FITNESS.md): the forget rows should look like the holdout rows
    (never trained on), each gap measured as a fraction of how far it can go on its side of the
    holdout level (total over- and total under-forgetting cost alike), the membership term from the
    LOSS scores' standardised difference; times the utility kept relative to the target model. The
    membership term is left out when the MIAs were not computed (`eval.mia: false`)."""
    return calibrated_term(summary) * relative_utility(summary, target, "model_utility")


def calibrated_gaps(summary: Mapping[str, Any]) -> dict[str, float]:
    """`calibrated`'s gaps (forget vs holdout), each in [0, 1]: `rouge_gap`, `prob_gap` and, when
    the MIAs were computed, `membership_gap`. The datasheet (benchmarks/noise.py) reads them one
    by one to say which carries the noise."""
    gaps = {f"{k}_gap": side_gap(metric(summary, f"forget_{k}"), metric(summary, f"holdout_{k}"),
                                 optional_metric(summary, f"forget_{k}_gap_se")) for k in ("rouge", "prob")}
    smd = optional_metric(summary, "mia_loss_smd")
    if smd is not None:
        gaps["membership_gap"] = smd_gap(smd, optional_metric(summary, "mia_loss_smd_se"))
    return gaps


def calibrated_term(summary: Mapping[str, Any]) -> float:
    """`calibrated`'s first factor: 1 - the mean of its gaps (forget vs holdout), without the utility."""
    return calibration(list(calibrated_gaps(summary).values()))


def tofu_robust_fitness(summary: Mapping[str, Any], target: Mapping[str, Any] | None = None) -> float:
    """`robust` (docs/FITNESS.md): the calibrated term of the worst case among the model as it is
    and the model after each recovery attack in the summary ("<key>@<attack>" keys, a run's
    `attacks.names`), times the utility the model itself keeps relative to the target's. KeyError
    when the summary holds no attacked model (the run was not attacked: nothing to score)."""
    from ...attacks.suite import attacked_views

    views = attacked_views(summary)
    if not views:
        raise KeyError("robust: the summary holds no attacked model (attacks.names)")
    worst = min([calibrated_term(summary), *(calibrated_term(v) for v in views.values())])
    return worst * relative_utility(summary, target, "model_utility")


def tofu_calibrated_v1_fitness(summary: Mapping[str, Any], target: Mapping[str, Any] | None = None) -> float:
    """`calibrated` version 1 (not registered; kept to compare with older results): absolute
    gaps to the holdout level and the LOSS attack's AUC, times the relative utility."""
    gaps = [gap(metric(summary, "forget_rouge"), metric(summary, "holdout_rouge")),
            gap(metric(summary, "forget_prob"), metric(summary, "holdout_prob"))]
    auc = optional_metric(summary, "mia_loss")
    if auc is not None:
        gaps.append(mia_gap(auc))
    return calibration(gaps) * relative_utility(summary, target, "model_utility")


def tofu_oracle_fitness(summary: Mapping[str, Any], target: Mapping[str, Any] | None = None) -> float:
    """`oracle` (docs/FITNESS.md): forget quality against the retain oracle, log-scaled, times the
    utility kept relative to the target model."""
    return fq_score(metric(summary, "forget_quality")) * relative_utility(summary, target, "model_utility")


TOFU_FORMULA = "0.5 * MU + 0.5 * mean(1 - forget_ROUGE, 1 - forget_Prob), values clamped to [0, 1]"


CALIBRATED_FORMULA = ("(1 - mean(side_gap(forget_ROUGE, holdout_ROUGE), side_gap(forget_Prob, holdout_Prob), "
                      "clamp((|d_LOSS| - se_d) / 2))) * min(1, MU / MU_target), where side_gap(f, h) = "
                      "max(0, |f - h| - se) / (1 - h) above the holdout level h and / h below it (se = the "
                      "standard error of the difference of the per-row means), d_LOSS = the standardised mean "
                      "difference of the per-row answer losses, holdout minus forget, se_d = sqrt(1/n_f + 1/n_h)")

CALIBRATED_V1_FORMULA = ("(1 - mean(|forget_ROUGE - holdout_ROUGE|, |forget_Prob - holdout_Prob|, "
                         "2 * |AUC_LOSS(forget vs holdout) - 0.5|)) * min(1, MU / MU_target)")


ORACLE_FORMULA = "clamp(1 + log10(forget_quality) / 10, 0, 1) * min(1, MU / MU_target)"

ROBUST_FORMULA = ("min(C(model), C(model after each attack)) * min(1, MU / MU_target), where C = calibrated's first "
                  "factor (1 - mean(side_gap(forget_ROUGE, holdout_ROUGE), side_gap(forget_Prob, holdout_Prob), "
                  "clamp((|d_LOSS| - se_d) / 2))), each attacked model scored on its own forget and holdout rows, "
                  "MU = the unattacked model's; attacks: quantize_4bit and relearn (10 steps) on the search part, "
                  "quantize_8bit, quantize_4bit, relearn (50 steps), finetune on the report part")

#: what the attacked models are scored on during the search: the calibrated term's inputs only
ROBUST_METRICS = "forget_rouge,forget_prob,holdout,gap_se,mia_loss_smd"
#: the attacks the `robust` fitness runs inside a candidate's job, by part: the cheap ones during
#: the search (4-bit rounding: no training; relearning: 10 steps), the full set for the report part
#: (finalists, baselines). A run's own `attacks` options win.
ROBUST_PART_OPTIONS: dict[str, dict[str, Any]] = {
    "search": {"attacks": {"names": "quantize_4bit,relearn", "relearn": {"steps": 10}, "metrics": ROBUST_METRICS}},
    "report": {"attacks": {"names": "quantize_8bit,quantize_4bit,relearn,finetune"}},
    "all": {"attacks": {"names": "quantize_8bit,quantize_4bit,relearn,finetune"}},
}


TOFU_FITNESSES = {
    "evomu": FitnessSpec("evomu", tofu_fitness, "model_utility", TOFU_FORMULA),
    "calibrated": FitnessSpec("calibrated", tofu_calibrated_fitness, "model_utility", CALIBRATED_FORMULA,
                              needs_target_utility=True, version=2),
    "oracle": FitnessSpec("oracle", tofu_oracle_fitness, "model_utility", ORACLE_FORMULA,
                          needs_target_utility=True),
    "robust": FitnessSpec("robust", tofu_robust_fitness, "model_utility", ROBUST_FORMULA,
                          needs_target_utility=True, part_options=ROBUST_PART_OPTIONS),
}


GUIDANCE = (
    "- Forget metrics high (forget_ROUGE, forget_Prob): the model still remembers; forget harder "
    "(a larger forget weight or a sharper penalty, a larger margin, more epochs).",
    "- Utility low (MU or its components, the retain scores): protect retention (a stronger "
    "retain term, anchor the retain log-probs to their reference, bound the forget term with "
    "softplus / sigmoid / clamp, fewer epochs).",
    "- Training loss diverging or stuck: fix the scale of the terms and bound the forget term.",
)

