"""NPO: `loss = gamma * (2/beta) * mean_i softplus(beta * (logp(y_i|x_i) - logp_ref(y_i|x_i))) + alpha * L_r`.

logp = summed answer log-prob; beta = 0.1, gamma = alpha = 1 (open-unlearning's
`compute_dpo_loss` with no winner: `-(2/beta) logsigmoid(-beta * log_ratio)` is the same value).
`L_r` as in GradDiff (`retain_loss: nll|kl`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .base import MethodInputs, register_method
from .grad_diff import need, retain_needs, retain_term


def npo_loss(seq_logp: torch.Tensor, ref_seq_logp: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """`(2/beta) * mean softplus(beta * (seq_logp - ref_seq_logp))`."""
    return (2.0 / beta) * F.softplus(beta * (seq_logp - ref_seq_logp.to(seq_logp))).mean()


def _needs(params: Mapping[str, Any]) -> frozenset[str]:
    return retain_needs(params) | {"ref_seq_logp"}


@register_method("npo", needs=_needs)
def npo(inputs: MethodInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """NPO: negative preference optimisation against the frozen reference."""
    f = inputs.forget
    forget = npo_loss(f.seq_logp, need(f.ref_seq_logp, "forget ref_seq_logp"), float(params.get("beta", 0.1)))
    return float(params.get("gamma", 1.0)) * forget + retain_term(inputs, params)
