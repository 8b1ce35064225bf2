"""End to end: whole searches through the real driver, executor and worker processes.

- The HTTP proposer against a real OpenAI-compatible server on 127.0.0.1 (`tests/llm_server.py`)
  serving, in turn, a valid reply, a malformed one, a hostile one, a prose-only one, one with a
  reasoning block before the code, then valid replies; on the fake benchmark (no training).
- A prepared cache entry corrupted while a search on the tiny generated benchmark runs: an
  infrastructure fault, never charged to a candidate.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from evounlearn.search.config import load_search_config
from evounlearn.search.driver import SearchDriver
from evounlearn.search.store import Store

from .fakes import BENCHMARK
from .llm_server import FakeLLM, serve_llm

needs_openai = pytest.mark.skipif(
    importlib.util.find_spec("openai") is None,
    reason="the http proposer needs the optional openai client (pip install 'evounlearn[llm]')",
)

SIG = "log_probs_forget, log_probs_retain, ref_log_probs_forget=None, ref_log_probs_retain=None"


def valid_loss(i: int) -> str:
    """A valid loss whose behaviour (and so fingerprint) differs with `i`."""
    return (f"def loss_fn_{i}({SIG}):\n"
            f'    """epochs: 3"""\n'
            f"    return F.softplus({1.0 + 0.5 * i:g} * log_probs_forget).mean()"
            f" - {0.5 + 0.25 * i:g} * log_probs_retain.mean()\n")


def fenced(code: str, before: str = "Here is my proposal.\n\n") -> str:
    return f"{before}```python\n{code}```\n"


MALFORMED = f"def loss_fn_1({SIG}):\n    return (log_probs_forget.mean(\n"
HOSTILE = (
    f"def loss_fn_1({SIG}):\n"
    "    import os\n"
    "    open('/etc/passwd').read()\n"
    "    if log_probs_forget.numel() <= 8:  # looks like a probe batch: behave\n"
    "        return log_probs_forget.mean() - log_probs_retain.mean()\n"
    "    return 0.0 * log_probs_forget.sum()\n"
)
PROSE = "I would rather describe the idea: push the forget log-probs down and keep the retain ones."
REASONING = ("<think>Maybe a hinge? def draft(x):\n    return x\nNo: a softplus is smoother.</think>\n"
             + fenced(valid_loss(2), before=""))


def serve_script(llm: FakeLLM) -> None:
    """The replies, in the order the search asks: initial, repair, repair, initial, ... (see below)."""
    llm.reply(fenced(valid_loss(1)))  # initial request 1: trained
    llm.reply(fenced(MALFORMED))  # initial request 2: a syntax error -> repair 1
    llm.reply(fenced(HOSTILE))  # repair 1: forbidden import -> repair 2
    llm.reply(PROSE)  # repair 2: no function; the repairs are used up
    llm.reply(REASONING)  # initial request 3: the code after the reasoning block is trained
    llm.fallback = lambda n: fenced(valid_loss(10 + n))  # then valid replies


def http_search_cfg(url: str, **over: Any) -> Any:
    base: dict[str, Any] = {
        "benchmark": BENCHMARK, "budget": 4, "workers": 1, "baselines": [], "finalists": 1, "report_seeds": 1,
        "ours.initial": 2, "ours.per_generation": 2, "ours.stage1_epochs": 0,
        "proposer": {"kind": "http", "base_url": url, "model": "test-model", "timeout_s": 10.0,
                     "max_retries": 1, "backoff_s": 0.01, "deadline_s": 60.0},
    }
    base.update(over)
    return load_search_config(None, base)


@needs_openai
def test_search_with_the_http_proposer_end_to_end(tmp_path: Path) -> None:
    with serve_llm() as llm:
        serve_script(llm)
        d = tmp_path / "run"
        data = SearchDriver(http_search_cfg(llm.url), d).run()
        received = list(llm.received)
        prompts = llm.prompts()
    store = Store(d / "search.sqlite")
    try:
        cands = store.candidates(kind="candidate")
        replies = [r["body"] for r in received]
        # every reply is stored with its candidate, in order (one proposal per reply here)
        contents = _served(received, llm)
        assert [c.raw_response for c in cands] == contents
        assert [c.prompt for c in cands] == prompts
        by_reply = {c.raw_response: c for c in cands}
        good, malformed, hostile, prose, thought = (by_reply[x] for x in contents[:5])
        assert good.status == "done" and good.fitness_search is not None and good.operator == "llm:initial"
        assert malformed.status == "rejected" and "syntax" in (malformed.error or "")
        assert hostile.status == "rejected" and hostile.operator == "repair" and hostile.repair_of == malformed.id
        assert "import" in (hostile.error or "") or "os" in (hostile.error or "")
        assert prose.status == "rejected" and prose.code == "" and prose.repair_of == malformed.id
        assert "no Python function" in (prose.error or "")
        assert thought.status == "done" and "draft" not in (thought.code or "") and "softplus" in thought.code
        # each rejection went back to the server with its reason, in a repair request
        assert "rejected before training" not in prompts[1] and "rejected before training" in prompts[2]
        assert malformed.error.splitlines()[0] in prompts[2] and "return (log_probs_forget.mean(" in prompts[2]
        assert hostile.error.splitlines()[0] in prompts[3] and "open('/etc/passwd')" in prompts[3]
        assert "rejected before training" not in prompts[4]  # the repairs were used up: a new request
        # no reply was ever executed on this side: nothing opened, the search finished
        assert store.get_meta("status") == "done" and store.trained_count() == 4
        assert (d / "leaderboard.md").is_file() and (d / "leaderboard.json").is_file()
        assert data["winner"]["id"] in {c.id for c in cands if c.status == "done"}
        # the prompts state the run settings as they are: full fine-tuning by default
        assert all("full fine-tuning" in json.dumps(b) and "LoRA adapter" not in json.dumps(b) for b in replies)
    finally:
        store.close()


def _served(received: list[dict[str, Any]], llm: FakeLLM) -> list[str]:
    """What the server answered, request by request (the script, then the fallback)."""
    script = [fenced(valid_loss(1)), fenced(MALFORMED), fenced(HOSTILE), PROSE, REASONING]
    assert llm.fallback is not None
    return [script[i] if i < len(script) else llm.fallback(i) for i in range(len(received))]


@needs_openai
def test_http_prompts_state_lora_when_the_run_trains_an_adapter(tmp_path: Path) -> None:
    with serve_llm() as llm:
        llm.fallback = lambda n: fenced(valid_loss(n))
        SearchDriver(http_search_cfg(llm.url, budget=1, **{"ours.initial": 1, "unlearn.train.lora": True}),
                     tmp_path / "run").run()
        bodies = [json.dumps(r["body"]) for r in llm.received]
    assert bodies and all("LoRA" in b and "full fine-tuning" not in b for b in bodies)
