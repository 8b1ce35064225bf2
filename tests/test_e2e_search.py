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
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from evounlearn.errors import InfrastructureError
from evounlearn.search.config import load_search_config
from evounlearn.search.driver import INFRA_RETRIES, SearchDriver
from evounlearn.search.proposers import Proposal, ProposalRequest, Proposer
from evounlearn.search.store import Store

from .fakes import BENCHMARK
from .llm_server import serve_llm

# trains a model or starts sandbox workers / Ray: not in the everyday `-m "not slow"` subset
pytestmark = pytest.mark.slow

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


# The replies in the order the search asks for them (one function each at most):
SCRIPT = [
    fenced(valid_loss(1)),  # initial request 1: trained
    fenced(MALFORMED),  # initial request 2: a syntax error -> repair 1
    fenced(HOSTILE),  # repair 1: a forbidden import -> repair 2
    PROSE,  # repair 2: no function; the repairs (ours.repair_attempts=2) are used up
    REASONING,  # initial request 3: the code after the reasoning block is trained
]


def served(index: int) -> str:
    """What the server answers to its `index`-th request: the script, then valid replies."""
    return SCRIPT[index] if index < len(SCRIPT) else fenced(valid_loss(10 + index))


def http_search_cfg(url: str, **over: Any) -> Any:
    base: dict[str, Any] = {
        "benchmark": BENCHMARK, "budget": 4, "workers": 1, "baselines": [], "finalists": 1, "report_seeds": 1,
        "ours.initial": 2, "ours.per_generation": 2, "ours.stage1_epochs": 0, "ours.race_top": 0,
        "proposer": {"kind": "http", "base_url": url, "model": "test-model", "timeout_s": 10.0,
                     "max_retries": 1, "backoff_s": 0.01, "deadline_s": 60.0},
    }
    base.update(over)
    return load_search_config(None, base)


@needs_openai
def test_search_with_the_http_proposer_end_to_end(tmp_path: Path) -> None:
    with serve_llm() as llm:
        for reply in SCRIPT:
            llm.reply(reply)
        llm.fallback = served
        d = tmp_path / "run"
        data = SearchDriver(http_search_cfg(llm.url), d).run()
        received = list(llm.received)
        prompts = llm.prompts()
    store = Store(d / "search.sqlite")
    try:
        cands = store.candidates(kind="candidate")
        # every reply is stored with its candidate and prompt, in order (one proposal per reply here)
        assert [c.raw_response for c in cands] == [served(i) for i in range(len(received))]
        assert [c.prompt for c in cands] == prompts
        good, malformed, hostile, prose, thought = cands[:5]
        assert good.status == "done" and good.fitness_search is not None and good.operator == "llm:initial"
        assert malformed.status == "rejected" and "syntax" in (malformed.error or "")
        assert hostile.status == "rejected" and hostile.operator == "repair" and hostile.repair_of == malformed.id
        assert "import not allowed" in (hostile.error or "")  # checked, never run
        assert prose.status == "rejected" and prose.code == "" and prose.repair_of == malformed.id
        assert "no Python function" in (prose.error or "")
        assert thought.status == "done" and "draft" not in (thought.code or "") and "softplus" in thought.code
        # each rejection went back to the server with its reason, in a repair request
        assert "rejected before training" not in prompts[1] and "rejected before training" in prompts[2]
        assert malformed.error.splitlines()[0] in prompts[2] and "return (log_probs_forget.mean(" in prompts[2]
        assert hostile.error.splitlines()[0] in prompts[3] and "open('/etc/passwd')" in prompts[3]
        assert "rejected before training" not in prompts[4]  # the repairs were used up: a new request
        # the search went on to the end
        assert store.get_meta("status") == "done" and store.trained_count() == 4
        assert (d / "leaderboard.md").is_file() and (d / "leaderboard.json").is_file()
        assert data["winner"]["id"] in {c.id for c in cands if c.status == "done"}
        # the prompts state the run settings as they are: full fine-tuning by default
        bodies = [json.dumps(r["body"]) for r in received]
        assert all("full fine-tuning" in b and "LoRA adapter" not in b for b in bodies)
    finally:
        store.close()


@needs_openai
def test_http_prompts_state_lora_when_the_run_trains_an_adapter(tmp_path: Path) -> None:
    with serve_llm() as llm:
        llm.fallback = lambda n: fenced(valid_loss(n))
        SearchDriver(http_search_cfg(llm.url, budget=1, **{"ours.initial": 1, "unlearn.train.lora": True}),
                     tmp_path / "run").run()
        bodies = [json.dumps(r["body"]) for r in llm.received]
    assert bodies and all("LoRA" in b and "full fine-tuning" not in b for b in bodies)


# ------------------------------------------------------------------------------------------------
# a prepared cache entry corrupted while the search runs (the tiny generated benchmark)

CACHE_LOSSES = [
    f'def loss_fn({SIG}):\n    """epochs: 1"""\n    return F.softplus(2.0 * log_probs_forget).mean() - log_probs_retain.mean()\n',
    f'def loss_fn({SIG}):\n    """epochs: 1"""\n'
    "    return torch.relu(log_probs_forget - ref_log_probs_forget + 0.5).mean() - 0.5 * log_probs_retain.mean()\n",
    f'def loss_fn({SIG}):\n    """epochs: 1"""\n    return F.softplus(3.0 * log_probs_forget).mean() - 2.0 * log_probs_retain.mean()\n',
]


class CorruptingProposer(Proposer):
    """Proposes `CACHE_LOSSES` in turn; once a candidate has finished, corrupts `victim` (a
    half-written file, as a crashed writer leaves it) and notes the fitness of those finished."""

    name = "corrupting"

    def __init__(self, victim: Path) -> None:
        self.victim = victim
        self.codes = list(CACHE_LOSSES)
        self.driver: SearchDriver | None = None
        self.fitness_before: dict[int, float | None] | None = None

    def propose(self, request: ProposalRequest) -> list[Proposal]:
        assert self.driver is not None
        done = self.driver.db.done_candidates()
        if done and self.fitness_before is None:
            self.fitness_before = {c.id: c.fitness_search for c in done}
            self.victim.write_text('{"model_type": "lla')
        return [Proposal(code=self.codes.pop(0), parents=request.parent_ids(), operator=f"test:{request.kind}")]


def test_a_cache_file_corrupted_during_a_search_stops_it_uncharged(tiny_prepared, tmp_path: Path) -> None:
    from evounlearn.benchmarks.tofu import prepare
    from evounlearn.config import to_dict

    cfg, _ = tiny_prepared
    cache = tmp_path / "cache"  # a private copy: the session's entry stays intact for the other tests
    shutil.copytree(cfg.cache_dir, cache)
    pcfg = replace(cfg, cache_dir=str(cache))
    victim = prepare(pcfg).target / "config.json"
    search = load_search_config(None, {
        "benchmark": "generated", "budget": 2, "workers": 1, "baselines": [], "finalists": 1, "report_seeds": 1,
        "ours.initial": 1, "ours.per_generation": 1, "ours.stage1_epochs": 0, "ours.p_refine": 1.0, "ours.race_top": 0,
        "ours.p_crossover": 0.0, "ours.p_tune": 0.0,
        "unlearn": {"prepare": to_dict(pcfg), "threads": 1, "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3},
                    "eval": {"max_new_tokens": 8}},
    })
    prop = CorruptingProposer(victim)
    d = tmp_path / "run"
    driver = SearchDriver(search, d, proposer=prop)
    prop.driver = driver
    with pytest.raises(InfrastructureError) as err:
        driver.run()
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and "infrastructure fault" in msg, msg
    assert f"{victim} is corrupt" in msg, msg  # the file and what is wrong with it, not cut off
    assert prop.fitness_before, "the corruption never happened: no candidate finished before a proposal"
    store = Store(d / "search.sqlite")
    try:
        assert store.get_meta("status") == "interrupted"
        cands = store.candidates(kind="candidate")
        assert not [c for c in cands if c.status == "failed"]
        after = {c.id: c.fitness_search for c in cands if c.id in prop.fitness_before}
        assert after == prop.fitness_before and all(v is not None for v in after.values())
        victim_runs = [c for c in cands if c.id not in prop.fitness_before]
        assert victim_runs and all(c.status == "validated" and c.fitness_search is None and c.error is None
                                   for c in victim_runs)
        lost = [e for c in victim_runs for e in store.evaluations_of(c.id)]
        assert [(e.status, e.attempts) for e in lost] == [("queued", INFRA_RETRIES + 1)]  # retried, never charged
        assert store.pending_count() >= 1  # the lost run waits in the queue for --resume
    finally:
        store.close()
