"""An OpenAI-compatible chat-completions server as the proposer (vLLM, SGLang, llama.cpp, OpenAI, ...).

Talks through the official `openai` client (the optional `llm` extra; imported on the first
request, so `import evounlearn` never needs it). `Authorization: Bearer $<api_key_env>` is sent
when that environment variable is set (read at each request). Options the OpenAI API does not
define (`top_k`, vLLM's `continue_final_message`, anything in `extra_body`) travel in the
request's extra body. A loopback server is reached without the environment's proxy settings.

Retries are ours, not the client's (it runs with `max_retries=0`): 429, 5xx, connection errors
and timeouts are retried with exponential backoff from `backoff_s`, a jitter in [0.5, 1.5) drawn
from the request's seed and the server's Retry-After as a lower bound, at most `max_retries`
times; any other 4xx fails at once with a ProposerError naming the status and the server's
message. `timeout_s` bounds each socket operation (connect, each read), so a silent server costs
at most about `(max_retries + 1) * timeout_s` plus the backoff.

Two-phase decoding (`decoding.LLMProposer`): phase 2 continues the assistant message
`phase-1 text + "<answer>"` with vLLM's `continue_final_message: true, add_generation_prompt:
false`. When the server returns the reasoning separately (`reasoning_content` / `reasoning`), it
is wrapped in `<think>...</think>` in the stored raw response.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from ..base import ProposerError
from .decoding import DecodingConfig, LLMProposer, Sampling, TokenLimits, chat_messages

_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
_STANDARD = ("temperature", "top_p", "max_tokens", "stop", "seed")  # create() keywords we send


@dataclass
class HTTPConfig(DecodingConfig):
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "Qwen/Qwen3-4B-Thinking-2507"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 300.0
    max_retries: int = 3
    backoff_s: float = 2.0  # first retry delay; doubles each retry, times a jitter in [0.5, 1.5)
    max_backoff_s: float = 60.0
    max_tokens: int = 8192
    send_seed: bool = True  # pass request.seed as the OpenAI "seed" field
    extra_body: dict[str, Any] = field(default_factory=dict)  # merged into every request body
    reasoning_max_tokens: int = 8192
    answer_max_tokens: int = 4096
    continue_final_message: bool = True  # vLLM flags for continuing the assistant prefix

    def token_limits(self) -> TokenLimits:
        return TokenLimits(self.max_tokens, self.reasoning_max_tokens, self.answer_max_tokens)


class HTTPProposer(LLMProposer):
    """Asks an OpenAI-compatible server for loss functions."""

    name = "http"
    config_class = HTTPConfig

    def __init__(self, config: HTTPConfig | None = None) -> None:
        self.config: HTTPConfig = config or HTTPConfig()
        self.url = self.config.base_url.rstrip("/") + "/chat/completions"
        self._client: Any = None

    def source(self) -> str:
        return f"model {self.config.model}"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- transport ----------------------------------------------------------------------------

    def _openai(self) -> Any:
        if self._client is None:
            try:
                import openai
            except ImportError as exc:
                raise ProposerError(
                    "the 'http' proposer needs the openai client: pip install 'evounlearn[llm]'"
                ) from exc
            host = urllib.parse.urlparse(self.url).hostname or ""
            http_client = None
            if host in _LOOPBACK:  # never send a local server's traffic through an environment proxy
                http_client = openai.DefaultHttpxClient(trust_env=False)
            self._client = openai.OpenAI(
                base_url=self.config.base_url.rstrip("/"),
                api_key="unused",  # the client insists on one; the real key is set per request
                timeout=self.config.timeout_s,
                max_retries=0,
                http_client=http_client,
            )
        return self._client

    def _delay(self, attempt: int, rng: random.Random, retry_after: str | None) -> float:
        delay = self.config.backoff_s * (2**attempt) * (0.5 + rng.random())
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        return min(delay, self.config.max_backoff_s)

    def post(self, body: dict[str, Any], seed: int = 0) -> dict[str, Any]:
        """Send one chat-completions request with retries; return the response as a dict."""
        import openai

        client = self._openai()
        key = os.environ.get(self.config.api_key_env, "") if self.config.api_key_env else ""
        # No key: no Authorization header at all (a local server may reject an empty bearer).
        auth = {"Authorization": f"Bearer {key}" if key else openai.Omit()}
        kwargs = {k: v for k, v in body.items() if k in _STANDARD}
        extra = {k: v for k, v in body.items() if k not in _STANDARD and k not in ("model", "messages")}
        rng = random.Random(seed)
        attempts = max(0, int(self.config.max_retries)) + 1
        last = ""
        for attempt in range(attempts):
            retry_after: str | None = None
            try:
                resp = client.chat.completions.create(
                    model=body["model"],
                    messages=body["messages"],
                    extra_body=extra or None,
                    extra_headers=auth,
                    **kwargs,
                )
            except openai.APIStatusError as exc:
                if exc.status_code != 429 and exc.status_code < 500:
                    raise ProposerError(
                        f"LLM server {self.url} rejected the request with HTTP {exc.status_code}: "
                        f"{_error_detail(exc)}"
                    ) from None
                last = f"HTTP {exc.status_code}: {_error_detail(exc)}"
                retry_after = exc.response.headers.get("Retry-After")
            except openai.APIConnectionError as exc:  # refused, reset, timed out
                last = f"{type(exc).__name__}: {exc.__cause__ or exc}"
            except (openai.OpenAIError, ValueError) as exc:  # a body that is not a chat completion
                raise ProposerError(f"LLM server {self.url} returned an unreadable response: {exc}") from None
            else:
                if not hasattr(resp, "model_dump"):  # the client hands back non-JSON bodies as text
                    raise ProposerError(f"LLM server {self.url} returned a body that is not JSON: {resp!r:.200}")
                return resp.model_dump()
            if attempt + 1 < attempts:
                time.sleep(self._delay(attempt, rng, retry_after))
        raise ProposerError(f"LLM server {self.url} failed after {attempts} attempt(s); last error: {last}")

    # -- protocol -----------------------------------------------------------------------------

    def body(self, messages: list[dict[str, str]], sampling: Sampling, seed: int) -> dict[str, Any]:
        """The JSON body of one request: extra_body, overridden by the sampling parameters."""
        cfg = self.config
        body: dict[str, Any] = {"model": cfg.model, "messages": messages}
        body.update(cfg.extra_body)
        params = {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "max_tokens": sampling.max_tokens,
            "stop": list(sampling.stop) or None,
        }
        body.update({k: v for k, v in params.items() if v is not None})
        if cfg.send_seed:
            body["seed"] = int(seed)
        return body

    def complete(self, prompt: str, sampling: Sampling, seed: int, prefix: str = "") -> str:
        messages = chat_messages(self.config.system_prompt, prompt)
        if not prefix:
            return _message_text(self.post(self.body(messages, sampling, seed), seed), wrap_reasoning=True)
        body = self.body(messages + [{"role": "assistant", "content": prefix}], sampling, seed)
        if self.config.continue_final_message:
            body.update(continue_final_message=True, add_generation_prompt=False)
        return _message_text(self.post(body, seed), wrap_reasoning=False)


def _error_detail(exc: Any) -> str:
    """The server's error message (`{"error": {"message": ...}}` or the raw body), on one line."""
    data = exc.body
    if isinstance(data, dict):
        data = data.get("error", data)  # openai unwraps "error" already; some servers nest twice
        if isinstance(data, dict):
            data = data.get("message") or data
    raw = data if isinstance(data, str) else json.dumps(data) if data is not None else ""
    raw = " ".join(raw.split())
    return (raw[:300] + "...") if len(raw) > 300 else (raw or exc.message or "no detail")


def _message_text(resp: dict[str, Any], wrap_reasoning: bool) -> str:
    choices = resp.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ProposerError("LLM server response has no choices")
    choice = choices[0]
    msg = choice.get("message")
    if isinstance(msg, dict):
        content = msg.get("content") or ""
        reasoning = msg.get("reasoning_content") or msg.get("reasoning") or ""
    else:  # legacy completions shape
        content = choice.get("text") or ""
        reasoning = ""
    if not isinstance(content, str):
        content = json.dumps(content)
    if reasoning and isinstance(reasoning, str):
        if wrap_reasoning:
            return f"<think>{reasoning}</think>" + content
        return content or reasoning
    return content
