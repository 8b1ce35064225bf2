"""WGA (weighted gradient ascent): `loss = gamma * -mean_t[p_t^beta * CE_t] + alpha * L_r`.

Over the forget answer tokens t: `CE_t = -log p(y_t)`, `p_t = exp(-CE_t)`; the weight `p_t^beta` is
detached (no gradient flows through it), so the gradient is gradient ascent scaled per token by the
model's own confidence: tokens it already finds unlikely stop pushing. The mean runs over every
answer token of the batch (open-unlearning's `compute_wga_loss`: `-(w * lm_loss)[labels != -100].mean()`).
Defaults beta = gamma = alpha = 1 (open-unlearning's WGA.yaml); `L_r` as in GradDiff (`retain_loss: nll|kl`).
open-unlearning trains 7B models with lr 1e-5 for 5 epochs; here the one tiny-benchmark budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .base import MethodInputs, register_method
from .grad_diff import retain_needs, retain_term


def confidence_weights(token_logps: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """`p_t^beta = exp(beta * log p_t)`, detached. [B, T]"""
    return (beta * token_logps.detach().float()).exp()


def wga_loss(token_logps: torch.Tensor, mask: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """`-mean over mask of p_t^beta * CE_t` (CE_t = -token_logps), weights detached."""
    ce = -token_logps.float()
    m = mask.to(ce)
    return -(confidence_weights(token_logps, beta) * ce * m).sum() / m.sum().clamp(min=1)


@register_method("wga", needs=retain_needs)
def wga(inputs: MethodInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """WGA: gradient ascent weighted per token by the detached p^beta."""
    f = inputs.forget
    forget = wga_loss(f.token_logps, f.mask, float(params.get("beta", 1.0)))
    return float(params.get("gamma", 1.0)) * forget + retain_term(inputs, params)
