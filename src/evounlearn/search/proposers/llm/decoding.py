"""What both LLM proposers share: request -> prompt -> raw text (one or two phases) -> proposals.

A backend (the HTTP server client, the local model) implements only `LLMProposer.complete`: one
decoding of the prompt, optionally continuing an assistant prefix. Everything else is here, once:

- prompts come from `prompts.render_prompt`, candidates from `parse.extract_functions` (one
  Proposal per function found, up to `request.n`); nothing is executed;
- two-phase decoding for reasoning models (`two_phase: true`, SPEC 2.1): phase 1 samples the
  reasoning (temperature 0.6, top-p 0.95, top-k 20) and stops at "<answer>"; phase 2 continues the
  assistant text `phase-1 + "<answer>"` at temperature 0.2 and stops at "</answer>". The raw
  response is `phase-1 + "<answer>" + phase-2 + "</answer>"`. Phase 2 samples with `seed + 1`.
  Each phase's text is cut at its stop string, for backends that return text past it.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

from ..base import Proposal, ProposalRequest, Proposer
from . import parse, prompts


@dataclass(frozen=True)
class Sampling:
    """The sampling parameters of one decoding call."""

    temperature: float
    top_p: float
    top_k: int | None  # None (or 0 for the local model): not restricted
    max_tokens: int
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenLimits:
    """Most new tokens per call: single-phase, reasoning phase, answer phase."""

    single: int
    reasoning: int
    answer: int


@dataclass
class DecodingConfig:
    """Options both LLM proposers share; each adds its backend's options and token limits."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int | None = None  # single-phase mode only
    system_prompt: str = ""  # optional system message
    # two-phase decoding (reasoning models)
    two_phase: bool = False
    answer_open: str = "<answer>"
    answer_close: str = "</answer>"
    reasoning_temperature: float = 0.6
    reasoning_top_p: float = 0.95
    reasoning_top_k: int = 20
    answer_temperature: float = 0.2
    answer_top_p: float = 0.95

    def token_limits(self) -> TokenLimits:
        raise NotImplementedError  # the backends name their limits differently (max_tokens, max_new_tokens)

    def single_phase(self) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.top_k, self.token_limits().single)

    def reasoning_phase(self) -> Sampling:
        return Sampling(
            self.reasoning_temperature,
            self.reasoning_top_p,
            self.reasoning_top_k,
            self.token_limits().reasoning,
            stop=(self.answer_open,),
        )

    def answer_phase(self) -> Sampling:
        return Sampling(
            self.answer_temperature,
            self.answer_top_p,
            None,
            self.token_limits().answer,
            stop=(self.answer_close,),
        )


def chat_messages(system_prompt: str, prompt: str) -> list[dict[str, str]]:
    """The chat messages for a user prompt, after the system prompt when there is one."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": prompt}]


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """`text` up to the first stop string (all of it when none occurs)."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else text


class LLMProposer(Proposer):
    """A proposer that asks a language model; subclasses implement `complete` and `source`."""

    config: DecodingConfig

    @abstractmethod
    def complete(self, prompt: str, sampling: Sampling, seed: int, prefix: str = "") -> str:
        """Decode an answer to the user `prompt`.

        With a `prefix`, continue the assistant's answer from it and return only the continuation.
        Reasoning the backend returns apart from the answer comes first, in `<think>...</think>`
        (not when continuing a prefix).
        """

    @abstractmethod
    def source(self) -> str:
        """Where answers come from, for the proposals' notes (e.g. "model Qwen/Qwen3-4B")."""

    def chat(self, prompt: str, seed: int = 0) -> str:
        """The raw response text for a prompt (both phases joined in two-phase mode)."""
        cfg = self.config
        if not cfg.two_phase:
            return self.complete(prompt, cfg.single_phase(), seed)
        reasoning = cfg.reasoning_phase()
        prefix = cut_at_stop(self.complete(prompt, reasoning, seed), reasoning.stop) + cfg.answer_open
        answer = cfg.answer_phase()
        tail = cut_at_stop(self.complete(prompt, answer, seed + 1, prefix=prefix), answer.stop)
        return prefix + tail + cfg.answer_close

    def propose(self, request: ProposalRequest) -> list[Proposal]:
        prompt = prompts.render_prompt(request)
        raw = self.chat(prompt, seed=request.seed)
        if request.kind == "initial":
            parents: list[int | str] = []
        elif request.kind == "crossover":
            parents = request.parent_ids()
        else:
            parents = request.parent_ids([0])
        notes = self.source() + (" (two-phase)" if self.config.two_phase else "")
        return [
            Proposal(
                code=code,
                prompt=prompt,
                raw_response=raw,
                parents=list(parents),
                operator=f"llm:{request.kind}",
                notes=notes,
            )
            for code in parse.extract_functions(raw)[: request.n]
        ]
