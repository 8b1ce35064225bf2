"""PMC's own metrics, from greedy ROUGE-L recall (stemming) vs the ground truth:

- unlearn quality `UQ = 2 - R_forget - R_paraphrased` (max 2; the PMC README reports it as
  `UQ x 50` percent), R_forget on the forget questions, R_paraphrased on the *paraphrased* forget
  questions (`paraphrased_question`) against the same ground-truth answers;
- utility `R_retain + R_world_facts + R_real_authors` (max 3; on the generated benchmark its two
  general-knowledge sets stand in for world facts and real authors).

R_forget, R_retain, R_world_facts and R_real_authors are the greedy ROUGE numbers TofuEvaluator
already stores (`results["metrics"]["forget_rouge"]` etc.); only R_paraphrased needs new
generations, on the same (possibly `max_examples`-cut) forget rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.prompting import PromptFormatter
from ..errors import DataError
from .metrics import rouge_l_recall
from .model_io import generate_answers

UTILITY_PARTS = ("retain_rouge", "world_facts_rouge", "real_authors_rouge")


def unlearn_quality(r_forget: float, r_paraphrased: float) -> float:
    """`2 - R_forget - R_paraphrased`."""
    return 2.0 - float(r_forget) - float(r_paraphrased)


def pmc_utility(r_retain: float, r_world_facts: float, r_real_authors: float) -> float:
    """`R_retain + R_world_facts + R_real_authors`."""
    return float(r_retain) + float(r_world_facts) + float(r_real_authors)


def paraphrased_forget_rouge(model, fmt: PromptFormatter, rows: Sequence[dict[str, Any]],
                             max_new_tokens: int = 200, batch_size: int = 64) -> dict[str, Any]:
    """Greedy answers to each row's `paraphrased_question`; ROUGE-L recall vs its `answer`."""
    missing = [i for i, r in enumerate(rows) if not r.get("paraphrased_question")]
    if missing:
        raise DataError(f"forget row {missing[0]} has no paraphrased_question (needed for PMC's unlearn quality)")
    gens = generate_answers(model, fmt, [r["paraphrased_question"] for r in rows], max_new_tokens, batch_size)
    vals = rouge_l_recall(gens, [r["answer"] for r in rows])  # type: ignore[arg-type]
    return {"agg": float(np.mean(vals)), "values": {str(i): float(v) for i, v in enumerate(vals)},
            "generations": list(gens)}


def pmc_metrics(metrics: dict[str, Any], paraphrased: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """UQ and utility from a TOFU results' `metrics` and the paraphrased-forget ROUGE entry."""
    try:
        r_f = metrics["forget_rouge"]["agg"]
        parts = {k: metrics[k]["agg"] for k in UTILITY_PARTS}
    except KeyError as exc:
        raise DataError(f"TOFU results lack {exc.args[0]} (needed for PMC's metrics)") from None
    r_p = paraphrased["agg"]
    return {
        "paraphrased_forget_rouge": paraphrased,
        "unlearn_quality": {"agg": unlearn_quality(r_f, r_p),
                            "components": {"forget_rouge": r_f, "paraphrased_forget_rouge": r_p}},
        "pmc_utility": {"agg": pmc_utility(parts["retain_rouge"], parts["world_facts_rouge"],
                                           parts["real_authors_rouge"]), "components": parts},
    }


def add_pmc_metrics(results: dict[str, Any], model, fmt: PromptFormatter, forget_rows: Sequence[dict[str, Any]],
                    max_new_tokens: int = 200, batch_size: int = 64) -> dict[str, Any]:
    """Add `paraphrased_forget_rouge`, `unlearn_quality`, `pmc_utility` to a TofuEvaluator result
    (in place: metrics and summary). `forget_rows` = the evaluator's forget rows (`evaluator.forget`)."""
    para = paraphrased_forget_rouge(model, fmt, forget_rows, max_new_tokens, batch_size)
    new = pmc_metrics(results["metrics"], para)
    results["metrics"].update(new)
    results.setdefault("summary", {}).update({k: v["agg"] for k, v in new.items()})
    return results
