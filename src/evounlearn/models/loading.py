"""Load any causal LM and its tokenizer by Hub name or local path."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError

log = logging.getLogger(__name__)


def pick_device(prefer: str | None = None) -> torch.device:
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, dtype: str | None = None) -> torch.dtype:
    """float32 on CPU; bf16 on GPUs that support it, unless a dtype is given."""
    if dtype:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[dtype]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """A library's (often multi-line) message as one line of at most `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _looks_like_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name))


def load_tokenizer(name_or_path: str | Path) -> Any:
    from transformers import AutoTokenizer

    src = str(name_or_path)
    if not Path(src).exists() and not _looks_like_hub_id(src):
        raise ModelError(f"model path {src} does not exist (and is not a Hub model id)")
    try:
        tok = AutoTokenizer.from_pretrained(src)
    except Exception as exc:
        raise ModelError(f"could not load the tokenizer of {src}: {_one_line(exc)}") from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name_or_path: str | Path,
    device: torch.device | str | None = None,
    dtype: str | None = None,
    adapter: str | Path | None = None,
) -> Any:
    """AutoModelForCausalLM.from_pretrained with our device/dtype rules; optional LoRA adapter."""
    from transformers import AutoModelForCausalLM

    src = str(name_or_path)
    if not Path(src).exists() and not _looks_like_hub_id(src):
        raise ModelError(f"model path {src} does not exist (and is not a Hub model id)")
    dev = pick_device(str(device) if device else None)
    try:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=pick_dtype(dev, dtype))
    except Exception as exc:
        raise ModelError(f"could not load the model {src}: {_one_line(exc)}") from exc
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.to(dev)
    model.eval()
    return model


def load_model_and_tokenizer(name_or_path: str | Path, device: str | None = None, dtype: str | None = None,
                             adapter: str | Path | None = None) -> tuple[Any, Any]:
    return load_model(name_or_path, device, dtype, adapter), load_tokenizer(name_or_path)


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
