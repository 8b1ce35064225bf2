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
at most about `(max_retries + 1) * timeout_s` plus the backoff; and all of it stays within the
request's `deadline_s`: each attempt's timeout is cut to the time left, and when the next retry
would start past the deadline the proposer stops with a ProposerError saying so.

The body is untrusted: a response hook puts a cap on its stream, so at most `max_response_bytes`
are read (asking for an uncompressed body; a gzip/deflate one is decoded within the cap) and
reading stops at the deadline. A cut chat-completions body is no longer valid JSON: the message
text is recovered from the partial JSON and the cut recorded on the proposals.

Two-phase decoding (`decoding.LLMProposer`): phase 2 continues the assistant message
`phase-1 text + "<answer>"` with vLLM's `continue_final_message: true, add_generation_prompt:
false`. When the server returns the reasoning separately (`reasoning_content` / `reasoning`), it
is wrapped in `<think>...</think>` in the stored raw response.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import re
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
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
        self._body: _BodyCap | None = None  # the cap on the body being read (set by the response hook)

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
            http_client = openai.DefaultHttpxClient(
                trust_env=host not in _LOOPBACK,  # never send a local server's traffic through a proxy
                event_hooks={"response": [self._cap_body]},
            )
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

    def _cap_body(self, response: Any) -> None:
        """Response hook: read the body through a `_BodyCap` (bytes and deadline)."""
        self._body = _BodyCap(int(self.config.max_response_bytes), time.monotonic() + self.time_left())
        self._body.install(response)

    def post(self, body: dict[str, Any], seed: int = 0) -> dict[str, Any]:
        """Send one chat-completions request with retries; return the response as a dict."""
        import openai

        client = self._openai()
        key = os.environ.get(self.config.api_key_env, "") if self.config.api_key_env else ""
        # No key: no Authorization header at all (a local server may reject an empty bearer).
        headers = {"Authorization": f"Bearer {key}" if key else openai.Omit(), "Accept-Encoding": "identity"}
        kwargs = {k: v for k, v in body.items() if k in _STANDARD}
        extra = {k: v for k, v in body.items() if k not in _STANDARD and k not in ("model", "messages")}
        rng = random.Random(seed)
        attempts = max(0, int(self.config.max_retries)) + 1
        last = ""
        for attempt in range(attempts):
            retry_after: str | None = None
            left = self.check_time(f"attempt {attempt + 1}" + (f" (last error: {last})" if last else ""))
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=body["model"],
                    messages=body["messages"],
                    extra_body=extra or None,
                    extra_headers=headers,
                    timeout=min(float(self.config.timeout_s), left),
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
            except (openai.OpenAIError, ValueError) as exc:
                raise ProposerError(f"LLM server {self.url} returned an unreadable response: {exc}") from None
            else:
                return self._read(raw.http_response.content)
            if attempt + 1 < attempts:
                self._wait(self._delay(attempt, rng, retry_after), attempt, last)
        raise ProposerError(f"LLM server {self.url} failed after {attempts} attempt(s); last error: {last}")

    def _wait(self, delay: float, attempt: int, last: str) -> None:
        """Sleep before a retry, unless the retry would start past the request's deadline."""
        if delay >= self.time_left():
            raise ProposerError(
                f"LLM server {self.url}: the proposal deadline (deadline_s={self.config.deadline_s:g}) "
                f"would pass before retry {attempt + 1}; stopped after {attempt + 1} attempt(s); "
                f"last error: {last}"
            )
        time.sleep(delay)

    def _read(self, content: bytes) -> dict[str, Any]:
        """The response body as a dict; a body cut at the byte cap gives its message text as far as read."""
        cut = self._body.cut if self._body is not None else 0
        text = content.decode("utf-8", errors="replace")
        try:
            data = json.loads(text)
        except ValueError:
            if not cut:
                raise ProposerError(f"LLM server {self.url} returned a body that is not JSON: {text[:200]!r}") from None
            data = _partial_message(text)
            if data is None:
                raise ProposerError(
                    f"LLM server {self.url}: the response was cut at max_response_bytes="
                    f"{self.config.max_response_bytes} before any message text"
                ) from None
        if cut:
            self.record_cut(f"response body cut at max_response_bytes={self.config.max_response_bytes}"
                            f" ({cut} bytes or more not read)")
        if not isinstance(data, dict):
            raise ProposerError(f"LLM server {self.url} returned a body that is not JSON: {text[:200]!r}")
        return data

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


class _BodyCap:
    """Reads a response body up to `limit` bytes and until `deadline` (time.monotonic()).

    `cut` becomes the number of bytes past the limit once the body was cut (exact with a
    Content-Length, else a lower bound). A gzip / deflate body is decoded here, within the limit (a small compressed body can
    expand a thousandfold); any other encoding is passed on undecoded and fails as "not JSON".
    """

    def __init__(self, limit: int, deadline: float) -> None:
        self.limit = max(0, limit)
        self.deadline = deadline
        self.cut = 0
        self.total = 0  # the Content-Length of an uncompressed body, when the server sent one

    def install(self, response: Any) -> None:
        """Replace `response.stream` (an httpx / httpx2 response) with a capped one."""
        inner = response.stream
        encoding = (response.headers.get("content-encoding") or "identity").strip().lower()
        decoder = zlib.decompressobj(zlib.MAX_WBITS | 32) if encoding in ("gzip", "x-gzip", "deflate") else None
        if encoding != "identity":  # the client must not decode it again
            del response.headers["content-encoding"]
        elif (response.headers.get("content-length") or "").isdigit():
            self.total = int(response.headers["content-length"])
        package = importlib.import_module(type(response).__module__.partition(".")[0])  # httpx or httpx2
        chunks = self._chunks
        timeout = package.ReadTimeout
        capped = type(
            "CappedBody",
            (package.SyncByteStream,),
            {"__iter__": lambda _self: chunks(inner, decoder, timeout), "close": lambda _self: inner.close()},
        )
        response.stream = capped()

    def _chunks(self, inner: Any, decoder: Any, timeout: Callable[[str], Exception]) -> Iterator[bytes]:
        read = 0
        for chunk in inner:
            if time.monotonic() > self.deadline:
                raise timeout("the proposal deadline passed while reading the response")
            room = self.limit - read
            # room + 1: one byte more than fits tells that the body is longer than the cap
            data = decoder.decompress(chunk, room + 1) if decoder is not None else chunk
            if len(data) > room:
                self.cut = max(1, self.total - self.limit, len(data) - room)
                yield data[:room]
                return  # stop reading: the rest of the body is never received
            read += len(data)
            yield data


_TEXT_FIELD = re.compile(r'"(content|reasoning_content|reasoning)"\s*:\s*"')
_STRING_BODY = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*')  # a JSON string's body, up to its quote or the end


def _partial_message(text: str) -> dict[str, Any] | None:
    """A chat completion holding the message text fields of a cut JSON body (None: none found)."""
    message: dict[str, str] = {}
    for m in _TEXT_FIELD.finditer(text):
        name = m.group(1)
        if name in message:
            continue
        body = _STRING_BODY.match(text, m.end())
        raw = body.group(0) if body else ""
        for trim in range(7):  # the cut may fall inside an escape (\\, \\uXXXX)
            try:
                message[name] = json.loads('"' + raw[: len(raw) - trim] + '"', strict=False)
                break
            except ValueError:
                continue
    if not message:
        return None
    return {"choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "length"}]}
