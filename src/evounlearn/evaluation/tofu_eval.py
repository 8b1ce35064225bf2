"""The full TOFU evaluation (SPEC 4.1) of one model on one forget split.

Every metric keeps per-example values keyed by example index, so that forget quality and PrivLeak
can be recomputed later against a retain run's saved results. Token sets (answer tokens with or
without the EOS prediction) come from `model_io.ScoredAnswer`; docs/METRICS.md lists them.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..data import tofu
from ..data.prompting import PromptFormatter
from ..files import atomic_write_json, read_json
from . import metrics as M
from .config import EvalConfig  # noqa: F401  (re-exported)
from .model_io import ScoredAnswer, generate_answers, score_answers

log = logging.getLogger(__name__)

SUMMARY_KEYS = (
    "forget_quality", "model_utility", "forget_rouge", "forget_prob", "forget_truth_ratio",
    "privleak", "extraction_strength", "exact_memorization",
)


def _values(arr, keys: list[int] | None = None) -> dict[str, float]:
    keys = list(range(len(arr))) if keys is None else keys
    return {str(k): (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v))
            for k, v in zip(keys, arr)}


def _entry(agg: float | None, values=None, keys: list[int] | None = None, **extra) -> dict[str, Any]:
    e: dict[str, Any] = {"agg": None if agg is None else float(agg)}
    if values is not None:
        e["values"] = _values(values, keys)
    e.update(extra)
    return e


def _avg_nlls(scored: list[ScoredAnswer]) -> np.ndarray:
    return np.array([s.avg_nll for s in scored], dtype=np.float64)


class TofuEvaluator:
    """Runs every TOFU metric on a model; `evaluate` returns a JSON-ready dict."""

    def __init__(self, source: str | Path, forget_split: str, cfg: EvalConfig | None = None,
                 forget_indices: list[int] | None = None):
        """`forget_indices` restricts the forget metrics to those rows of the split (values keep
        their indices in the split, so they line up with a retain run evaluated on all rows)."""
        self.source = str(source)
        self.forget_split = tofu.check_forget_split(forget_split)
        self.cfg = cfg or EvalConfig()
        cut = self.cfg.max_examples
        def load(name):
            rows = tofu.load_split(name, self.source)
            return rows[:cut] if cut else rows
        forget = load(f"{forget_split}_perturbed")
        self.forget_subset = forget_indices is not None
        self.forget_index = list(range(len(forget))) if forget_indices is None else list(forget_indices)
        self.forget = [forget[i] for i in self.forget_index]
        self.retain = load("retain_perturbed")
        self.real_authors = load("real_authors_perturbed")
        self.world_facts = load("world_facts_perturbed")
        self.holdout = load(tofu.FORGET_TO_HOLDOUT[forget_split])

    # -- pieces ---------------------------------------------------------------------------------
    @property
    def _min_k_pp(self) -> bool:
        """Whether the scoring computes the Min-K%++ statistics (a softmax moment per token)."""
        return self.cfg.mia and not self.cfg.lean

    def _new_tokens(self, fmt: PromptFormatter, answers: list[str]) -> int:
        """max_new_tokens, or with `answer_margin` the longest answer (+ EOS) plus the margin."""
        cfg = self.cfg
        if cfg.answer_margin is None or not answers:
            return cfg.max_new_tokens
        longest = max(len(fmt.answer_ids(a)) for a in answers)
        return max(1, min(cfg.max_new_tokens, longest + int(cfg.answer_margin)))

    def _truth_ratio(self, model, fmt, rows, true_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns (R, true_avg_nll, pert_avg_nll[N,K]) for rows with `true_key` and perturbed answers."""
        qs = [r["question"] for r in rows]
        true = _avg_nlls(score_answers(model, fmt, qs, [r[true_key] for r in rows], self.cfg.batch_size))
        k = min(len(r["perturbed_answer"]) for r in rows)
        flat_q = [r["question"] for r in rows for _ in range(k)]
        flat_a = [r["perturbed_answer"][j] for r in rows for j in range(k)]
        pert = _avg_nlls(score_answers(model, fmt, flat_q, flat_a, self.cfg.batch_size)).reshape(len(rows), k)
        return M.truth_ratio(true, pert), true, pert

    def evaluate(self, model, tokenizer, retain_results: dict | None = None, reference_model=None,
                 fmt: PromptFormatter | None = None) -> dict[str, Any]:
        cfg = self.cfg
        fmt = fmt or PromptFormatter(tokenizer)
        t0 = time.time()
        out: dict[str, Any] = {}

        # Forget split: Prob, ROUGE, truth ratio, ES, EM (+ token stats for the MIAs).
        fq = [r["question"] for r in self.forget]
        fa = [r["answer"] for r in self.forget]
        f_scored = score_answers(model, fmt, fq, fa, cfg.batch_size, with_distribution_stats=self._min_k_pp)
        f_gen = generate_answers(model, fmt, fq, self._new_tokens(fmt, fa), cfg.batch_size)
        keys = self.forget_index
        out["forget_prob"] = _entry(None, M.length_normalized_prob(_avg_nlls(f_scored)), keys)
        out["forget_prob"]["agg"] = float(np.mean(list(out["forget_prob"]["values"].values())))
        rouge = M.rouge_l_recall(f_gen, fa)
        out["forget_rouge"] = _entry(float(np.mean(rouge)), rouge, keys, generations=f_gen)
        r_forget, _, _ = self._truth_ratio(model, fmt, self.forget, "paraphrased_answer")
        out["forget_truth_ratio"] = _entry(M.truth_ratio_forget(r_forget), r_forget, keys)
        if not cfg.lean:
            es, em = memorization_scores(f_scored, cfg.es_reference_quirk)
            out["extraction_strength"] = _entry(float(np.mean(es)), es, keys)
            out["exact_memorization"] = _entry(float(np.mean(em)), em, keys)

        # Model utility: Prob, ROUGE, truth ratio on retain, real authors, world facts.
        comps: dict[str, float] = {}
        for name, rows, true_key in (
            ("retain", self.retain, "paraphrased_answer"),
            ("real_authors", self.real_authors, "answer"),
            ("world_facts", self.world_facts, "answer"),
        ):
            qs = [r["question"] for r in rows]
            ans = [r["answer"] for r in rows]
            r_vals, true_nll, pert_nll = self._truth_ratio(model, fmt, rows, true_key)
            if name == "retain":
                prob = M.length_normalized_prob(_avg_nlls(score_answers(model, fmt, qs, ans, cfg.batch_size)))
            else:  # normalised over the options (true answer + perturbed ones)
                prob = M.option_normalized_prob(true_nll, pert_nll)
            gen = generate_answers(model, fmt, qs, self._new_tokens(fmt, ans), cfg.batch_size)
            rg = M.rouge_l_recall(gen, ans)
            tr = M.truth_ratio_true_better_values(r_vals)
            out[f"{name}_prob"] = _entry(float(np.mean(prob)), prob)
            out[f"{name}_rouge"] = _entry(float(np.mean(rg)), rg, generations=gen)
            out[f"{name}_truth_ratio"] = _entry(float(np.mean(tr)), tr, raw_ratio=_values(r_vals))
            for key in ("prob", "rouge", "truth_ratio"):
                comps[f"{name}_{key}"] = out[f"{name}_{key}"]["agg"]
        out["model_utility"] = _entry(M.model_utility(comps), None, components=comps)

        # Holdout (never-trained rows of the same kind): Prob and ROUGE, the reference of the
        # `calibrated` fitness, and the non-members of the membership-inference attacks.
        h_scored = self._holdout(model, fmt, out)
        for key in ("rouge", "prob"):  # the sampling scale of each forget-vs-holdout gap (docs/FITNESS.md)
            f_vals, h_vals = (list(out[f"{side}_{key}"]["values"].values()) for side in ("forget", "holdout"))
            out[f"forget_{key}_gap_se"] = _entry(M.se_difference(f_vals, h_vals))
        if cfg.mia:
            out.update(self._mia(model, fmt, f_scored, h_scored, reference_model, retain_results))

        # Forget quality against the retain model's truth ratios on the same forget split.
        fqual = None
        if retain_results is not None:
            ref_vals = retain_results["metrics"]["forget_truth_ratio"]["values"]
            missing = [k for k in keys if str(k) not in ref_vals]
            if missing:
                from ..errors import DataError

                raise DataError(f"the retain results lack forget truth ratios for rows {missing[:5]} "
                                f"(were they computed on the same forget split?)")
            ref = np.array([ref_vals[str(k)] for k in keys], dtype=float)
            fqual = M.forget_quality(r_forget, ref)
        out["forget_quality"] = _entry(fqual)
        seconds = time.time() - t0
        return {
            "forget_split": self.forget_split,
            "forget_indices": self.forget_index if self.forget_subset else None,
            "data": self.source,
            "eval_seconds": seconds,
            "metrics": out,
            "summary": summarize(out),
        }

    def _holdout(self, model, fmt, out: dict[str, Any]) -> list[ScoredAnswer]:
        """holdout_prob and holdout_rouge (into `out`), as forget_prob / forget_rouge, on every
        holdout row whatever the forget part (docs/FITNESS.md); returns the scored rows for the MIAs.
        Costs one scoring pass and one greedy decoding of the holdout questions."""
        cfg = self.cfg
        hq = [r["question"] for r in self.holdout]
        ha = [r["answer"] for r in self.holdout]
        h_scored = score_answers(model, fmt, hq, ha, cfg.batch_size, with_distribution_stats=self._min_k_pp)
        prob = M.length_normalized_prob(_avg_nlls(h_scored))
        out["holdout_prob"] = _entry(float(np.mean(prob)), prob)
        gen = generate_answers(model, fmt, hq, self._new_tokens(fmt, ha), cfg.batch_size)
        rouge = M.rouge_l_recall(gen, ha)
        out["holdout_rouge"] = _entry(float(np.mean(rouge)), rouge, generations=gen)
        return h_scored

    def _mia(self, model, fmt, f_scored, h_scored, reference_model, retain_results) -> dict[str, Any]:
        cfg = self.cfg
        hq = [r["question"] for r in self.holdout]
        ha = [r["answer"] for r in self.holdout]
        res: dict[str, Any] = {}

        def pack(name, sf, sh):
            auc = M.mia_auc(sf, sh)
            res[name] = {"agg": float(auc), "values": {"forget": _values(sf, self.forget_index), "holdout": _values(sh)}}
            if name == "mia_loss" and len(sf) > 1 and len(sh) > 1:
                # the `calibrated` fitness's membership term: the LOSS scores' standardised
                # difference, steadier than the AUC (docs/FITNESS.md)
                d, se = M.standardized_difference(sf, sh)
                d = max(-1e6, min(1e6, d))  # two constant samples give +-inf: JSON has no inf
                res["mia_loss_smd"] = {"agg": float(d)}
                res["mia_loss_smd_se"] = {"agg": float(se)}

        fa = [r["answer"] for r in self.forget]
        if cfg.lean:  # the LOSS attack only (what the calibrated fitness reads)
            pack("mia_loss", M.mia_loss_scores(*_with_eos(f_scored)), M.mia_loss_scores(*_with_eos(h_scored)))
            return res
        f_mia, h_mia = mia_scores(f_scored, fa, cfg.min_k), mia_scores(h_scored, ha, cfg.min_k)
        for name in f_mia:
            pack(name, f_mia[name], h_mia[name])
        if reference_model is not None:
            fq = [r["question"] for r in self.forget]
            rf = _avg_nlls(score_answers(reference_model, fmt, fq, fa, cfg.batch_size))
            rh = _avg_nlls(score_answers(reference_model, fmt, hq, ha, cfg.batch_size))
            pack("mia_reference", M.mia_reference_scores(_avg_nlls(f_scored), rf),
                 M.mia_reference_scores(_avg_nlls(h_scored), rh))
        auc_ref = 0.5
        if retain_results is not None and "mia_min_k" in retain_results.get("metrics", {}):
            auc_ref = retain_results["metrics"]["mia_min_k"]["agg"]
        res["privleak"] = {"agg": M.privleak(res["mia_min_k"]["agg"], auc_ref), "auc_ref": auc_ref}
        return res


def memorization_scores(scored: list[ScoredAnswer], es_reference_quirk: bool = False) -> tuple[list[float], list[float]]:
    """Per-example (extraction strength, exact memorisation) on the answer tokens without the EOS
    prediction (SPEC 4.1), from the teacher-forced argmax hits."""
    answers = [s.answer for s in scored]
    es = [M.extraction_strength(a.predictions, a.labels, reference_quirk=es_reference_quirk) for a in answers]
    em = [M.exact_memorization(a.predictions, a.labels) for a in answers]
    return es, em


def _padded(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged per-example arrays as a zero-padded [B, T] matrix and its mask."""
    width = max((len(r) for r in rows), default=0)
    values = np.zeros((len(rows), max(width, 1)))
    mask = np.zeros(values.shape, dtype=bool)
    for i, r in enumerate(rows):
        values[i, : len(r)] = r
        mask[i, : len(r)] = True
    return values, mask


def _with_eos(scored: list[ScoredAnswer]) -> tuple[np.ndarray, np.ndarray]:
    """The log-probs of the answer tokens and the EOS prediction, padded, with their mask."""
    return _padded([s.with_eos.logps for s in scored])


def mia_scores(scored: list[ScoredAnswer], texts: list[str], k: float) -> dict[str, np.ndarray]:
    """Per-example loss-like MIA scores of one split, each on its SPEC 4.1 token set: LOSS and zlib
    with the EOS prediction, Min-K% and Min-K%++ without it."""
    with_eos = _with_eos(scored)
    answer = _padded([s.answer.logps for s in scored])
    z = _padded([s.answer.z for s in scored])
    return {
        "mia_loss": M.mia_loss_scores(*with_eos),
        "mia_zlib": M.mia_zlib_scores(*with_eos, texts),
        "mia_min_k": M.mia_min_k_scores(*answer, k),
        "mia_min_k_plus_plus": M.mia_min_k_scores(*z, k),
    }


def summarize(metrics: dict[str, Any]) -> dict[str, float | None]:
    summary = {k: metrics[k]["agg"] for k in SUMMARY_KEYS if k in metrics}
    for k, v in metrics.items():
        if k not in summary and isinstance(v, dict) and "agg" in v:
            summary[k] = v["agg"]
    return summary


def save_results(results: dict[str, Any], path: str | Path) -> None:
    atomic_write_json(path, results, indent=1)


def load_results(path: str | Path) -> dict[str, Any]:
    from ..errors import DataError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"results file {p} does not exist")
    data = read_json(p, "results file")  # a corrupt file raises ArtifactError naming it
    if "metrics" not in data:
        raise DataError(f"{p} is not an evounlearn results file (no 'metrics')")
    return data
