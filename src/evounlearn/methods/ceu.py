"""CE-U (cross-entropy unlearning, arXiv 2503.01224): at each scored forget position t with next
token y_t and the model's own logits z_t, the target is `softmax(z_t with z_t[y_t] = -inf)`,
computed from the *detached* logits; `loss = mean_t sum_v -target_t(v) log softmax(z_t)(v)`.

The target is the model's current distribution with the true token removed and the rest
renormalised: minimising moves mass off y_t and nowhere in particular. The first
`ignore_first_n_answer_tokens` (default 1, the paper's footnote) answer tokens of each row are left
out. No retain term by default (open-unlearning's CEU: forget loss only); `alpha > 0` adds the
GradDiff retain term `alpha * L_r`. Positions: answer tokens (open-unlearning's `labels != -100`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import MethodInputs, register_method
from .grad_diff import retain_needs, retain_term


def skip_first_answer_tokens(mask: torch.Tensor, n: int) -> torch.Tensor:
    """`mask` without the first `n` set positions of each row."""
    if n < 0:
        raise ConfigError(f"ceu: ignore_first_n_answer_tokens must be >= 0, got {n}")
    m = mask.bool()
    return m & (m.long().cumsum(-1) > n)


@torch.no_grad()
def true_token_masked_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`softmax(z)` with `z[y] = -inf` per position, from detached logits; ignored labels (< 0)
    are treated as id 0 (their rows are masked out of the loss)."""
    z = logits.detach().float().clone()
    z.scatter_(-1, targets.clamp(min=0).unsqueeze(-1), float("-inf"))
    return z.softmax(-1)


def ceu_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over `mask` positions of the cross-entropy to the true-token-masked detached softmax."""
    target = true_token_masked_targets(logits, labels)
    ce = -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    m = mask.to(ce)
    return (ce * m).sum() / m.sum().clamp(min=1)


def _retain_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {"alpha": 0.0, **params}


@register_method("ceu", needs=lambda params: retain_needs(_retain_params(params)))
def ceu(inputs: MethodInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """CE-U: cross-entropy to the model's own detached distribution with the true token removed."""
    f = inputs.forget
    mask = skip_first_answer_tokens(f.mask, int(params.get("ignore_first_n_answer_tokens", 1)))
    forget = ceu_loss(f.logits, f.labels, mask)
    return float(params.get("gamma", 1.0)) * forget + retain_term(inputs, _retain_params(params))
