"""IdkDPO: DPO with chosen = a refusal (`inputs.alt`, see idk_answers.py) and rejected = the forget answer.

`loss = gamma * -(2/beta) * mean_i logsigmoid(beta * ((logp(a_i) - logp_ref(a_i)) - (logp(y_i) - logp_ref(y_i))))
+ alpha * L_r`, logp = summed answer log-prob; beta = 0.1, gamma = alpha = 1. The 2/beta factor is
open-unlearning's `compute_dpo_loss` scaling. `L_r` as in GradDiff (`retain_loss: nll|kl`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .base import MethodInputs, register_method
from .grad_diff import need, retain_needs, retain_term
from .idk_answers import IDK_ANSWERS, pick_idk_answer

__all__ = ["IDK_ANSWERS", "dpo_loss", "idk_dpo", "pick_idk_answer"]


def dpo_loss(
    chosen: torch.Tensor, ref_chosen: torch.Tensor, rejected: torch.Tensor, ref_rejected: torch.Tensor, beta: float = 0.1
) -> torch.Tensor:
    """`-(2/beta) * mean logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))`."""
    margin = (chosen - ref_chosen.to(chosen)) - (rejected - ref_rejected.to(rejected))
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()


def preference_needs(params: Mapping[str, Any]) -> frozenset[str]:
    return retain_needs(params) | {"alt", "ref_seq_logp"}


def prefer_alt(inputs: MethodInputs, params: Mapping[str, Any], what: str) -> torch.Tensor:
    """`gamma * DPO(alt over the forget answer, against the frozen reference) + alpha * L_r`: what
    IdkDPO and AltPO share (they differ only in where the preferred `alt` answers come from;
    `what` names them in an error)."""
    f, a = inputs.forget, need(inputs.alt, f"alt ({what}) batch")
    forget = dpo_loss(
        a.seq_logp, need(a.ref_seq_logp, "alt ref_seq_logp"),
        f.seq_logp, need(f.ref_seq_logp, "forget ref_seq_logp"), float(params.get("beta", 0.1)),
    )
    return float(params.get("gamma", 1.0)) * forget + retain_term(inputs, params)


def _build_data(fmt: Any, forget_rows: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The chosen side: one refusal per forget question (seeded by `idk_seed`)."""
    seed = int(params.get("idk_seed", 0))
    return {"alt": [fmt.encode(r["question"], pick_idk_answer(i, seed)) for i, r in enumerate(forget_rows)]}


@register_method("idk_dpo", needs=preference_needs, build_data=_build_data)
def idk_dpo(inputs: MethodInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """IdkDPO: prefer a refusal over the forget answer (DPO against the frozen reference)."""
    return prefer_alt(inputs, params, "refusal")
