"""Pure metric functions: no model, no I/O.

Every function takes already-computed quantities (average NLLs, token log-probs, logits, argmax
predictions, generated strings) and returns a float aggregate or a numpy array of per-example
values in input order. Definitions follow the benchmarks' papers (TOFU, MUSE, WMDP) and, where
they are silent, the reference implementations in locuslab/open-unlearning (`src/evals/metrics/`);
every deliberate difference is stated in the function's docstring.

Notation: for an answer ``a`` of ``n`` tokens given a question ``q``,
``avg_nll = -(1/n) sum_t log p(a_t | q, a_<t)`` and the length-normalised probability is
``P~(a|q) = exp(-avg_nll)``.

Token-level inputs (``token_logps``, ``mask``, ``logits``, ``labels``) may be torch tensors; they
are converted with ``.detach().float().cpu()`` (integer labels with ``.detach().cpu()``).
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats

from ..data.prompting import IGNORE_INDEX
from ..errors import DataError

__all__ = [
    "MIN_K_PLUS_PLUS_VAR_FLOOR",
    "MU_COMPONENTS",
    "MetricInputError",
    "exact_memorization",
    "extraction_strength",
    "forget_quality",
    "grad_norm",
    "harmonic_mean",
    "length_normalized_prob",
    "mia_auc",
    "mia_loss_scores",
    "mia_min_k_plus_plus_scores",
    "mia_min_k_scores",
    "mia_reference_scores",
    "mia_zlib_scores",
    "min_k_plus_plus_z",
    "model_utility",
    "option_normalized_prob",
    "privleak",
    "rouge_l_f1",
    "rouge_l_recall",
    "teacher_forced_es_em",
    "truth_ratio",
    "truth_ratio_forget",
    "truth_ratio_forget_values",
    "truth_ratio_true_better",
    "truth_ratio_true_better_values",
]

ArrayLike = Any  # numpy array, list of numbers, or torch tensor

#: The 9 numbers whose harmonic mean is TOFU's model utility, in the canonical order.
MU_COMPONENTS: tuple[str, ...] = (
    "retain_prob",
    "retain_rouge",
    "retain_truth_ratio",
    "real_authors_prob",
    "real_authors_rouge",
    "real_authors_truth_ratio",
    "world_facts_prob",
    "world_facts_rouge",
    "world_facts_truth_ratio",
)


class MetricInputError(DataError, ValueError):
    """Bad input to a metric (empty, wrong shape, negative, NaN). Is both a DataError and a ValueError."""


# --------------------------------------------------------------------------------------------
# conversion helpers


def _as_float_array(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy().astype(np.float64)
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MetricInputError(f"{name}: expected numbers, got {type(x).__name__} ({e})") from None


def _as_int_list(x: ArrayLike, name: str) -> list[int]:
    if isinstance(x, torch.Tensor):
        if x.dim() > 1:
            raise MetricInputError(f"{name}: expected a 1-D sequence, got shape {tuple(x.shape)}")
        return [int(v) for v in x.detach().cpu().tolist()]
    arr = np.asarray(x)
    if arr.ndim > 1:
        raise MetricInputError(f"{name}: expected a 1-D sequence, got shape {arr.shape}")
    return [int(v) for v in arr.ravel().tolist()]


def _check_finite(arr: np.ndarray, name: str) -> None:
    if np.isnan(arr).any():
        raise MetricInputError(f"{name}: contains NaN")


def _token_inputs(token_logps: ArrayLike, mask: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    lp = _as_float_array(token_logps, "token_logps")
    m = _as_float_array(mask, "mask") != 0
    if lp.ndim != 2 or lp.shape != m.shape:
        raise MetricInputError(
            f"token_logps and mask must both be [B, T]; got {lp.shape} and {m.shape}"
        )
    return lp, m


def _check_k(k: float) -> None:
    if not 0.0 < k <= 1.0:
        raise MetricInputError(f"k must be in (0, 1], got {k}")


# --------------------------------------------------------------------------------------------
# ROUGE


@functools.lru_cache(maxsize=4)
def _rouge_scorer(use_stemmer: bool) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def _rouge_l(preds: Sequence[str], refs: Sequence[str], use_stemmer: bool, field: str) -> np.ndarray:
    if len(preds) != len(refs):
        raise MetricInputError(f"preds and refs differ in length: {len(preds)} vs {len(refs)}")
    scorer = _rouge_scorer(bool(use_stemmer))
    # RougeScorer.score(target, prediction)
    return np.array(
        [getattr(scorer.score(str(r), str(p))["rougeL"], field) for p, r in zip(preds, refs)],
        dtype=np.float64,
    )


def rouge_l_recall(preds: Sequence[str], refs: Sequence[str], use_stemmer: bool = True) -> np.ndarray:
    """Per-example ROUGE-L recall (TOFU's ROUGE): ``LCS(pred, ref) / len(ref)`` in tokens.

    Tokenisation and stemming are rouge-score's (``RougeScorer(["rougeL"], use_stemmer=...)``).
    """
    return _rouge_l(preds, refs, use_stemmer, "recall")


def rouge_l_f1(preds: Sequence[str], refs: Sequence[str], use_stemmer: bool = False) -> np.ndarray:
    """Per-example ROUGE-L F1 (MUSE's VerbMem/KnowMem): ``2 P R / (P + R)`` with
    ``P = LCS/len(pred)``, ``R = LCS/len(ref)``. MUSE uses no stemming (the default here);
    open-unlearning uses stemming (pass ``use_stemmer=True``).
    """
    return _rouge_l(preds, refs, use_stemmer, "fmeasure")


# --------------------------------------------------------------------------------------------
# probabilities and truth ratio


def length_normalized_prob(avg_nll: ArrayLike) -> np.ndarray:
    """``P~ = exp(-avg_nll)`` elementwise (avg_nll = mean token NLL of the answer)."""
    return np.exp(-_as_float_array(avg_nll, "avg_nll"))


def _pert_matrix(pert_avg_nll: ArrayLike, n: int, name: str) -> np.ndarray:
    pert = _as_float_array(pert_avg_nll, name)
    if pert.ndim == 1 and pert.shape[0] == n:
        pert = pert[:, None]  # K = 1
    if pert.ndim != 2 or pert.shape[0] != n or pert.shape[1] == 0:
        raise MetricInputError(f"{name} must be [N, K] with N = {n} and K >= 1, got {pert.shape}")
    _check_finite(pert, name)
    return pert


def truth_ratio(para_avg_nll: ArrayLike, pert_avg_nll: ArrayLike) -> np.ndarray:
    """Per-question TOFU truth ratio ``R = P~_pert / P~_para``.

    ``P~_para = exp(-para_avg_nll[i])`` and ``P~_pert`` is the geometric mean of the K perturbed
    answers' length-normalised probabilities, ``exp(-mean_j pert_avg_nll[i, j])``, so
    ``R[i] = exp(para_avg_nll[i] - mean_j pert_avg_nll[i, j])``.
    (open-unlearning adds 1e-10 to the denominator; we compute the exact ratio in log space.)

    Args:
        para_avg_nll: [N] average NLL of the paraphrased (or, for real authors / world facts,
            the true) answer.
        pert_avg_nll: [N, K] average NLL of each perturbed answer ([N] is read as K = 1).
    """
    para = _as_float_array(para_avg_nll, "para_avg_nll")
    if para.ndim != 1:
        raise MetricInputError(f"para_avg_nll must be [N], got shape {para.shape}")
    _check_finite(para, "para_avg_nll")
    pert = _pert_matrix(pert_avg_nll, para.shape[0], "pert_avg_nll")
    with np.errstate(over="ignore"):
        return np.exp(para - pert.mean(axis=1))


def _ratios(R: ArrayLike) -> np.ndarray:
    r = _as_float_array(R, "R").ravel()
    _check_finite(r, "R")
    if (r < 0).any():
        raise MetricInputError("truth ratios must be >= 0")
    return r


def _mean_or_error(values: np.ndarray, name: str) -> float:
    if values.size == 0:
        raise MetricInputError(f"{name}: no values to aggregate")
    return float(values.mean())


def truth_ratio_forget_values(R: ArrayLike) -> np.ndarray:
    """Per-example forget-split score ``min(R, 1/R)`` (1 when true and perturbed are equally likely).

    R = 0 or R = inf gives 0.
    """
    r = _ratios(R)
    with np.errstate(divide="ignore"):
        return np.minimum(r, 1.0 / r)


def truth_ratio_forget(R: ArrayLike) -> float:
    """Forget aggregate ``mean_i min(R_i, 1/R_i)``."""
    return _mean_or_error(truth_ratio_forget_values(R), "truth_ratio_forget")


def truth_ratio_true_better_values(R: ArrayLike) -> np.ndarray:
    """Per-example retain/real-authors/world-facts score ``max(0, 1 - R)`` (higher = truth preferred)."""
    return np.maximum(0.0, 1.0 - _ratios(R))


def truth_ratio_true_better(R: ArrayLike) -> float:
    """Retain / real authors / world facts aggregate ``mean_i max(0, 1 - R_i)``."""
    return _mean_or_error(truth_ratio_true_better_values(R), "truth_ratio_true_better")


def option_normalized_prob(true_avg_nll: ArrayLike, pert_avg_nll: ArrayLike) -> np.ndarray:
    """Per-example ``P~_true / (P~_true + sum_j P~_pert_j)`` with ``P~ = exp(-avg_nll)``.

    Computed stably as ``softmax([-true, -pert_1, ..., -pert_K])[0]``
    (open-unlearning adds 1e-10 to the denominator; the difference is below 1e-10).

    Args:
        true_avg_nll: [N] average NLL of the true answer.
        pert_avg_nll: [N, K] average NLL of each perturbed (wrong) option ([N] is read as K = 1).
    """
    true = _as_float_array(true_avg_nll, "true_avg_nll")
    if true.ndim != 1:
        raise MetricInputError(f"true_avg_nll must be [N], got shape {true.shape}")
    _check_finite(true, "true_avg_nll")
    pert = _pert_matrix(pert_avg_nll, true.shape[0], "pert_avg_nll")
    neg = -np.concatenate([true[:, None], pert], axis=1)  # log P~ for [true, pert_1..K]
    neg = neg - neg.max(axis=1, keepdims=True)
    w = np.exp(neg)
    return w[:, 0] / w.sum(axis=1)


# --------------------------------------------------------------------------------------------
# aggregates: forget quality, harmonic mean, model utility


def forget_quality(R_model: ArrayLike, R_retain: ArrayLike) -> float:
    """TOFU forget quality: p-value of the two-sided two-sample Kolmogorov-Smirnov test,
    ``scipy.stats.ks_2samp(R_model, R_retain).pvalue``, between the per-question truth ratios of
    the evaluated model and of the retain model on the forget split. scipy picks the exact
    method for small samples (e.g. 3 vs 3 fully separated: D = 1, p = 2 / C(6, 3) = 0.1).
    """
    a = _as_float_array(R_model, "R_model").ravel()
    b = _as_float_array(R_retain, "R_retain").ravel()
    if a.size == 0 or b.size == 0:
        raise MetricInputError("forget_quality needs non-empty truth-ratio samples")
    _check_finite(a, "R_model")
    _check_finite(b, "R_retain")
    return float(stats.ks_2samp(a, b, alternative="two-sided").pvalue)


def harmonic_mean(values: Sequence[float]) -> float:
    """``n / sum_i (1 / v_i)``; 0.0 if any value is 0. Raises MetricInputError (a ValueError) on
    an empty input, a negative value or NaN."""
    v = _as_float_array(values, "values").ravel()
    if v.size == 0:
        raise MetricInputError("harmonic_mean of no values")
    _check_finite(v, "values")
    if (v < 0).any():
        raise MetricInputError(f"harmonic_mean needs non-negative values, got {v.tolist()}")
    if (v == 0).any():
        return 0.0
    return float(v.size / np.sum(1.0 / v))


def model_utility(components: Mapping[str, float]) -> float:
    """TOFU model utility: harmonic mean of the 9 ``MU_COMPONENTS`` (Prob, ROUGE and truth ratio
    (true-better) on retain, real authors and world facts; Prob on real authors and world facts is
    option-normalised). Extra keys are ignored. Raises MetricInputError (a ValueError) naming any
    component that is missing or None.
    """
    missing = [k for k in MU_COMPONENTS if components.get(k) is None]
    if missing:
        raise MetricInputError(f"model_utility: missing components {', '.join(missing)}")
    return harmonic_mean([float(components[k]) for k in MU_COMPONENTS])


# --------------------------------------------------------------------------------------------
# memorisation: extraction strength and exact memorisation


def extraction_strength(pred_ids: ArrayLike, label_ids: ArrayLike, reference_quirk: bool = False) -> float:
    """Extraction strength of one answer (Carlini et al. style, as in open-unlearning).

    With teacher-forced argmax predictions ``pred`` and answer labels ``y`` (same length n),
    ``k = min{k in 0..n : pred[k:] == y[k:]}`` and ``ES = 1 - k/n``; the TOFU metrics take ``y`` as
    the answer tokens without the EOS prediction. Fully matched -> 1.0;
    a model whose last prediction is already wrong has k = n -> 0.0. Empty answer (n = 0) -> 0.0
    (open-unlearning also returns 0 there).

    ``reference_quirk=True`` reproduces open-unlearning's off-by-one: its loop searches k only in
    ``0..n-1`` and keeps k = n-1 when nothing matches, so ES is floored at ``1/n`` (equivalently
    ``k = min(k, n-1)``).
    """
    pred = _as_int_list(pred_ids, "pred_ids")
    label = _as_int_list(label_ids, "label_ids")
    if len(pred) != len(label):
        raise MetricInputError(f"pred_ids and label_ids differ in length: {len(pred)} vs {len(label)}")
    n = len(label)
    if n == 0:
        return 0.0
    k = n
    while k > 0 and pred[k - 1] == label[k - 1]:
        k -= 1
    if reference_quirk:
        k = min(k, n - 1)
    return 1.0 - k / n


def exact_memorization(pred_ids: ArrayLike, label_ids: ArrayLike) -> float:
    """Exact memorisation of one answer: ``(1/n) sum_t [pred_t == y_t]`` over the n answer tokens
    (without the EOS prediction, as the TOFU metrics score it). Empty answer -> 0.0 (open-unlearning returns None
    and drops it)."""
    pred = _as_int_list(pred_ids, "pred_ids")
    label = _as_int_list(label_ids, "label_ids")
    if len(pred) != len(label):
        raise MetricInputError(f"pred_ids and label_ids differ in length: {len(pred)} vs {len(label)}")
    if not label:
        return 0.0
    return sum(p == y for p, y in zip(pred, label)) / len(label)


def teacher_forced_es_em(
    aligned_logits: torch.Tensor,
    aligned_labels: torch.Tensor,
    reference_quirk: bool = False,
    eos_id: int | None = None,
) -> tuple[list[float], list[float]]:
    """Per-sequence (ES, EM) from next-token-aligned logits [B, T, V] and labels [B, T].

    ``pred = argmax_v logits[b, t, v]``; only positions with ``labels != -100`` (the answer tokens,
    in order) are compared; then `extraction_strength` and `exact_memorization` per row. With
    `eos_id`, a last compared label equal to it (the closing EOS) is left out, as the TOFU metrics score
    ES and EM on the answer tokens without the EOS prediction.
    Returns ``(es_values, em_values)``, each a list of B floats.
    """
    logits = torch.as_tensor(aligned_logits).detach()
    labels = torch.as_tensor(aligned_labels).detach()
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise MetricInputError(
            f"aligned_logits must be [B, T, V] and aligned_labels [B, T]; got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    preds = logits.argmax(dim=-1).cpu()
    labels = labels.cpu()
    es: list[float] = []
    em: list[float] = []
    for p_row, y_row in zip(preds, labels):
        keep = y_row != IGNORE_INDEX
        p, y = p_row[keep].tolist(), y_row[keep].tolist()
        if eos_id is not None and y and y[-1] == eos_id:
            p, y = p[:-1], y[:-1]
        es.append(extraction_strength(p, y, reference_quirk=reference_quirk))
        em.append(exact_memorization(p, y))
    return es, em


# --------------------------------------------------------------------------------------------
# membership inference: scores are loss-like (higher = less likely a member)


def mia_loss_scores(token_logps: ArrayLike, mask: ArrayLike) -> np.ndarray:
    """LOSS attack: per-sequence mean NLL over masked tokens, ``-(1/n) sum_{t in mask} logp_t``.
    A sequence with no masked token scores 0.0."""
    lp, m = _token_inputs(token_logps, mask)
    n = m.sum(axis=1)
    total = np.where(m, -lp, 0.0).sum(axis=1)
    return np.where(n > 0, total / np.maximum(n, 1), 0.0)


def mia_zlib_scores(token_logps: ArrayLike, mask: ArrayLike, texts: Sequence[str]) -> np.ndarray:
    """zlib attack (Carlini et al. 2021, as in open-unlearning): per sequence
    ``mean NLL / len(zlib.compress(text.encode("utf-8")))`` — the *mean* (not total) answer NLL,
    divided by the compressed byte length of the scored text (open-unlearning decodes the answer
    labels to get that text). ``texts[b]`` is the text of row b.
    """
    loss = mia_loss_scores(token_logps, mask)
    if len(texts) != loss.shape[0]:
        raise MetricInputError(f"texts has {len(texts)} entries for {loss.shape[0]} sequences")
    zlen = np.array([len(zlib.compress(str(t).encode("utf-8"))) for t in texts], dtype=np.float64)
    return loss / zlen


def _min_k_row(values: np.ndarray, k: float) -> float:
    if values.size == 0:
        return 0.0
    num_k = max(1, int(len(values) * k))  # open-unlearning: floor of n*k, at least 1
    return -float(np.mean(np.sort(values)[:num_k]))


def mia_min_k_scores(token_logps: ArrayLike, mask: ArrayLike, k: float = 0.4) -> np.ndarray:
    """Min-K% Prob (Shi et al. 2024): per sequence, the negated mean of the ``m`` lowest masked
    token log-probs with ``m = max(1, floor(n * k))`` (open-unlearning's rounding; n = masked
    tokens; the TOFU metrics mask the answer tokens without the EOS prediction). A sequence with no
    masked token scores 0.0 (as open-unlearning)."""
    _check_k(k)
    lp, m = _token_inputs(token_logps, mask)
    return np.array([_min_k_row(row[mrow], k) for row, mrow in zip(lp, m)], dtype=np.float64)


#: Floor on the variance of log p under the next-token distribution in Min-K%++ (open-unlearning's
#: ``torch.clamp(sigma, min=1e-6)`` in ``src/evals/metrics/mia/min_k_plus_plus.py``).
MIN_K_PLUS_PLUS_VAR_FLOOR = 1e-6


def min_k_plus_plus_z(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Min-K%++ standardised log-probs (Zhang et al. 2025), the one implementation.

    For next-token logits [N, V] and target ids [N], with p = softmax(logits):
    ``mu = sum_v p(v) log p(v)``, ``var = sum_v p(v) log p(v)^2 - mu^2``,
    ``z = (log p(y) - mu) / sqrt(max(var, 1e-6))`` (the 1e-6 floor is open-unlearning's).
    Entries with p = 0 (a -inf logit) add nothing instead of 0 * -inf = NaN. Returns float32 [N].
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    finite = p > 0
    plogp = torch.where(finite, p * logp, torch.zeros_like(p))
    plogp2 = torch.where(finite, plogp * logp, torch.zeros_like(p))
    mu = plogp.sum(-1)
    var = (plogp2.sum(-1) - mu * mu).clamp(min=MIN_K_PLUS_PLUS_VAR_FLOOR)
    target = logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return (target - mu) / var.sqrt()


def mia_min_k_plus_plus_scores(logits: ArrayLike, labels: ArrayLike, k: float = 0.4) -> np.ndarray:
    """Min-K%++ (Zhang et al. 2025): Min-K% on standardised token log-probs.

    For each scored position t (labels != -100; logits[:, t] predicts labels[:, t]) the
    standardised log-prob ``z_t`` of `min_k_plus_plus_z`; score = negated mean of the
    ``max(1, floor(n * k))`` lowest z_t. No scored token -> 0.0. The TOFU metrics score the answer tokens
    without the EOS prediction: pass labels with the closing EOS set to -100.
    """
    _check_k(k)
    lg = torch.as_tensor(logits).detach()
    lb = torch.as_tensor(labels).detach()
    if lg.dim() != 3 or lb.shape != lg.shape[:2]:
        raise MetricInputError(
            f"logits must be [B, T, V] and labels [B, T]; got {tuple(lg.shape)} and {tuple(lb.shape)}"
        )
    lb = lb.to(lg.device)
    out = []
    for b in range(lg.shape[0]):  # one row at a time bounds memory to T x V
        keep = lb[b] != IGNORE_INDEX
        if not bool(keep.any()):
            out.append(0.0)
            continue
        z = min_k_plus_plus_z(lg[b][keep], lb[b][keep]).cpu().double().numpy()
        out.append(_min_k_row(z, k))
    return np.array(out, dtype=np.float64)


def mia_reference_scores(nll: ArrayLike, ref_nll: ArrayLike) -> np.ndarray:
    """Reference-model attack: ``nll - ref_nll`` per example (the target's mean NLL calibrated by a
    reference model's mean NLL on the same text)."""
    a = _as_float_array(nll, "nll")
    b = _as_float_array(ref_nll, "ref_nll")
    if a.shape != b.shape:
        raise MetricInputError(f"nll and ref_nll differ in shape: {a.shape} vs {b.shape}")
    return a - b


def se_difference(a: ArrayLike, b: ArrayLike) -> float | None:
    """The standard error of mean(a) - mean(b) for two independent samples of per-row values:
    ``sqrt(var_a / n_a + var_b / n_b)`` (sample variances, ddof 1); None with fewer than 2 finite
    values on a side."""
    x = _as_float_array(a, "a").ravel()
    y = _as_float_array(b, "b").ravel()
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size < 2 or y.size < 2:
        return None
    return math.sqrt(float(x.var(ddof=1)) / x.size + float(y.var(ddof=1)) / y.size)


def standardized_difference(scores_forget: ArrayLike, scores_holdout: ArrayLike) -> tuple[float, float]:
    """The standardised mean difference of two samples of per-row scores and its sampling scale:
    ``d = (mean_h - mean_f) / s_pooled`` with ``s_pooled = sqrt((var_f + var_h) / 2)`` (sample
    variances, ddof 1) and ``se = sqrt(1/n_f + 1/n_h)`` (d's standard error when the two samples
    come from one distribution). With LOSS scores, d > 0 when the forget rows have lower loss
    (remembered), d < 0 when higher (forgotten beyond unseen data). Unlike an AUC, d uses the
    scores' magnitudes, so it varies less between equally good models (docs/FITNESS.md). Two
    constant samples: d = 0 when equal, +-inf otherwise."""
    f = _as_float_array(scores_forget, "scores_forget").ravel()
    h = _as_float_array(scores_holdout, "scores_holdout").ravel()
    if f.size < 2 or h.size < 2:
        raise MetricInputError("standardized_difference needs at least 2 forget and 2 holdout scores")
    _check_finite(f, "scores_forget")
    _check_finite(h, "scores_holdout")
    diff = float(h.mean() - f.mean())
    pooled = math.sqrt((float(f.var(ddof=1)) + float(h.var(ddof=1))) / 2.0)
    se = math.sqrt(1.0 / f.size + 1.0 / h.size)
    if pooled == 0.0:
        return (0.0 if diff == 0.0 else math.copysign(math.inf, diff)), se
    return diff / pooled, se


def mia_auc(scores_forget: ArrayLike, scores_holdout: ArrayLike) -> float:
    """MIA AUC with loss-like scores: ``P(s_holdout > s_forget) + 0.5 P(tie)``, the value of
    ``sklearn.metrics.roc_auc_score`` with holdout labelled 1 and forget labelled 0 (as
    open-unlearning; the test checks the two agree), computed as the Mann-Whitney U statistic of
    the holdout scores over n_holdout * n_forget, from scipy's tie-averaged ranks (importing
    sklearn.metrics for this one number cost ~1.1 s at every start of the workers' fork server).
    ~1 when forget examples have clearly lower loss (memorised), ~0.5 when indistinguishable."""
    f = _as_float_array(scores_forget, "scores_forget").ravel()
    h = _as_float_array(scores_holdout, "scores_holdout").ravel()
    if f.size == 0 or h.size == 0:
        raise MetricInputError("mia_auc needs non-empty forget and holdout scores")
    _check_finite(f, "scores_forget")
    _check_finite(h, "scores_holdout")
    ranks = stats.rankdata(np.concatenate([f, h]))  # ties get the average of their ranks
    u_holdout = float(ranks[f.size:].sum()) - h.size * (h.size + 1) / 2.0
    return u_holdout / (f.size * h.size)


def privleak(auc: float, auc_ref: float = 0.5) -> float:
    """MUSE PrivLeak: ``((1 - auc) - (1 - auc_ref)) / (1 - auc_ref) * 100``.

    auc_ref is the retain model's AUC (0.5 when absent). About -100 for a model that memorised
    the forget set (auc ~ 1), 0 for one indistinguishable from the retain model, large positive
    for over-unlearning. Raises MetricInputError when auc_ref >= 1 (the ratio is undefined;
    open-unlearning adds 1e-10 instead).
    """
    if not 0.0 <= auc <= 1.0 or not 0.0 <= auc_ref <= 1.0:
        raise MetricInputError(f"AUCs must lie in [0, 1], got auc={auc}, auc_ref={auc_ref}")
    if auc_ref >= 1.0:
        raise MetricInputError("privleak is undefined for auc_ref = 1")
    return ((1.0 - auc) - (1.0 - auc_ref)) / (1.0 - auc_ref) * 100.0


def grad_norm(grads: Sequence[torch.Tensor | None], p: float = 2.0) -> float:
    """GradNorm MIA score of one example (open-unlearning's `mia/gradnorm.py`: GradNormAttack): the
    mean over the model's parameter tensors of each gradient's p-norm (p in 1, 2, inf); tensors
    without a gradient are skipped. Loss-like: a larger norm = a less likely member."""
    if p not in (1, 2, float("inf")):
        raise MetricInputError(f"gradnorm p must be 1, 2 or inf, got {p}")
    norms = [g.detach().float().norm(p=p) for g in grads if g is not None]
    if not norms:
        raise MetricInputError("gradnorm: no parameter has a gradient")
    return float(torch.stack(norms).mean())
