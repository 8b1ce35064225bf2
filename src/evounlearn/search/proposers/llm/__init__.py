"""The LLM proposers: prompts (`prompts` + `templates/`), decoding shared by every backend
(`decoding.LLMProposer`), code extraction from replies (`parse`), and two backends: `http` (an
OpenAI-compatible server through the optional `openai` client) and `hf` (a local causal LM)."""

from .decoding import DecodingConfig, LLMProposer, Sampling
from .hf import HFConfig, HFLocalProposer
from .http import HTTPConfig, HTTPProposer

__all__ = [
    "DecodingConfig",
    "HFConfig",
    "HFLocalProposer",
    "HTTPConfig",
    "HTTPProposer",
    "LLMProposer",
    "Sampling",
]
