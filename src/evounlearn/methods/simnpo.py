"""SimNPO: `loss = gamma * -(2/beta) * mean_i logsigmoid(beta * (NLL_sum(y_i|x_i)/|y_i| - delta)) + alpha * L_r`.

Defaults beta = 4.5, gamma = 0.125, delta = 0, alpha = 1. Sign check (as open-unlearning's
SimNPO: `-logsigmoid(beta * (nll_sum/len - delta)) * 2/beta`): d/dx[-logsigmoid(beta x)] < 0, so
minimising the loss *raises* the length-normalised forget NLL. `L_r` as in GradDiff.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .base import MethodInputs, register_method
from .grad_diff import retain_needs, retain_term


def simnpo_loss(seq_logp: torch.Tensor, lengths: torch.Tensor, beta: float = 4.5, delta: float = 0.0) -> torch.Tensor:
    """`-(2/beta) * mean logsigmoid(beta * (-seq_logp/lengths - delta))` (forget part, unweighted)."""
    mean_nll = -seq_logp / lengths.clamp(min=1).to(seq_logp)
    return -(2.0 / beta) * F.logsigmoid(beta * (mean_nll - delta)).mean()


@register_method("simnpo", needs=retain_needs)
def simnpo(inputs: MethodInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """SimNPO: reference-free, length-normalised NPO."""
    f = inputs.forget
    forget = simnpo_loss(f.seq_logp, f.lengths, float(params.get("beta", 4.5)), float(params.get("delta", 0.0)))
    return float(params.get("gamma", 0.125)) * forget + retain_term(inputs, params)
