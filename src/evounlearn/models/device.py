"""Where a model lives and how long its inputs may be: the device, the padding token id and the
context length that every evaluator needs before it batches token ids for a model."""

from __future__ import annotations

from typing import Any

import torch


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def pad_token_id(tokenizer: Any) -> int:
    """The id to pad batches with: the tokenizer's pad token, else its EOS token, else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0


def model_max_length(model: Any, tokenizer: Any = None, default: int = 2048) -> int:
    """The model's context length: config (n_positions / max_position_embeddings / n_ctx), else
    the tokenizer's model_max_length when it is a real number, else `default`."""
    cfg = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < 1_000_000:
        return tml
    return default


def runtime_info() -> dict[str, Any]:
    """What a number depends on besides the seed: library versions, thread count, device (every
    results JSON records it, so that two runs can be compared like for like)."""
    import platform

    import torch
    import transformers

    device = "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "device": device, "python": platform.python_version()}
