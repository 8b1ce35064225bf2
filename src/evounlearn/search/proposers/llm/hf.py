"""A local Hugging Face causal LM as the proposer, loaded in-process (no server).

Same prompts, parsing and two-phase decoding as the HTTP proposer (`decoding.LLMProposer`). The
model (`AutoModelForCausalLM.from_pretrained(path)`) and tokenizer are loaded lazily on the first
request; the tokenizer's chat template is used when it has one, else the prompt is fed as plain
text. Sampling is seeded from `request.seed` inside `torch.random.fork_rng`, so the caller's
global RNG state is untouched. Phase 2 of two-phase decoding continues the text
`prompt + phase-1 + "<answer>"`. Generation is bounded by the token limits and by the time left
before the request's `deadline_s` (`generate(max_time=...)`: the text so far is kept and the cut
recorded).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ....errors import ModelError
from .decoding import DecodingConfig, LLMProposer, Sampling, TokenLimits, chat_messages


@dataclass
class HFConfig(DecodingConfig):
    path: str = ""  # a Hub name or a local directory
    device: str = "auto"  # "auto": cuda when available, else cpu
    dtype: str = "auto"  # "auto": bfloat16 on cuda, float32 on cpu; or "float32", "bfloat16", "float16"
    trust_remote_code: bool = False
    top_k: int | None = 0  # 0: disabled (redeclared: the shared default is None)
    max_new_tokens: int = 4096
    reasoning_max_new_tokens: int = 8192
    answer_max_new_tokens: int = 2048

    def token_limits(self) -> TokenLimits:
        return TokenLimits(self.max_new_tokens, self.reasoning_max_new_tokens, self.answer_max_new_tokens)


class HFLocalProposer(LLMProposer):
    """Generates loss functions with a causal LM held in this process."""

    name = "hf"
    config_class = HFConfig

    def __init__(self, config: HFConfig | None = None) -> None:
        self.config: HFConfig = config or HFConfig()
        self._model: Any = None
        self._tok: Any = None
        self._device: Any = None

    def load(self) -> None:
        """Load the model and tokenizer (done on the first request)."""
        if self._model is not None:
            return
        if not self.config.path:
            raise ModelError("the 'hf' proposer needs a model path or name (option 'path')")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cuda = torch.cuda.is_available()
        device = self.config.device if self.config.device != "auto" else ("cuda" if cuda else "cpu")
        dtype_name = self.config.dtype
        if dtype_name == "auto":
            dtype_name = "bfloat16" if device.startswith("cuda") else "float32"
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            dtype_name
        )
        if dtype is None:
            raise ModelError(f"unknown dtype {self.config.dtype!r} for the 'hf' proposer")
        try:
            tok = AutoTokenizer.from_pretrained(
                self.config.path, trust_remote_code=self.config.trust_remote_code
            )
            model = AutoModelForCausalLM.from_pretrained(
                self.config.path, dtype=dtype, trust_remote_code=self.config.trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the proposer model {self.config.path!r}: {exc}") from exc
        model.to(device)
        model.eval()
        self._model, self._tok, self._device = model, tok, torch.device(device)

    def close(self) -> None:
        self._model = self._tok = None

    def source(self) -> str:
        return f"local model {self.config.path}"

    def _prompt_text(self, prompt: str) -> tuple[str, bool]:
        """(text to feed the model, whether the text already holds the special tokens)."""
        tok = self._tok
        if getattr(tok, "chat_template", None):
            messages = chat_messages(self.config.system_prompt, prompt)
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return str(text), True
        sys = self.config.system_prompt + "\n\n" if self.config.system_prompt else ""
        return sys + prompt + "\n\n", False

    def complete(self, prompt: str, sampling: Sampling, seed: int, prefix: str = "") -> str:
        import torch

        self.load()
        text, templated = self._prompt_text(prompt)
        tok, model = self._tok, self._model
        enc = tok(text + prefix, return_tensors="pt", add_special_tokens=not templated)
        enc = {k: v.to(self._device) for k, v in enc.items()}
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        kwargs: dict[str, Any] = {"max_new_tokens": int(sampling.max_tokens), "pad_token_id": pad}
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=float(sampling.temperature), top_p=float(sampling.top_p))
            kwargs["top_k"] = int(sampling.top_k) if sampling.top_k and sampling.top_k > 0 else None
        else:
            kwargs.update(do_sample=False)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=tok)
        left = self.check_time("generation started")
        kwargs["max_time"] = left
        devices = [self._device.index or 0] if self._device.type == "cuda" else []
        t0 = time.monotonic()
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(int(seed))
            out = model.generate(**enc, **kwargs)
        new = out[0, enc["input_ids"].shape[1] :]
        if time.monotonic() - t0 >= left and new.numel() < kwargs["max_new_tokens"]:
            self.record_cut(f"generation stopped at the deadline (deadline_s={self.config.deadline_s:g})")
        return str(tok.decode(new, skip_special_tokens=True))
