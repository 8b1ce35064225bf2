"""GradAscent: `loss = -NLL_f`, NLL_f = token-mean NLL of the forget answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .base import MethodInputs, register_method


def grad_ascent_loss(nll_f: torch.Tensor) -> torch.Tensor:
    """`-NLL_f`."""
    return -nll_f


@register_method("grad_ascent", needs=frozenset())
def grad_ascent(inputs: MethodInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """GradAscent: maximise the NLL of the forget answers."""
    return grad_ascent_loss(inputs.forget.nll)
