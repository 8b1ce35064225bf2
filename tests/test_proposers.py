"""Proposers: code extraction, prompts, the HTTP client against a real local server, the local
HF proposer on a tiny random model, and the offline expression-tree proposer."""

from __future__ import annotations

import ast
import importlib.util
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from evounlearn.errors import ConfigError
from evounlearn.search.proposers import (
    NO_FUNCTION,
    Proposal,
    ProposalRequest,
    Proposer,
    ProposerError,
    RunSettings,
    make_proposer,
    proposer_from_section,
)
from evounlearn.search.proposers.llm.http import HTTPConfig, HTTPProposer, _partial_message
from evounlearn.search.proposers.llm.parse import clean_reply, extract_functions, extract_programs
from evounlearn.search.proposers.llm.prompts import format_leaderboard, format_metrics, render_prompt
from evounlearn.search.proposers.offline import OfflineProposer, interpret, operators, render, seed_trees
from evounlearn.search.proposers.offline import tree as loss_tree

from .llm_server import FakeLLM, chat_json, serve_llm

needs_openai = pytest.mark.skipif(
    importlib.util.find_spec("openai") is None,
    reason="the http proposer needs the optional openai client (pip install 'evounlearn[llm]')",
)

SIG = "log_probs_forget, log_probs_retain, ref_log_probs_forget=None, ref_log_probs_retain=None"


def fn(name: str, body: str, epochs: int = 3) -> str:
    return f'def {name}({SIG}):\n    """epochs: {epochs}"""\n    {body}\n'


GOOD1 = fn("loss_fn_1", "return F.softplus(2.0 * log_probs_forget).mean() - log_probs_retain.mean()")
GOOD2 = fn(
    "loss_fn_2",
    "return torch.relu(log_probs_forget - ref_log_probs_forget + 0.5).mean() - 0.5 * log_probs_retain.mean()",
)


def parses(code: str) -> bool:
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# codeparse
# ------------------------------------------------------------------------------------------------


def test_extract_plain_fenced_functions_renamed() -> None:
    resp = f"Here you go:\n```python\n{GOOD1}\n{GOOD2}```\nThese should work well."
    out = extract_functions(resp)
    assert len(out) == 2
    for code in out:
        assert parses(code)
        assert "def loss_fn(" in code and "loss_fn_1" not in code and "loss_fn_2" not in code
    assert "softplus" in out[0] and "relu" in out[1]


def test_extract_ignores_reasoning_when_answer_exists() -> None:
    decoy = fn("loss_fn_1", "return DECOY.mean()")
    resp = f"<think>Let me draft:\n```python\n{decoy}```\nno wait.</think>\n<answer>\n```python\n{GOOD1}```\n</answer>"
    out = extract_functions(resp)
    assert len(out) == 1 and "DECOY" not in out[0] and "softplus" in out[0]


def test_extract_orphan_closing_think_and_reasoning_tags() -> None:
    decoy = fn("loss_fn_1", "return DECOY.mean()")
    # Qwen3-thinking style: the chat template opened <think>, only the closing tag is generated.
    resp = f"I think...\n{decoy}\n</think>\n\n```python\n{GOOD2}```"
    out = extract_functions(resp)
    assert len(out) == 1 and "relu" in out[0]
    resp2 = f"<reasoning>\n{decoy}</reasoning>\n<answer>{GOOD1}</answer>"
    assert ["DECOY" in c for c in extract_functions(resp2)] == [False]


def test_extract_reasoning_fallback_without_answer() -> None:
    # Truncated: no answer block and nothing outside the reasoning -> search the reasoning.
    resp = f"<think>Plan.\n```python\n{GOOD1}```\nthen more thoughts"
    out = extract_functions(resp)
    assert len(out) == 1 and "softplus" in out[0]
    # An answer block without code: reasoning code is still ignored.
    assert extract_functions(f"<think>{GOOD1}</think><answer>Sorry, no code.</answer>") == []


def test_extract_missing_closing_fence_and_tag() -> None:
    resp = f"<answer>\n```python\n{GOOD1}\n{GOOD2}"
    out = extract_functions(resp)
    assert len(out) == 2 and all(parses(c) for c in out)


def test_extract_helpers_constants_and_candidate_helpers() -> None:
    resp = (
        "```python\n"
        "BETA = 0.5\n\n"
        "def _margin(x, m):\n    return torch.relu(x + m)\n\n"
        "def unused_helper(x):\n    return x\n\n"
        f"def loss_fn_1(\n    {SIG}\n):\n"
        '    """epochs: 2"""\n'
        "    d = log_probs_forget - ref_log_probs_forget\n"
        "    return _margin(d, 0.3).mean() - BETA * log_probs_retain.mean()\n\n"
        f"def loss_fn_2({SIG}):\n"
        '    """epochs: 4"""\n'
        "    return 2.0 * loss_fn_1(log_probs_forget, log_probs_retain, ref_log_probs_forget)\n"
        "```"
    )
    out = extract_functions(resp)
    assert len(out) == 2
    first, second = out
    assert parses(first) and parses(second)
    mod = ast.parse(first)
    names = [n.name for n in mod.body if isinstance(n, ast.FunctionDef)]
    assert names == ["_margin", "loss_fn"]  # unused helper not attached
    assert all(isinstance(n, ast.FunctionDef) for n in mod.body)  # constants moved into bodies
    assert "BETA = 0.5" in first
    names2 = [n.name for n in ast.parse(second).body if isinstance(n, ast.FunctionDef)]
    assert names2 == ["_margin", "_helper_loss_fn_1", "loss_fn"]
    assert "_helper_loss_fn_1(log_probs_forget" in second
    # The programs run (plain exec in the test; the library never executes candidates).
    for code in out:
        ns: dict[str, Any] = {"torch": torch, "F": torch.nn.functional}
        exec(code, ns)
        x = -torch.rand(4)
        assert torch.isfinite(ns["loss_fn"](x, x - 1, x + 0.1, x - 1))


def test_extract_malformed_kept_or_dropped() -> None:
    broken = f"def loss_fn_1({SIG}):\n    return (log_probs_forget.mean(\n"
    resp = f"```python\n{broken}\n{GOOD2}```"
    out = extract_functions(resp)
    assert len(out) == 2
    assert not parses(out[0]) and "def loss_fn(" in out[0]
    assert parses(out[1])
    assert len(extract_functions(resp, keep_broken=False)) == 1


def test_extract_trailing_prose_trimmed_and_docstring_column_zero() -> None:
    resp = (
        f"def loss_fn_1({SIG}):\n"
        '    """epochs: 3\nA docstring line at column 0.\n    """\n'
        "    return log_probs_forget.mean() - 0.5 * log_probs_retain.mean()\n"
        "That is all.\n"
    )
    out = extract_functions(resp)
    assert len(out) == 1 and parses(out[0]) and "That is all" not in out[0]


def test_extract_dedupes_and_accepts_unnamed_interface_functions() -> None:
    resp = f"```python\n{GOOD1}```\nagain:\n```python\n{GOOD1}```"
    assert len(extract_functions(resp)) == 1
    other = f"def my_unlearning_loss({SIG}):\n    return log_probs_forget.mean() * 1.5\n"
    out = extract_functions(other)
    assert len(out) == 1 and "def loss_fn(" in out[0]
    assert extract_functions("") == [] and extract_functions("no code at all") == []


# ------------------------------------------------------------------------------------------------
# prompts
# ------------------------------------------------------------------------------------------------


def test_prompts_render_all_kinds() -> None:
    parent = {
        "code": GOOD1.replace("loss_fn_1", "loss_fn") + "    # tree: {}\n",
        "fitness": 0.512345,
        "metrics": {
            "MU": 0.6123456,
            "forget_ROUGE": {"agg": 0.4, "values": {"0": 1.0}},
            "PrivLeak": -12.3456789,
        },
        "loss_history": [1.234567, 0.5],
        "id": 12,
    }
    for kind in ("initial", "refine", "crossover", "tune"):
        text = render_prompt(ProposalRequest(kind=kind, n=3, parents=[parent, parent], benchmark="muse_news"))
        assert "expert in machine unlearning" in text
        assert "def loss_fn_k(log_probs_forget, log_probs_retain" in text
        assert "<answer>" in text and "<reasoning>" in text and "loss_fn_1 ... loss_fn_3" in text
        assert "softplus" in text and "clamp" in text and '"""epochs: K"""' in text
        assert "INCREASING in the forget log-probs" in text
    refine = render_prompt(
        ProposalRequest(
            kind="refine",
            n=2,
            parents=[parent],
            benchmark="muse",
            leaderboard=[(0.7, "CODE_BEST"), (0.1, "CODE_WORST")],
        )
    )
    assert "0.6123" in refine and "-12.3457" in refine and "[1.2346, 0.5000]" in refine
    assert "PrivLeak" in refine and "smoother penalties" in refine
    assert refine.index("CODE_WORST") < refine.index("CODE_BEST")  # ascending leaderboard
    assert "# tree:" not in refine
    assert "focal" in render_prompt(ProposalRequest(kind="initial", n=5))
    ext = render_prompt(ProposalRequest(kind="initial", n=1, interface="extended"))
    assert "tok_logp_forget, mask_forget" in ext and "named loss_fn_1," in ext
    repair = render_prompt(
        ProposalRequest(
            kind="repair", n=1, error={"reason": "not decreasing in retain", "code": "def loss_fn(): BROKEN"}
        )
    )
    assert "not decreasing in retain" in repair and "BROKEN" in repair
    assert format_metrics({"a": float("nan"), "b": [1.0 / 3]}) == "```json\n" + json.dumps(
        {"a": "nan", "b": [0.3333]}, indent=2
    ) + "\n```"
    assert format_leaderboard([]) == "(empty)"


def test_request_validation() -> None:
    with pytest.raises(ConfigError):
        ProposalRequest(kind="mutate")
    with pytest.raises(ConfigError):
        ProposalRequest(kind="refine")
    with pytest.raises(ConfigError):
        ProposalRequest(kind="initial", n=0)
    with pytest.raises(ConfigError):
        ProposalRequest(kind="initial", interface="tokens")


# ------------------------------------------------------------------------------------------------
# A real chat-completions server on 127.0.0.1
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def llm_server() -> Iterator[FakeLLM]:
    with serve_llm() as server:
        yield server


def http_proposer(url: str, **kw: Any) -> HTTPProposer:
    cfg = {
        "base_url": url,
        "model": "test-model",
        "timeout_s": 5.0,
        "max_retries": 2,
        "backoff_s": 0.01,
    }
    cfg.update(kw)
    p = make_proposer("http", cfg)
    assert isinstance(p, HTTPProposer)
    return p


@needs_openai
def test_http_valid_losses_and_auth(llm_server: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOUNLEARN_TEST_KEY", "sekret")
    llm_server.reply(f"<answer>\n```python\n{GOOD1}\n{GOOD2}```\n</answer>")
    p = http_proposer(llm_server.url, api_key_env="EVOUNLEARN_TEST_KEY", temperature=0.7, max_tokens=512)
    req = ProposalRequest(kind="initial", n=2, seed=5)
    props = p.propose(req)
    assert len(props) == 2
    assert all("def loss_fn(" in x.code and parses(x.code) for x in props)
    assert props[0].raw_response.startswith("<answer>") and props[0].operator == "llm:initial"
    got = llm_server.received[0]
    assert got["path"] == "/v1/chat/completions"
    assert got["headers"].get("Authorization") == "Bearer sekret"
    body = got["body"]
    assert body["model"] == "test-model" and body["temperature"] == 0.7 and body["max_tokens"] == 512
    assert (
        body["messages"][-1]
        == {"role": "user", "content": render_prompt(req)}
        == {"role": "user", "content": props[0].prompt}
    )
    assert body["seed"] == 5 and "stop" not in body
    # Without the key in the environment: no Authorization header.
    monkeypatch.delenv("EVOUNLEARN_TEST_KEY")
    llm_server.reply(GOOD1)
    assert len(p.propose(ProposalRequest(kind="initial", n=3))) == 1  # fewer found than asked
    assert "Authorization" not in llm_server.received[1]["headers"]


@needs_openai
def test_http_malformed_and_prose(llm_server: FakeLLM) -> None:
    broken = f"def loss_fn_1({SIG}):\n    return (log_probs_forget.mean(\n"
    llm_server.reply(f"```python\n{broken}```\n")
    llm_server.reply(f"Sure! Here is a loss.\n\n```python\n{GOOD2}```\n\nIt uses a hinge with margin 0.5.")
    llm_server.reply("I cannot help with that.")
    p = http_proposer(llm_server.url)
    bad = p.propose(ProposalRequest(kind="initial", n=2))
    assert len(bad) == 1 and not parses(bad[0].code)  # kept: the validator reports it for repair
    prose = p.propose(ProposalRequest(kind="initial", n=2))
    assert len(prose) == 1 and parses(prose[0].code) and "Sure" not in prose[0].code
    # Prose only: one proposal without code, carrying the reason (the driver asks for a repair).
    (none,) = p.propose(ProposalRequest(kind="initial", n=2))
    assert none.code == "" and none.error == NO_FUNCTION and none.raw_response == "I cannot help with that."


@needs_openai
def test_http_reasoning_block_with_decoy(llm_server: FakeLLM) -> None:
    decoy = fn("loss_fn_1", "return DECOY.mean()")
    llm_server.reply(
        f"<think>\nDraft:\n```python\n{decoy}```\n</think>\n<answer>\n```python\n{GOOD1}```\n</answer>"
    )
    # vLLM's reasoning parser: reasoning in a separate field, wrapped in <think> in raw_response.
    llm_server.reply(f"<answer>{GOOD2}</answer>", reasoning_content=f"hmm\n{decoy}")
    p = http_proposer(llm_server.url)
    a = p.propose(ProposalRequest(kind="refine", n=1, parents=[{"code": GOOD1, "id": "p7"}]))
    assert len(a) == 1 and "DECOY" not in a[0].code and a[0].parents == ["p7"]
    b = p.propose(ProposalRequest(kind="initial", n=1))
    assert len(b) == 1 and "DECOY" not in b[0].code and b[0].raw_response.startswith("<think>hmm")


@needs_openai
def test_http_two_phase(llm_server: FakeLLM) -> None:
    phase1 = "<think>\nNPO with a margin should be stable.\n</think>\nI will now write it.\n"
    llm_server.reply(phase1)
    llm_server.reply(f"\n```python\n{GOOD1}{GOOD2}```\n")
    p = http_proposer(llm_server.url, two_phase=True)
    props = p.propose(ProposalRequest(kind="initial", n=2, seed=3))
    assert len(props) == 2
    r1, r2 = (x["body"] for x in llm_server.received)
    assert (
        r1["stop"] == ["<answer>"] and r1["temperature"] == 0.6 and r1["top_p"] == 0.95 and r1["top_k"] == 20
    )
    assert r2["stop"] == ["</answer>"] and r2["temperature"] == 0.2
    assert r2["messages"][-1]["role"] == "assistant" and r2["messages"][-1]["content"] == phase1 + "<answer>"
    assert r2["messages"][:-1] == r1["messages"]
    assert r2["continue_final_message"] is True and r2["add_generation_prompt"] is False
    raw = props[0].raw_response
    assert raw.startswith(phase1 + "<answer>") and raw.endswith("</answer>")


@needs_openai
def test_http_hostile_code_is_extracted_not_run(llm_server: FakeLLM, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    body = (
        f"def loss_fn_1({SIG}):\n"
        "    import os\n"
        f"    os.system('touch {marker}')\n"
        "    __import__('shutil').rmtree('/')\n"
        "    return log_probs_forget.mean()\n"
    )
    llm_server.reply(f"<answer>```python\n{body}```</answer>")
    props = http_proposer(llm_server.url).propose(ProposalRequest(kind="initial", n=1))
    assert len(props) == 1
    assert props[0].code == body.replace("loss_fn_1", "loss_fn")  # verbatim, only renamed
    assert not marker.exists()


@needs_openai
def test_http_retries_then_succeeds_and_is_bounded(llm_server: FakeLLM) -> None:
    llm_server.fail(500)
    llm_server.fail(429, headers={"Retry-After": "0"})
    llm_server.reply(GOOD1)
    p = http_proposer(llm_server.url, max_retries=2)
    assert len(p.propose(ProposalRequest(kind="initial", n=1))) == 1
    assert len(llm_server.received) == 3
    for _ in range(5):
        llm_server.fail(503, "overloaded")
    with pytest.raises(ProposerError, match="3 attempt"):
        p.propose(ProposalRequest(kind="initial", n=1))
    assert len(llm_server.received) == 6  # 1 + max_retries, then it gives up


@needs_openai
def test_http_client_error_not_retried(llm_server: FakeLLM) -> None:
    llm_server.fail(400, "model 'nope' does not exist")
    llm_server.reply(GOOD1)
    with pytest.raises(ProposerError, match=r"HTTP 400.*model 'nope' does not exist"):
        http_proposer(llm_server.url).propose(ProposalRequest(kind="initial", n=1))
    assert len(llm_server.received) == 1


@needs_openai
def test_http_timeout_bounded(llm_server: FakeLLM) -> None:
    llm_server.hang(10)
    llm_server.hang(10)
    p = http_proposer(llm_server.url, timeout_s=0.3, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(ProposerError, match="2 attempt"):
        p.propose(ProposalRequest(kind="initial", n=1))
    assert time.monotonic() - t0 < 4.0
    assert len(llm_server.received) == 2


@needs_openai
def test_http_connection_refused() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = HTTPProposer(
        HTTPConfig(base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, backoff_s=0.01, timeout_s=1)
    )
    with pytest.raises(ProposerError, match="2 attempt"):
        p.propose(ProposalRequest(kind="initial", n=1))


# ------------------------------------------------------------------------------------------------
# Bounds on untrusted replies: bytes, functions, time, control characters
# ------------------------------------------------------------------------------------------------


def small_functions(n: int) -> str:
    return "```python\n" + "\n".join(
        fn(f"loss_fn_{i}", f"return {i}.0 * log_probs_forget.mean() - log_probs_retain.mean()") for i in range(n)
    ) + "```\n"


@pytest.mark.slow
def test_extraction_is_linear_in_the_number_of_functions() -> None:
    text = small_functions(8000)
    t0 = time.monotonic()
    out = extract_functions(text)
    assert time.monotonic() - t0 < 30.0  # linear: ~1.3 s here; the quadratic extraction took 194 s
    assert len(out) == 8000 and "return 7999.0 *" in out[-1]
    t0 = time.monotonic()
    assert len(extract_programs(text, limit=3)) == 3
    assert time.monotonic() - t0 < 30.0


def test_extraction_of_a_5mb_reply_is_bounded() -> None:
    prose = "Some thoughts about unlearning, margins and (brackets) and ``` fences.\n" * 30_000
    long_line = "X = " + "1 + " * 250_000 + "1\n"  # a 1 MB "constant": not parsed
    text = prose + long_line + f"```python\n{GOOD1}```\n" + prose + small_functions(500) + "def loss_fn_x(" * 1000
    assert len(text) > 5_000_000
    t0 = time.monotonic()
    out = extract_functions(text)
    assert time.monotonic() - t0 < 30.0
    assert out and "softplus" in out[0] and "1 + 1 + 1" not in out[0]


def test_program_with_50_functions_keeps_max_functions() -> None:
    helpers = "".join(f"def h{i}(x):\n    return x * {i + 1}.0\n\n" for i in range(49))
    calls = " + ".join(f"h{i}(log_probs_forget).mean()" for i in range(49))
    reply = f"```python\n{helpers}{fn('loss_fn_1', 'return ' + calls)}```"
    (whole,) = extract_programs(reply)
    assert whole.functions == 50 and whole.dropped == 0
    (cut,) = extract_programs(reply, max_functions=8)
    mod = ast.parse(cut.code)
    names = [n.name for n in mod.body if isinstance(n, ast.FunctionDef)]
    assert len(names) == 8 and names[-1] == "loss_fn" and cut.functions == 50 and cut.dropped == 42
    kept = [int(n[1:]) for n in names[:7]]  # seven of the helpers it calls, in order of appearance
    assert kept == sorted(kept) and "def h48(" not in cut.code


def test_reasoning_block_then_code_parses() -> None:
    thought = "Let me think about the margin. " * 2000 + "def draft(x):\n    return x\n"
    out = extract_functions(f"<think>{thought}</think>\n\n```python\n{GOOD2}```\n")
    assert len(out) == 1 and "relu" in out[0] and "draft" not in out[0]


def test_control_characters_are_stripped() -> None:
    dirty = "a\x00b\x1b[31mc\x7f\x85d\te\r\nf\u200bg\rh"
    # whole escape sequences go (not only their ESC byte); CR line ends become LF, as Python reads
    # them; format characters (category Cf: the zero-width space here) go too
    assert clean_reply(dirty) == "abcd\te\nfg\nh"


def test_partial_json_message_recovered() -> None:
    body = json.dumps(chat_json('say "hi"\\n\u00e9\u2028 and more'), ensure_ascii=True)
    for cut in range(len(body) // 2, len(body)):
        msg = _partial_message(body[:cut])
        if msg is not None:
            text = msg["choices"][0]["message"]["content"]
            assert 'say "hi"\\n\u00e9\u2028 and more'.startswith(text)
    assert _partial_message('{"id": "x", "choi') is None


def test_run_settings_in_prompts_match_training_defaults() -> None:
    from evounlearn.training.loop import TrainConfig

    train = TrainConfig()
    run = RunSettings()
    assert (run.lora, run.lora_r, run.batch_size, run.lr) == (
        train.lora,
        train.lora_r,
        train.batch_size,
        train.lr,
    )
    for kind in ("initial", "refine", "crossover", "tune"):
        text = render_prompt(ProposalRequest(kind=kind, parents=[{"code": GOOD1}] * 2))
        assert "Training: full fine-tuning (all weights), AdamW" in text and "LoRA" not in text
    lora = RunSettings.from_train({"lora": True, "lora_r": 16, "lr": 3e-5, "batch_size": 4}, epochs=7)
    text = render_prompt(ProposalRequest(kind="initial", run=lora))
    assert "LoRA adapter of rank 16" in text and "3e-05" in text and "batches of 4" in text
    assert "7 epochs when a loss declares none" in text
    repair = render_prompt(ProposalRequest(kind="repair", error={"reason": NO_FUNCTION, "code": ""}))
    assert NO_FUNCTION in repair and "no code" in repair
    assert "Training: full fine-tuning (all weights), AdamW" in repair  # a repair is trained the same way


@needs_openai
def test_http_reply_over_byte_cap_is_cut_and_recorded(llm_server: FakeLLM) -> None:
    tail = 'prose "quoted" \\ \u00e9\u4e2d\n' * 40_000  # escapes and multi-byte characters past the cap
    llm_server.reply(f"<answer>\n```python\n{GOOD1}```\n</answer>\n{tail}")
    p = http_proposer(llm_server.url, max_response_bytes=20_000, max_stored_response_bytes=2_000)
    (prop,) = p.propose(ProposalRequest(kind="initial", n=2))
    assert parses(prop.code) and "softplus" in prop.code
    assert any("max_response_bytes=20000" in c for c in prop.cuts)
    assert any("max_stored_response_bytes" in c for c in prop.cuts) and "cut:" in prop.notes
    assert prop.raw_response.startswith("<answer>") and prop.raw_response.endswith(" bytes]")
    assert "[truncated " in prop.raw_response and len(prop.raw_response.encode()) < 2_100
    # The next reply, within the cap: nothing cut.
    llm_server.reply(GOOD2)
    (ok,) = p.propose(ProposalRequest(kind="initial", n=1))
    assert ok.cuts == [] and "cut" not in ok.notes and ok.raw_response == GOOD2


@needs_openai
def test_http_prose_reasoning_and_control_characters(llm_server: FakeLLM) -> None:
    dirty = GOOD2.replace("0.5 *", "0.5\x00 *")
    llm_server.reply(f"<think>\nA long plan.\n</think>\n```python\n{dirty}```\x1b\n")
    llm_server.reply("\x07Only words, no code.")
    p = http_proposer(llm_server.url)
    (a,) = p.propose(ProposalRequest(kind="initial", n=1))
    assert parses(a.code) and "relu" in a.code and "\x00" not in a.raw_response and "\x1b" not in a.raw_response
    (b,) = p.propose(ProposalRequest(kind="initial", n=1))
    assert b.code == "" and b.error == NO_FUNCTION and b.raw_response == "Only words, no code."


@needs_openai
def test_http_program_keeps_max_functions(llm_server: FakeLLM) -> None:
    helpers = "".join(f"def h{i}(x):\n    return x * {i + 1}.0\n\n" for i in range(49))
    calls = " + ".join(f"h{i}(log_probs_forget).mean()" for i in range(49))
    llm_server.reply(f"```python\n{helpers}{fn('loss_fn_1', 'return ' + calls)}```")
    (prop,) = http_proposer(llm_server.url).propose(ProposalRequest(kind="initial", n=1))
    assert len(ast.parse(prop.code).body) == 8
    assert prop.cuts == ["program cut to 8 of 50 functions (max_functions=8)"] and "max_functions" in prop.notes


@needs_openai
def test_http_deadline_stops_retries(llm_server: FakeLLM) -> None:
    for _ in range(5):
        llm_server.fail(503, "overloaded")
    p = http_proposer(llm_server.url, max_retries=4, backoff_s=2.0, deadline_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(ProposerError, match=r"deadline.*would pass before retry 1.*HTTP 503"):
        p.propose(ProposalRequest(kind="initial", n=1))
    assert time.monotonic() - t0 < 1.0 and len(llm_server.received) == 1
    # A silent server: each attempt's timeout is cut to the time left.
    llm_server.responses.clear()
    llm_server.hang(10)
    llm_server.hang(10)
    p = http_proposer(llm_server.url, timeout_s=5.0, max_retries=3, backoff_s=0.01, deadline_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(ProposerError, match="deadline"):
        p.propose(ProposalRequest(kind="initial", n=1))
    assert time.monotonic() - t0 < 2.5


@pytest.mark.slow
def test_driver_records_a_reply_without_function_and_asks_for_repair(tmp_path: Path) -> None:
    from evounlearn.search.config import load_search_config
    from evounlearn.search.driver import SearchDriver
    from evounlearn.search.store import Store

    class NoFunctionFirst(Proposer):
        name = "no-function-first"

        def __init__(self) -> None:
            self.requests: list[ProposalRequest] = []
            self.offline = OfflineProposer()

        def propose(self, request: ProposalRequest) -> list[Proposal]:
            self.requests.append(request)
            if len(self.requests) == 1:
                return [Proposal(code="", raw_response="Only words.", error=NO_FUNCTION, operator="llm:initial")]
            return self.offline.propose(request)

    cfg = load_search_config(None, {
        "benchmark": "tests.fakes:FakeBenchmark", "budget": 2, "workers": 1, "baselines": [], "finalists": 1,
        "ours.initial": 2, "ours.per_generation": 1, "ours.stage1_epochs": 0,
        "unlearn.train.lora": True, "default_epochs": 4,
    })
    prop = NoFunctionFirst()
    SearchDriver(cfg, tmp_path / "run", proposer=prop).run()
    store = Store(tmp_path / "run" / "search.sqlite")
    first = store.candidates(kind="candidate")[0]
    assert first.status == "rejected" and first.error == NO_FUNCTION
    assert first.raw_response == "Only words."
    repair = [r for r in prop.requests if r.kind == "repair"]
    assert repair and repair[0].repair_info() == ("", NO_FUNCTION)
    fixed = [c for c in store.candidates(kind="candidate") if c.repair_of == first.id]
    assert fixed and fixed[0].operator == "repair"
    run = prop.requests[0].run  # the run's own settings, as the prompts state them
    assert run == RunSettings.from_train(cfg.unlearn["train"], 4) and run.lora and run.epochs == 4
    store.close()


# ------------------------------------------------------------------------------------------------
# make_proposer
# ------------------------------------------------------------------------------------------------


def test_make_proposer_kinds_and_errors() -> None:
    assert isinstance(make_proposer(), OfflineProposer)
    off = make_proposer("offline", {"sigma": 0.2, "max_depth": "4"})
    assert isinstance(off, OfflineProposer) and off.config.sigma == 0.2 and off.config.max_depth == 4
    with pytest.raises(ConfigError, match="base_url"):
        make_proposer("offline", {"base_url": "http://x"})  # strict: only the kind's own options
    assert isinstance(proposer_from_section({}), OfflineProposer)
    # Options of other kinds in one flat section are ignored.
    assert isinstance(
        proposer_from_section({"kind": "offline", "base_url": "http://x", "sigma": 0.2}), OfflineProposer
    )
    p = proposer_from_section({"kind": "http", "http": {"base_url": "http://h:1/v1/", "timeout_s": 3}})
    assert (
        isinstance(p, HTTPProposer)
        and p.url == "http://h:1/v1/chat/completions"
        and p.config.timeout_s == 3.0
    )

    @dataclass
    class Section:
        kind: str = "hf"
        path: str = "/nonexistent"

    hf = proposer_from_section(Section())
    assert type(hf).__name__ == "HFLocalProposer"
    with pytest.raises(ConfigError, match="unknown proposer kind"):
        proposer_from_section({"kind": "gpt"})
    with pytest.raises(ConfigError, match="unknown proposer kind"):
        make_proposer("gpt")
    with pytest.raises(ConfigError, match="bogus"):
        proposer_from_section({"kind": "http", "bogus": 1})


# ------------------------------------------------------------------------------------------------
# Local Hugging Face proposer on a tiny random model
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny_lm")
    corpus = [
        render_prompt(ProposalRequest(kind=k, n=2, parents=[{"code": GOOD1}] * 2))
        for k in ("initial", "refine")
    ]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], show_progress=False
    )
    tk.train_from_iterator(corpus + [GOOD1, GOOD2, "<answer></answer>"], trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=tk.get_vocab_size(),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def test_hf_local_runs_on_tiny_model(tiny_lm: Path) -> None:
    p = make_proposer("hf", {"path": str(tiny_lm), "max_new_tokens": 8})
    state = torch.random.get_rng_state()
    props = p.propose(ProposalRequest(kind="initial", n=2, seed=1))
    assert isinstance(props, list)  # garbage text: zero functions is fine
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    again = make_proposer("hf", {"path": str(tiny_lm), "max_new_tokens": 8})
    assert again.chat("hello", seed=1) == p.chat("hello", seed=1)  # seeded sampling


def test_hf_local_two_phase_and_chat_template(tiny_lm: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    tok.save_pretrained(tiny_lm / "chat")
    for f in tiny_lm.iterdir():
        if f.is_file() and not (tiny_lm / "chat" / f.name).exists():
            (tiny_lm / "chat" / f.name).write_bytes(f.read_bytes())
    p = make_proposer(
        "hf",
        {
            "path": str(tiny_lm / "chat"),
            "two_phase": True,
            "reasoning_max_new_tokens": 6,
            "answer_max_new_tokens": 6,
        }
    )
    raw = p.chat("Write a loss.", seed=0)
    assert "<answer>" in raw and raw.endswith("</answer>")
    assert isinstance(p.propose(ProposalRequest(kind="refine", n=1, parents=[{"code": GOOD1}])), list)


# ------------------------------------------------------------------------------------------------
# Offline proposer and expression trees
# ------------------------------------------------------------------------------------------------


def run_loss(
    code: str, lpf: torch.Tensor, lpr: torch.Tensor, rpf: torch.Tensor, rpr: torch.Tensor
) -> torch.Tensor:
    ns: dict[str, Any] = {"torch": torch, "F": torch.nn.functional}
    exec(compile(code, "<candidate>", "exec"), ns)  # test only: the library never executes code
    return ns["loss_fn"](lpf, lpr, rpf, rpr)


def test_offline_initial_deterministic_and_seeds() -> None:
    p = OfflineProposer()
    req = ProposalRequest(kind="initial", n=14, seed=7)
    a, b = p.propose(req), p.propose(req)
    assert [x.code for x in a] == [x.code for x in b] and len(a) == 14
    ops = [x.operator for x in a]
    for name in ("GA", "GradDiff", "NPO", "SimNPO"):
        assert f"seed:{name}" in ops
    assert len({x.code for x in a}) == 14
    c = p.propose(ProposalRequest(kind="initial", n=14, seed=8))
    assert [x.code for x in c][:10] == [x.code for x in a][:10]  # seeds first
    assert [x.code for x in c][10:] != [x.code for x in a][10:]  # random variants depend on the seed
    for x in a:
        mod = ast.parse(x.code)
        assert "def loss_fn(" in x.code and len(mod.body) == 1
        assert ast.get_docstring(mod.body[0]).startswith("epochs: ")  # type: ignore[arg-type]
        assert render.tree_from_code(x.code) is not None


def test_literature_seeds_direction_when_executed() -> None:
    g = torch.Generator().manual_seed(0)
    lpf = -(torch.rand(8, generator=g) * 3 + 0.05)
    lpr = -(torch.rand(8, generator=g) * 3 + 0.05)
    rpf = lpf + 0.3 * torch.randn(8, generator=g)
    rpr = lpr + 0.3 * torch.randn(8, generator=g)
    seeds = {x.operator: x.code for x in OfflineProposer().propose(ProposalRequest(kind="initial", n=10))}
    assert "forget_term = log_probs_forget\n" in seeds["seed:GA"] and "retain_term" not in seeds["seed:GA"]
    assert "20.0 * F.softplus(0.1 * d_forget)" in seeds["seed:NPO"]
    for op, code in seeds.items():
        f = lpf.clone().requires_grad_(True)
        r = lpr.clone().requires_grad_(True)
        loss = run_loss(code, f, r, rpf, rpr)
        assert loss.dim() == 0 and torch.isfinite(loss), op
        gf, gr = torch.autograd.grad(loss, (f, r), allow_unused=True)
        assert gf is not None and gf.sum() > 0 and (gf >= 0).all(), op
        if op != "seed:GA":
            assert gr is not None and gr.sum() < 0, op
        tree = render.tree_from_code(code)
        assert tree is not None
        assert torch.allclose(loss, interpret.loss_value(tree, lpf, lpr, rpf, rpr))


def test_tree_roundtrip_and_tamper_detection() -> None:
    rng = random.Random(0)
    for _ in range(30):
        t = operators.random_tree(rng)
        code = render.render(t)
        assert render.tree_from_code(code) == t
        assert loss_tree.LossTree.from_json(t.to_json()) == t
        assert render.tree_from_code(render.render(t, "extended")) == t
    code = render.render(seed_trees.SEEDS[2][1])
    edited = code.replace("20.0 * F.softplus", "30.0 * F.softplus")
    assert render.tree_from_code(edited) is None  # stale tree comment not trusted
    assert render.tree_from_code(edited, verify=False) == seed_trees.SEEDS[2][1]
    assert render.tree_from_code(code.replace('"lpr"', '"evil"')) is None


def test_extended_render_matches_faithful() -> None:
    g = torch.Generator().manual_seed(1)
    mask_f = (torch.rand(4, 6, generator=g) > 0.3).float()
    mask_r = (torch.rand(4, 6, generator=g) > 0.3).float()
    mask_f[:, 0] = mask_r[:, 0] = 1.0
    tok = [-torch.rand(4, 6, generator=g) * m for m in (mask_f, mask_r, mask_f, mask_r)]
    means = [(t * m).sum(-1) / m.sum(-1) for t, m in zip(tok, (mask_f, mask_r, mask_f, mask_r))]
    for _, tree in seed_trees.SEEDS:
        ns: dict[str, Any] = {"torch": torch, "F": torch.nn.functional}
        exec(render.render(tree, "extended"), ns)
        got = ns["loss_fn"](tok[0], mask_f, tok[1], mask_r, tok[2], tok[3])
        assert torch.allclose(got, run_loss(render.render(tree), *means))


def test_offline_refine_crossover_tune_repair() -> None:
    p = OfflineProposer()
    seeds = p.propose(ProposalRequest(kind="initial", n=10, seed=0))
    npo, hinge = seeds[2], seeds[4]
    parent = {"code": npo.code, "fitness": 0.5, "id": 3}
    refine = p.propose(ProposalRequest(kind="refine", n=6, seed=1, parents=[parent]))
    assert len(refine) == 6 and all(x.code != npo.code for x in refine) and len({x.code for x in refine}) == 6
    assert all(x.parents == [3] for x in refine)
    assert p.propose(ProposalRequest(kind="refine", n=6, seed=1, parents=[parent]))[0].code == refine[0].code
    cross = p.propose(
        ProposalRequest(kind="crossover", n=4, seed=1, parents=[parent, {"code": hinge.code, "id": 4}])
    )
    assert len(cross) == 4 and all(x.operator == "crossover" and x.parents == [3, 4] for x in cross)
    assert all(x.code not in (npo.code, hinge.code) for x in cross)
    tune = p.propose(ProposalRequest(kind="tune", n=3, seed=1, parents=[parent]))
    t0 = render.tree_from_code(npo.code)
    for x in tune:
        t = render.tree_from_code(x.code)
        assert x.operator == "tune_constants" and t is not None and x.code != npo.code
        # Same structure: only constants (and epochs) differ.
        assert loss_tree.map_constants(t.forget, lambda c: 1.0) == loss_tree.map_constants(t0.forget, lambda c: 1.0)  # type: ignore[union-attr]
    repair = p.propose(
        ProposalRequest(kind="repair", n=2, seed=1, error={"reason": "loss not finite", "code": hinge.code})
    )
    assert len(repair) == 2 and all(x.operator.startswith("repair:") for x in repair)
    # Every offline proposal satisfies its own numeric check.
    for x in refine + cross + tune + repair:
        tree = render.tree_from_code(x.code)
        assert tree is not None and interpret.check_tree(tree) is None


def test_offline_foreign_parent_constant_tuning() -> None:
    foreign = (
        f"def loss_fn({SIG}):\n"
        '    """epochs: 4"""\n'
        "    # a comment that must survive\n"
        "    d = log_probs_forget - ref_log_probs_forget\n"
        "    return 1.5 * torch.relu(d + 0.25).mean() - 2 * log_probs_retain.mean(dim=0)\n"
    )
    p = OfflineProposer()
    out = p.propose(ProposalRequest(kind="refine", n=3, seed=0, parents=[{"code": foreign}]))
    assert len(out) == 3 and all(x.operator == "tune_ast" for x in out)
    strip = ast.NodeTransformer()

    def shape(code: str) -> str:
        tree = ast.parse(code)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
                node.value = 0
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                node.value = ""
        return ast.dump(strip.visit(tree))

    for x in out:
        assert x.code != foreign and "# a comment that must survive" in x.code and "dim=0" in x.code
        assert shape(x.code) == shape(foreign)
    # A crossover with a foreign parent and a repair of foreign code still produce candidates.
    tree_parent = {"code": render.render(seed_trees.SEEDS[1][1])}
    assert p.propose(ProposalRequest(kind="crossover", n=2, parents=[{"code": foreign}, tree_parent]))
    fresh = p.propose(
        ProposalRequest(kind="repair", n=2, error={"reason": "SyntaxError", "code": "def loss_fn(:"})
    )
    assert len(fresh) == 2 and all("fresh" in x.operator for x in fresh)
    # Nothing tunable: no proposal rather than a copy of the parent.
    assert (
        p.propose(
            ProposalRequest(kind="tune", n=2, parents=[{"code": "def loss_fn(a, b):\n    return a.mean()\n"}])
        )
        == []
    )


def test_prompt_states_the_fitness_the_search_optimises() -> None:
    from evounlearn.search.proposers.llm.prompts import benchmark_notes

    calibrated = benchmark_notes("generated", "calibrated")
    assert "Fitness (calibrated" in calibrated and "holdout" in calibrated
    assert "Fitness (evomu" in benchmark_notes("generated", "evomu")
    assert calibrated.count("Fitness") == 1  # the notes themselves describe the data only
