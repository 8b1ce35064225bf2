"""GradDiff: `loss = -gamma * NLL_f + alpha * L_r` (gamma = alpha = 1).

`L_r` (`retain_loss`): `nll` = token-mean NLL of the retain answers, or `kl` = KL(ref || model)
averaged over retain answer tokens: `mean_t sum_v p_ref(v) (log p_ref(v) - log q(v))`.
open-unlearning's KL averages over *all* positions (prompt and padding included); ours over answers.
This module also holds the retain term shared by NPO, SimNPO, IdkDPO and UnDIAL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import MethodInputs, register_method

T = TypeVar("T")


def need(value: T | None, what: str) -> T:
    """`value`, or a ValueError naming the missing input (a loop/needs mismatch)."""
    if value is None:
        raise ValueError(f"missing method input: {what}")
    return value


def kl_ref_model(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(ref || model) per position, averaged over positions where `mask` is true."""
    logq = F.log_softmax(logits.float(), dim=-1)
    logp = F.log_softmax(ref_logits.float(), dim=-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def retain_needs(params: Mapping[str, Any]) -> frozenset[str]:
    """What the retain term needs: nothing when alpha == 0, + ref logits for `retain_loss: kl`."""
    if float(params.get("alpha", 1.0)) == 0.0:
        return frozenset()
    return frozenset({"retain", "ref_logits_retain"} if params.get("retain_loss", "nll") == "kl" else {"retain"})


def retain_term(inputs: MethodInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """`alpha * L_r` (0 when alpha == 0)."""
    alpha = float(params.get("alpha", 1.0))
    if alpha == 0.0:
        return torch.zeros((), device=inputs.forget.logits.device)
    side = need(inputs.retain, "retain batch")
    kind = params.get("retain_loss", "nll")
    if kind == "nll":
        return alpha * side.nll
    if kind == "kl":
        return alpha * kl_ref_model(side.logits, need(side.ref_logits, "retain ref_logits"), side.mask)
    raise ConfigError(f"unknown retain_loss {kind!r} (choose nll or kl)")


def grad_diff_loss(nll_f: torch.Tensor, retain: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """`-gamma * NLL_f + retain` (retain already weighted by alpha)."""
    return -gamma * nll_f + retain


@register_method("grad_diff", needs=retain_needs)
def grad_diff(inputs: MethodInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """GradDiff: gradient ascent on forget, descent (NLL or KL) on retain."""
    return grad_diff_loss(inputs.forget.nll, retain_term(inputs, params), float(params.get("gamma", 1.0)))
