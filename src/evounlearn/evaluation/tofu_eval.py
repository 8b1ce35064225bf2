"""The full TOFU evaluation of one model on one forget split: `TofuEvaluator` loops
over the metrics of the registry (`tofu_metrics`: each metric declares what it needs; the
`Evaluation` computes each input once, on first need).

Every metric keeps per-example values keyed by example index, so that forget quality and PrivLeak
can be recomputed later against a retain run's saved results. Token sets (answer tokens with or
without the EOS prediction) come from `model_io.ScoredAnswer`; docs/METRICS.md lists them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import tofu
from ..data.prompting import PromptFormatter
from ..files import atomic_write_json, read_json
from . import metrics as M
from .config import EvalConfig  # noqa: F401  (re-exported)
from .model_io import ScoredAnswer, generate_answers, score_answers
from .tofu_metrics import (  # noqa: F401 (re-exported)
    avg_nlls,
    check_privleak_attack,
    configured,
    entry,
    memorization_scores,
    mia_scores,
    values,
    with_eos,
)

log = logging.getLogger(__name__)


class TofuEvaluator:
    """Runs the configured TOFU metrics (`tofu_metrics`, a registry) on a model; `evaluate`
    returns a JSON-ready dict."""

    def __init__(self, source: str | Path, forget_split: str, cfg: EvalConfig | None = None,
                 forget_indices: list[int] | None = None, metrics: Sequence[str] | None = None):
        """`forget_indices` restricts the forget metrics to those rows of the split (values keep
        their indices in the split, so they line up with a retain run evaluated on all rows);
        `metrics`: the registered metrics to compute (None: all; with what they need; the
        config's `lean` / `mia` still apply)."""
        self.source = str(source)
        self.forget_split = tofu.check_forget_split(forget_split)
        self.cfg = cfg or EvalConfig()
        self.metrics = configured(metrics, self.cfg)  # an unknown name fails here, before any model
        check_privleak_attack(self.cfg.privleak_attack)
        if self.cfg.gradnorm_p not in (1, 2, float("inf")):
            from ..errors import ConfigError

            raise ConfigError(f"eval.gradnorm_p must be 1, 2 or inf, got {self.cfg.gradnorm_p}")
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

    def evaluate(self, model, tokenizer, retain_results: dict | None = None, reference_model=None,
                 fmt: PromptFormatter | None = None) -> dict[str, Any]:
        t0 = time.time()
        ev = Evaluation(self, model, fmt or PromptFormatter(tokenizer), retain_results, reference_model)
        for spec in self.metrics:  # registration order: a metric's needs come before it
            ev.out.update(spec.fn(ev))
        return {
            "forget_split": self.forget_split,
            "forget_indices": self.forget_index if self.forget_subset else None,
            "data": self.source,
            "eval_seconds": time.time() - t0,
            "metrics": ev.out,
            "summary": summarize(ev.out),
        }


class Evaluation:
    """One model's evaluation: the `tofu_metrics.MetricContext` the metrics read. Each input
    (`tofu_metrics.INPUTS`) is computed once, on first need."""

    def __init__(self, ev: TofuEvaluator, model: Any, fmt: PromptFormatter, retain_results: dict | None,
                 reference_model: Any) -> None:
        self.ev, self.model, self.fmt, self.cfg = ev, model, fmt, ev.cfg
        self.retain_results, self.reference_model = retain_results, reference_model
        self.forget, self.forget_index, self.holdout = ev.forget, ev.forget_index, ev.holdout
        self.out: dict[str, Any] = {}
        self._inputs: dict[str, Any] = {}

    def need(self, name: str) -> Any:
        if name not in self._inputs:
            self._inputs[name] = getattr(self, f"_input_{name}")()
        return self._inputs[name]

    # -- inputs -----------------------------------------------------------------------------------
    @property
    def _min_k_pp(self) -> bool:
        """Whether the scoring computes the Min-K%++ statistics (a softmax moment per token)."""
        return self.cfg.mia and not self.cfg.lean

    def _new_tokens(self, answers: list[str]) -> int:
        """max_new_tokens, or with `answer_margin` the longest answer (+ EOS) plus the margin."""
        cfg = self.cfg
        if cfg.answer_margin is None or not answers:
            return cfg.max_new_tokens
        longest = max(len(self.fmt.answer_ids(a)) for a in answers)
        return max(1, min(cfg.max_new_tokens, longest + int(cfg.answer_margin)))

    def _scored(self, rows: list[dict[str, Any]]) -> list[ScoredAnswer]:
        return score_answers(self.model, self.fmt, [r["question"] for r in rows], [r["answer"] for r in rows],
                             self.cfg.batch_size, with_distribution_stats=self._min_k_pp)

    def _generated(self, rows: list[dict[str, Any]]) -> list[str]:
        return generate_answers(self.model, self.fmt, [r["question"] for r in rows],
                                self._new_tokens([r["answer"] for r in rows]), self.cfg.batch_size)

    def _input_forget_scored(self) -> list[ScoredAnswer]:
        return self._scored(self.forget)

    def _input_forget_generations(self) -> list[str]:
        return self._generated(self.forget)

    def _input_forget_truth_ratios(self) -> np.ndarray:
        return self._truth_ratio(self.forget, "paraphrased_answer")[0]

    def _input_holdout_scored(self) -> list[ScoredAnswer]:
        return self._scored(self.holdout)

    def _input_holdout_generations(self) -> list[str]:
        return self._generated(self.holdout)

    def _gradnorm(self, rows: list[dict[str, Any]]) -> np.ndarray:
        from .model_io import gradnorm_scores

        return gradnorm_scores(self.model, self.fmt, [r["question"] for r in rows], [r["answer"] for r in rows],
                               float(self.cfg.gradnorm_p))

    def _input_forget_gradnorm(self) -> np.ndarray:
        return self._gradnorm(self.forget)

    def _input_holdout_gradnorm(self) -> np.ndarray:
        return self._gradnorm(self.holdout)

    def _input_retain_truth_ratios(self) -> np.ndarray | None:
        """The retain oracle's forget truth ratios on the evaluated rows (None without its results)."""
        if self.retain_results is None:
            return None
        ref_vals = self.retain_results["metrics"]["forget_truth_ratio"]["values"]
        missing = [k for k in self.forget_index if str(k) not in ref_vals]
        if missing:
            from ..errors import DataError

            raise DataError(f"the retain results lack forget truth ratios for rows {missing[:5]} "
                            f"(were they computed on the same forget split?)")
        return np.array([ref_vals[str(k)] for k in self.forget_index], dtype=float)

    def _truth_ratio(self, rows, true_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns (R, true_avg_nll, pert_avg_nll[N,K]) for rows with `true_key` and perturbed answers."""
        model, fmt, bs = self.model, self.fmt, self.cfg.batch_size
        qs = [r["question"] for r in rows]
        true = avg_nlls(score_answers(model, fmt, qs, [r[true_key] for r in rows], bs))
        k = min(len(r["perturbed_answer"]) for r in rows)
        flat_q = [r["question"] for r in rows for _ in range(k)]
        flat_a = [r["perturbed_answer"][j] for r in rows for j in range(k)]
        pert = avg_nlls(score_answers(model, fmt, flat_q, flat_a, bs)).reshape(len(rows), k)
        return M.truth_ratio(true, pert), true, pert

    # -- what some metrics compute for themselves ------------------------------------------------
    def split_scores(self, name: str) -> dict[str, Any]:
        """Prob, ROUGE and truth ratio of one model-utility split (retain: Prob normalised by
        length, against the paraphrased answer; real authors and world facts: Prob normalised over
        the options, against the answer)."""
        rows = {"retain": self.ev.retain, "real_authors": self.ev.real_authors, "world_facts": self.ev.world_facts}[name]
        true_key = "paraphrased_answer" if name == "retain" else "answer"
        qs, ans = [r["question"] for r in rows], [r["answer"] for r in rows]
        r_vals, true_nll, pert_nll = self._truth_ratio(rows, true_key)
        if name == "retain":
            prob = M.length_normalized_prob(avg_nlls(score_answers(self.model, self.fmt, qs, ans, self.cfg.batch_size)))
        else:  # normalised over the options (true answer + perturbed ones)
            prob = M.option_normalized_prob(true_nll, pert_nll)
        gen = self._generated(rows)
        rg = M.rouge_l_recall(gen, ans)
        tr = M.truth_ratio_true_better_values(r_vals)
        return {f"{name}_prob": entry(float(np.mean(prob)), prob),
                f"{name}_rouge": entry(float(np.mean(rg)), rg, generations=gen),
                f"{name}_truth_ratio": entry(float(np.mean(tr)), tr, raw_ratio=values(r_vals))}

    def reference_scores(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.reference_model is None:
            return None
        bs = self.cfg.batch_size
        return tuple(avg_nlls(score_answers(self.reference_model, self.fmt, [r["question"] for r in rows],
                                            [r["answer"] for r in rows], bs))
                     for rows in (self.forget, self.holdout))  # type: ignore[return-value]


def summarize(metrics: dict[str, Any]) -> dict[str, float | None]:
    """Every entry's aggregate, by key (in the metrics' order)."""
    return {k: v["agg"] for k, v in metrics.items() if isinstance(v, dict) and "agg" in v}


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
