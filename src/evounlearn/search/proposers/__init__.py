"""Proposers of candidate loss functions for the EvoMU search.

- `offline` (default, `offline/`): mutation / crossover / constant tuning of loss expression
  trees, no LLM;
- `http` (`llm/http.py`): any OpenAI-compatible chat-completions server (vLLM, SGLang, llama.cpp,
  OpenAI, ...), through the optional `openai` client (`pip install evounlearn[llm]`);
- `hf` (`llm/hf.py`): a local Hugging Face causal LM loaded in-process.

`make_proposer(kind, options)` builds one, `proposer_from_section(section)` builds one from the
search config's `proposer` section. A proposer only produces text; checking and running
candidate code is the sandbox's job. The concrete proposers are imported from their own modules
(this package imports none of them, see `registry`).
"""

from .base import (
    INTERFACES,
    KINDS,
    NO_FUNCTION,
    Proposal,
    ProposalRequest,
    Proposer,
    ProposerError,
    ReferenceLevels,
    RunSettings,
)
from .registry import PROPOSERS, make_proposer, proposer_class, proposer_from_section

__all__ = [
    "INTERFACES",
    "KINDS",
    "NO_FUNCTION",
    "PROPOSERS",
    "Proposal",
    "ProposalRequest",
    "Proposer",
    "ProposerError",
    "ReferenceLevels",
    "RunSettings",
    "make_proposer",
    "proposer_class",
    "proposer_from_section",
]
