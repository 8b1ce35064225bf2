"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for the proposer tests.

`serve_llm()` starts it on a free port and yields a `FakeLLM`: queue answers with `reply` /
`fail` / `hang` (served in order, one per request); every request is recorded in `received`
(path, headers, JSON body). When the queue is empty, `fallback(n)` (n = the request's index)
gives the reply's content if set, else the server answers HTTP 500 "no canned answer".
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeLLM:
    url: str
    responses: list[dict[str, Any]]
    received: list[dict[str, Any]]
    release: threading.Event
    fallback: Callable[[int], str] | None = None  # the content served once the queue is empty

    def reply(self, content: str, **message: Any) -> None:
        self.responses.append({"status": 200, "json": chat_json(content, **message)})

    def fail(self, status: int, message: str = "boom", headers: dict[str, str] | None = None) -> None:
        self.responses.append(
            {"status": status, "json": {"error": {"message": message}}, "headers": headers or {}}
        )

    def hang(self, seconds: float) -> None:
        self.responses.append({"sleep": seconds, "status": 200, "json": chat_json("late")})

    def prompts(self) -> list[str]:
        """The user prompt of every request received, in order."""
        return [m["content"] for r in self.received for m in r["body"].get("messages", []) if m["role"] == "user"]

    def next_item(self, index: int) -> dict[str, Any]:
        if self.responses:
            return self.responses.pop(0)
        if self.fallback is not None:
            return {"status": 200, "json": chat_json(self.fallback(index))}
        return {"status": 500, "json": {"error": "no canned answer"}}


def chat_json(content: str, **message: Any) -> dict[str, Any]:
    """A chat-completions response as the OpenAI API sends it."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "test-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": "stop",
            }
        ],
    }


@contextmanager
def serve_llm() -> Iterator[FakeLLM]:
    """A chat-completions server on 127.0.0.1 (a free port), shut down on exit."""
    lock = threading.Lock()
    llm = FakeLLM("", [], [], threading.Event())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            with lock:
                # self.headers: case-insensitive, as HTTP header names are (clients differ in case)
                llm.received.append({"path": self.path, "headers": self.headers, "body": body})
                item = llm.next_item(len(llm.received) - 1)
            if item.get("sleep"):
                llm.release.wait(item["sleep"])
            data = json.dumps(item["json"]).encode()
            try:
                self.send_response(item["status"])
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in item.get("headers", {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (timeout test)
                pass

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the log
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    llm.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield llm
    finally:
        llm.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
