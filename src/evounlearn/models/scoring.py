"""Token-level log-probabilities from logits: the single implementation every metric and loss uses.

Convention: `logits` are the raw model outputs for `input_ids` (position t predicts token t+1);
`labels` are aligned with `input_ids` and hold IGNORE_INDEX (-100) where nothing is scored.
`shift` turns both into next-token-aligned tensors of length T-1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.prompting import IGNORE_INDEX


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align so that out_logits[:, t] predicts out_labels[:, t]."""
    return logits[:, :-1, :], labels[:, 1:]


def token_logprobs(aligned_logits: torch.Tensor, aligned_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) and the boolean mask of scored positions; masked entries are 0."""
    mask = aligned_labels != IGNORE_INDEX
    safe = aligned_labels.clamp(min=0)
    logp = torch.log_softmax(aligned_logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def sequence_logprob(aligned_logits: torch.Tensor, aligned_labels: torch.Tensor) -> torch.Tensor:
    """Summed answer log-prob per sequence, shape [B]."""
    logp, _ = token_logprobs(aligned_logits, aligned_labels)
    return logp.sum(-1)


def token_mean_nll(aligned_logits: torch.Tensor, aligned_labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL over every scored token of the batch (the usual causal-LM loss), a scalar."""
    return F.cross_entropy(
        aligned_logits.float().reshape(-1, aligned_logits.size(-1)),
        aligned_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )
