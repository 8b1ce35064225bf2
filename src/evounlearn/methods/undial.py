"""UnDIAL: self-distillation towards the frozen teacher with the true token's logit lowered.

At each scored position t with next token y_t and teacher logits z_t (`ref_logits`):
`p~_t = softmax(z_t - strength * onehot(y_t))` (fixed, no grad), q_t = softmax(student logits),
`loss = forget_weight * mean_t sum_v -p~_t(v) log q_t(v) + alpha * L_r` (`L_r` as in GradDiff).
Names: our `strength` = the paper's gamma = open-unlearning's `beta` (default 10); our
`forget_weight` = open-unlearning's `gamma`; `alpha` (default 0: no retain term, as in the paper).
Positions: answer tokens only by default. `all_positions: true` reproduces the references' averaging
over every aligned position (prompt and padding included) with y_t = `target_ids`. Quirk not copied:
open-unlearning indexes -100 labels into the vocabulary (id V-100) at prompt/padding positions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .base import MethodInputs, register_method
from .grad_diff import need, retain_needs, retain_term


@torch.no_grad()
def undial_targets(ref_logits: torch.Tensor, targets: torch.Tensor, strength: float = 10.0) -> torch.Tensor:
    """`softmax(z - strength * onehot(y))` per position; ignored labels (< 0) are treated as id 0."""
    z = ref_logits.detach().float().clone()
    z.scatter_add_(-1, targets.clamp(min=0).unsqueeze(-1), torch.full_like(z[..., :1], -strength))
    return z.softmax(-1)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over positions where `mask` is set of `sum_v -p(v) log q(v)`."""
    ce = -(target_probs * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    m = mask.to(ce)
    return (ce * m).sum() / m.sum().clamp(min=1)


def undial_loss(logits: torch.Tensor, ref_logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                strength: float = 10.0) -> torch.Tensor:
    """Soft cross-entropy of the student against the adjusted teacher, over `mask` positions."""
    return soft_cross_entropy(logits, undial_targets(ref_logits, targets, strength), mask)


def _retain_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {"alpha": 0.0, **params}


def _needs(params: Mapping[str, Any]) -> frozenset[str]:
    return retain_needs(_retain_params(params)) | {"ref_logits_forget"}


@register_method("undial", needs=_needs)
def undial(inputs: MethodInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """UnDIAL: distil from the teacher with the forget token's logit lowered by `strength`."""
    f = inputs.forget
    if params.get("all_positions", False):
        targets = need(f.target_ids, "forget target_ids (all_positions)")
        mask = torch.ones_like(targets, dtype=torch.bool)
    else:
        targets, mask = f.labels, f.mask
    forget = undial_loss(f.logits, need(f.ref_logits, "forget ref_logits"), targets, mask,
                         float(params.get("strength", 10.0)))
    return float(params.get("forget_weight", 1.0)) * forget + retain_term(inputs, _retain_params(params))
