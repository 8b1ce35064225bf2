"""What both LLM proposers share: request -> prompt -> raw text (one or two phases) -> proposals.

A backend (the HTTP server client, the local model) implements only `LLMProposer.complete`: one
decoding of the prompt, optionally continuing an assistant prefix. Everything else is here, once:

- prompts come from `prompts.render_prompt`, candidates from `parse.extract_functions` (one
  Proposal per function found, up to `request.n`); nothing is executed;
- two-phase decoding for reasoning models (`two_phase: true`): phase 1 samples the
  reasoning (temperature 0.6, top-p 0.95, top-k 20) and stops at "<answer>"; phase 2 continues the
  assistant text `phase-1 + "<answer>"` at temperature 0.2 and stops at "</answer>". The raw
  response is `phase-1 + "<answer>" + phase-2 + "</answer>"`. Phase 2 samples with `seed + 1`.
  Each phase's text is cut at its stop string, for backends that return text past it.

Every reply is untrusted and bounded (`DecodingConfig`): one `propose` runs under `deadline_s`
(the backends stop retrying, reading or generating when it would pass and raise ProposerError);
a reply keeps at most `max_response_bytes` (the HTTP backend stops reading the body there, the
local model is bounded by its max_new_tokens); C0/C1 control characters (but tab and newline)
are removed before parsing and storing; a candidate program keeps at most `max_functions`
functions; the raw response stored with each proposal keeps `max_stored_response_bytes`, ending
in "...[truncated N bytes]". Every cut is listed in `Proposal.cuts` and in its notes. A reply
without any function gives one Proposal with empty code and `error=NO_FUNCTION`, so that the
driver can record it and ask for a repair.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from dataclasses import dataclass

from ..base import NO_FUNCTION, Proposal, ProposalRequest, Proposer, ProposerError
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
    # bounds on one request (the reply is untrusted)
    deadline_s: float = 1200.0  # wall time of one propose: all phases, retries, backoff and reading
    max_response_bytes: int = 200_000  # of one reply; the rest is not read
    max_functions: int = 8  # per candidate program: the loss and the helpers it calls
    max_stored_response_bytes: int = 65_536  # of the raw response stored with each proposal

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


def cut_bytes(text: str, limit: int) -> tuple[str, int]:
    """`text` cut to at most `limit` UTF-8 bytes (never inside a character), and the bytes cut."""
    if len(text) <= limit // 4:  # 4 bytes per character at most: surely short enough
        return text, 0
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text, 0
    return data[: max(0, limit)].decode("utf-8", errors="ignore"), len(data) - max(0, limit)


def stored_text(text: str, limit: int) -> str:
    """`text` as stored: at most `limit` bytes, then "...[truncated N bytes]" when it was longer."""
    kept, cut = cut_bytes(text, limit)
    return kept + f"\u2026[truncated {cut} bytes]" if cut else kept


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """`text` up to the first stop string (all of it when none occurs)."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else text


class LLMProposer(Proposer):
    """A proposer that asks a language model; subclasses implement `complete` and `source`."""

    config: DecodingConfig
    _deadline: float | None = None  # time.monotonic() by which the current request must end
    _cuts: list[str]  # what was cut from the current reply (set by `chat`)

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

    # -- what a backend uses while it works on one request ------------------------------------

    def time_left(self) -> float:
        """Seconds left before the current request's deadline (`deadline_s` when none started)."""
        if self._deadline is None:
            return float(self.config.deadline_s)
        return self._deadline - time.monotonic()

    def check_time(self, what: str) -> float:
        """The seconds left; a ProposerError saying `what` could not start when there are none."""
        left = self.time_left()
        if left <= 0:
            raise ProposerError(f"the proposal deadline (deadline_s={self.config.deadline_s:g}) passed before {what}")
        return left

    def record_cut(self, what: str) -> None:
        """Note something cut from the current reply (listed in the proposals' `cuts`).

        Only while `chat` runs (a backend called on its own has no proposals to tell)."""
        if self._deadline is not None:
            self._cuts.append(what)

    # -- one request ----------------------------------------------------------------------------

    def chat(self, prompt: str, seed: int = 0) -> str:
        """The raw response text for a prompt (both phases joined in two-phase mode).

        Runs under `deadline_s`, without control characters, at most `max_response_bytes` long.
        """
        cfg = self.config
        self._deadline = time.monotonic() + float(cfg.deadline_s)
        self._cuts = []
        try:
            if not cfg.two_phase:
                text = self._reply(prompt, cfg.single_phase(), seed)
            else:
                reasoning = cfg.reasoning_phase()
                prefix = cut_at_stop(self._reply(prompt, reasoning, seed), reasoning.stop) + cfg.answer_open
                self.check_time("the answer phase")
                answer = cfg.answer_phase()
                tail = cut_at_stop(self._reply(prompt, answer, seed + 1, prefix=prefix), answer.stop)
                text = prefix + tail + cfg.answer_close
            text, cut = cut_bytes(text, int(cfg.max_response_bytes))  # both phases together, or the local model
            if cut:
                self.record_cut(f"reply cut by {cut} bytes to max_response_bytes={cfg.max_response_bytes}")
        finally:
            self._deadline = None
        return text

    def _reply(self, prompt: str, sampling: Sampling, seed: int, prefix: str = "") -> str:
        self.check_time("the request was sent")
        return parse.clean_reply(self.complete(prompt, sampling, seed, prefix=prefix))

    def propose(self, request: ProposalRequest) -> list[Proposal]:
        cfg = self.config
        prompt = prompts.render_prompt(request)
        raw = self.chat(prompt, seed=request.seed)
        cuts = list(self._cuts)
        if request.kind == "initial":
            parents: list[int | str] = []
        elif request.kind == "crossover":
            parents = request.parent_ids()
        else:
            parents = request.parent_ids([0])
        stored = stored_text(raw, int(cfg.max_stored_response_bytes))
        if stored != raw:
            cuts.append(f"stored response cut to max_stored_response_bytes={cfg.max_stored_response_bytes}")
        source = self.source() + (" (two-phase)" if cfg.two_phase else "")

        def proposal(code: str, more: list[str], error: str = "") -> Proposal:
            every = cuts + more
            notes = source + ("; cut: " + "; ".join(every) if every else "")
            return Proposal(code=code, prompt=prompt, raw_response=stored, parents=list(parents),
                            operator=f"llm:{request.kind}", notes=notes, error=error, cuts=every)

        programs = parse.extract_programs(raw, limit=request.n, max_functions=int(cfg.max_functions))
        if not programs:
            return [proposal("", [], error=NO_FUNCTION)]
        return [
            proposal(p.code, [f"program cut to {p.functions - p.dropped} of {p.functions} functions "
                              f"(max_functions={cfg.max_functions})"] if p.dropped else [])
            for p in programs
        ]
