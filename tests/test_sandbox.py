"""The EvoMU safety layer: static whitelist, probe validation, isolated workers.

Every hostile or broken candidate below is rejected statically or contained in the worker with a
clear reason, and the driver keeps working afterwards.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from evounlearn.sandbox import (
    CPU_LIMIT,
    CRASH,
    MEMORY_LIMIT,
    WALL_LIMIT,
    WORKER_ENV,
    IsolatedWorker,
    SandboxError,
    WorkerPool,
    check_function,
    check_program,
    compile_function,
    parse_epochs,
    policy,
    split_functions,
    validate_candidate,
)
from evounlearn.search.validation import validate_in_worker

from .worker_jobs import DIAG, TRUSTED

SIG = (
    "def loss_fn(log_probs_forget, log_probs_retain, ref_log_probs_forget=None, ref_log_probs_retain=None):\n"
)
SIG2 = SIG.replace("loss_fn(", "loss_fn_2(")


def loss(body: str, sig: str = SIG) -> str:
    lines = body.strip("\n").splitlines()
    return sig + "\n".join("    " + ln for ln in lines) + "\n"


GA = loss("return log_probs_forget.mean()")
GRAD_DIFF = loss("return log_probs_forget.mean() - log_probs_retain.mean()")
NPO = loss(
    '''
"""epochs: 5"""
beta = 0.1
npo = -(2.0 / beta) * F.logsigmoid(-beta * (log_probs_forget - ref_log_probs_forget)).mean()
return npo - log_probs_retain.mean()
'''
)
SIMNPO = loss(
    """
beta = 2.5
gamma = 0.0
return -(2.0 / beta) * torch.nn.functional.logsigmoid(-beta * log_probs_forget - gamma).mean() - log_probs_retain.mean()
"""
)


@pytest.fixture(scope="module")
def worker():
    w = IsolatedWorker(wall_limit_s=30, cpu_limit_s=20, memory_limit_mb=1024, trusted_prefixes=TRUSTED)
    yield w
    w.close()


def one(records: list[dict], name: str = "loss_fn") -> dict:
    found = [r for r in records if r["name"] == name]
    assert found, records
    return found[0]


# --------------------------------------------------------------------------------------------
# the hostile / broken corpus

STATIC_CORPUS = [
    ("import", loss("import os\nreturn log_probs_forget.mean()"), "import not allowed"),
    ("from-import", loss("from os import path\nreturn log_probs_forget.mean()"), "import not allowed"),
    (
        "__import__",
        loss("__import__('os').system('ls')\nreturn log_probs_forget.mean()"),
        "dunder name '__import__'",
    ),
    (
        "subclasses",
        loss("c = ().__class__.__bases__[0].__subclasses__()\nreturn log_probs_forget.mean()"),
        "dunder attribute '__",
    ),
    ("open", loss("open('/etc/passwd')\nreturn log_probs_forget.mean()"), "forbidden name 'open'"),
    (
        "getattr",
        loss("g = getattr(torch, 'load')\nreturn log_probs_forget.mean()"),
        "forbidden name 'getattr'",
    ),
    (
        "torch.load",
        loss("m = torch.load\nreturn log_probs_forget.mean()"),
        "attribute 'torch.load' not allowed",
    ),
    (
        "torch.save",
        loss("torch.save(log_probs_forget, 0)\nreturn log_probs_forget.mean()"),
        "attribute 'torch.save' not allowed",
    ),
    ("exec", loss("exec(0)\nreturn log_probs_forget.mean()"), "forbidden name 'exec'"),
    ("eval", loss("return eval(0)"), "forbidden name 'eval'"),
    ("compile", loss("c = compile(0, 0, 0)\nreturn log_probs_forget.mean()"), "forbidden name 'compile'"),
    ("globals", loss("g = globals()\nreturn log_probs_forget.mean()"), "forbidden name 'globals'"),
    ("type", loss("t = type(log_probs_forget)\nreturn log_probs_forget.mean()"), "forbidden name 'type'"),
    ("lambda", loss("f = lambda x: x\nreturn f(log_probs_forget).mean()"), "lambda not allowed"),
    ("listcomp", loss("xs = [x for x in log_probs_forget]\nreturn log_probs_forget.mean()"), "comprehension"),
    ("genexp", loss("return sum(x for x in log_probs_forget)"), "generator expression not allowed"),
    ("while", loss("while True:\n    pass\nreturn log_probs_forget.mean()"), "while loop not allowed"),
    (
        "huge-range",
        loss("for i in range(10**9):\n    pass\nreturn log_probs_forget.mean()"),
        "integer constant 1000000000 too large",
    ),
    (
        "huge-range-float",
        loss("for i in range(int(1e9)):\n    pass\nreturn log_probs_forget.mean()"),
        "too large",
    ),
    ("huge-zeros", loss("z = torch.zeros(10**10)\nreturn log_probs_forget.mean()"), "too large"),
    ("grad_fn", loss("g = log_probs_forget.grad_fn\nreturn log_probs_forget.mean()"), "attribute '.grad_fn'"),
    (
        "torch.__dict__",
        loss("d = torch.__dict__\nreturn log_probs_forget.mean()"),
        "dunder attribute '__dict__'",
    ),
    (
        "F.__builtins__",
        loss("b = F.__builtins__\nreturn log_probs_forget.mean()"),
        "dunder attribute '__builtins__'",
    ),
    ("torch._C", loss("c = torch._C\nreturn log_probs_forget.mean()"), "private attribute '_C'"),
    (
        "format",
        loss("s = '{0.__class__}'.format(log_probs_forget)\nreturn log_probs_forget.mean()"),
        "string constant",
    ),
    ("f-string", loss("s = f'{log_probs_forget}'\nreturn log_probs_forget.mean()"), "f-string not allowed"),
    ("print", loss("print(log_probs_forget)\nreturn log_probs_forget.mean()"), "forbidden name 'print'"),
    (
        "with",
        loss("with torch.no_grad():\n    pass\nreturn log_probs_forget.mean()"),
        "with statement not allowed",
    ),
    (
        "try",
        loss("try:\n    pass\nexcept Exception:\n    pass\nreturn log_probs_forget.mean()"),
        "try statement",
    ),
    ("global", loss("global X\nreturn log_probs_forget.mean()"), "global statement not allowed"),
    ("yield", loss("yield log_probs_forget\nreturn log_probs_forget.mean()"), "yield not allowed"),
    (
        "star-args",
        loss("a = (log_probs_forget,)\nreturn torch.stack(*a).mean()"),
        "star-arguments not allowed",
    ),
    ("class", loss("class A:\n    pass\nreturn log_probs_forget.mean()"), "class definition not allowed"),
    ("os._exit", loss("os._exit(0)\nreturn log_probs_forget.mean()"), "forbidden name 'os'"),
    (
        "module-alias",
        loss("t = torch\nreturn t.exp(log_probs_forget).mean()"),
        "module 'torch' may only be used",
    ),
    ("in-place", loss("log_probs_forget.add_(1.0)\nreturn log_probs_forget.mean()"), "in-place method"),
    ("item-assign", loss("log_probs_forget[0] = 0.0\nreturn log_probs_forget.mean()"), "item assignment"),
    (
        "out=",
        loss("torch.add(log_probs_forget, 1.0, out=log_probs_retain)\nreturn log_probs_forget.mean()"),
        "'out'",
    ),
    (
        "inplace=",
        loss("y = F.relu(log_probs_forget, inplace=True)\nreturn log_probs_forget.mean()"),
        "keyword 'inplace' not allowed",
    ),
    (
        "positional inplace",
        loss("y = F.relu(log_probs_forget, True)\nreturn log_probs_forget.mean()"),
        "positional argument 2 of 'F.relu' is its in-place flag 'inplace'",
    ),
    (
        "positional inplace (hardtanh)",
        loss("y = F.hardtanh(log_probs_forget, 0.0, 0.0, True)\nreturn log_probs_forget.mean()"),
        "positional argument 4 of 'F.hardtanh' is its in-place flag",
    ),
    (
        "positional inplace (full path)",
        loss("y = torch.nn.functional.elu(log_probs_forget, 1.0, True)\nreturn log_probs_forget.mean()"),
        "positional argument 3 of 'F.elu' is its in-place flag",
    ),
    (
        "positional out (normalize)",
        loss("y = F.normalize(log_probs_retain, 2.0, 0, 1e-12, log_probs_forget)\nreturn log_probs_forget.mean()"),
        "positional argument 5 of 'F.normalize' is its output 'out'",
    ),
    (
        "positional out (torch.norm)",
        loss("y = torch.norm(log_probs_retain, 2, 0, False, log_probs_forget)\nreturn log_probs_forget.mean()"),
        "positional argument 5 of 'torch.norm' is its output 'out'",
    ),
    (
        "out= (clamp)",
        loss("y = torch.clamp(log_probs_retain, -1.0, 0.0, out=log_probs_forget)\nreturn log_probs_forget.mean()"),
        "keyword 'out' not allowed",
    ),
    (
        "in-place function alias",
        loss("r = F.relu\ny = r(log_probs_forget, True)\nreturn log_probs_forget.mean()"),
        "function 'F.relu' may only be called",
    ),
    ("walrus", loss("return (y := log_probs_forget).mean()"), ":="),
    ("tensor .data", loss("return log_probs_forget.data.mean()"), "attribute '.data'"),
    ("decorator", "@torch.no_grad()\n" + GA, "decorators not allowed"),
    ("no-return", loss("x = log_probs_forget.mean()"), "no 'return <value>'"),
    ("wrong-signature", "def loss_fn(a, b):\n    return a.mean()\n", "wrong signature"),
    ("varargs", "def loss_fn(*args):\n    return args[0].mean()\n", "wrong signature"),
    ("bad-default", GA.replace("ref_log_probs_forget=None", "ref_log_probs_forget=open"), "wrong signature"),
    ("self-recursion", loss("return loss_fn(log_probs_forget, log_probs_retain)"), "recursive"),
    (
        "helper-recursion",
        "def h1(x):\n    return h2(x)\n\ndef h2(x):\n    return h1(x)\n\n"
        + loss("return h1(log_probs_forget).mean()"),
        "recursive helper calls not allowed",
    ),
    (
        "bad-helper",
        "def h(x):\n    import os\n    return x\n\n" + loss("return h(log_probs_forget).mean()"),
        "helper 'h'",
    ),
    ("too-long", loss("x = log_probs_forget.mean()\n" * 200 + "return x"), "function too long"),
    (
        "deep-nesting",
        loss("return " + "torch.abs(" * 60 + "log_probs_forget" + ")" * 60 + ".mean()"),
        "too deeply",
    ),
    ("program-too-long", GA + "\n" * 30_000, "program too long"),
]


@pytest.mark.parametrize("label,source,expected", STATIC_CORPUS, ids=[c[0] for c in STATIC_CORPUS])
def test_static_corpus_rejected(label: str, source: str, expected: str) -> None:
    pc = check_program(source)
    reason = pc.error or pc.reasons.get("loss_fn", "")
    assert reason != "ok" and expected in reason, (label, reason)
    program_level = ("function too", "expression nested", "wrong signature", "recursive helper", "helper '")
    assert pc.error is not None or reason.startswith(("line ", *program_level)), reason


RUNTIME_CORPUS = [
    ("log(-1) nan", loss("return torch.log(log_probs_forget).mean()"), "non-finite loss"),
    ("1/0", loss("return 1 / 0 * log_probs_forget.mean()"), "ZeroDivisionError"),
    ("vector", loss("return log_probs_forget * 2.0"), "returns a tensor of shape ["),
    ("tuple", loss("return log_probs_forget.mean(), log_probs_retain.mean()"), "returns tuple"),
    ("None", loss("return None"), "returns NoneType"),
    ("python float", loss("return 1.5"), "returns float"),
    ("detached", loss("return log_probs_forget.detach().mean()"), "no gradient"),
    ("constant", loss("return torch.tensor(1.0)"), "no gradient"),
    ("retain only", loss("return -log_probs_retain.mean()"), "zero gradient w.r.t. log_probs_forget"),
    (
        "dead at init",
        loss("return F.relu(log_probs_forget - ref_log_probs_forget).mean()"),
        "reference == current",
    ),
    ("wrong direction forget", loss("return -F.softplus(log_probs_forget).mean()"), "wrong direction"),
    (
        "wrong direction retain",
        loss("return log_probs_forget.mean() + log_probs_retain.mean()"),
        "retain log-probs",
    ),
    ("variance", loss("return log_probs_forget.var()"), "wrong direction"),
    (
        "order dependent",
        loss("return log_probs_forget[0] + log_probs_forget.mean()"),
        "order of the batch rows",
    ),
    (
        "nan when forgotten",
        loss("return log_probs_forget.mean() + torch.log(log_probs_forget + 8.0).mean()"),
        "non-finite loss (nan) on probe '",  # 'forgotten', or 'moved' (forget rows down to -9)
    ),
    (
        "runtime range",
        loss("for i in range(log_probs_forget.numel() * 1000000):\n    pass\nreturn log_probs_forget.mean()"),
        "exceeds the sandbox limit",
    ),
    (
        "huge allocation",
        loss("z = torch.zeros(100000, 100000)\nreturn log_probs_forget.mean() + z.sum()"),
        "memory limit",
    ),
    ("int result", loss("return log_probs_forget.mean().long()"), "instead of a floating-point scalar"),
]


@pytest.mark.slow
@pytest.mark.parametrize("label,source,expected", RUNTIME_CORPUS, ids=[c[0] for c in RUNTIME_CORPUS])
def test_runtime_corpus_contained(worker: IsolatedWorker, label: str, source: str, expected: str) -> None:
    assert check_program(source).reasons["loss_fn"] == "ok"  # passes the static check
    rec = one(validate_in_worker(source, "faithful", worker))
    assert not rec["ok"] and expected in rec["reason"], (label, rec["reason"])


@pytest.mark.slow
def test_runaway_loss_stopped_by_cpu_or_wall_limit(worker: IsolatedWorker) -> None:
    src = loss(
        """
x = log_probs_forget.mean()
for i in range(1000000):
    y = torch.ones(200, 200).exp().sum()
return x
"""
    )
    assert check_program(src).reasons["loss_fn"] == "ok"
    t0 = time.monotonic()
    rec = one(validate_in_worker(src, "faithful", worker, cpu_limit_s=2, wall_limit_s=8))
    assert not rec["ok"]
    assert rec["reason"].startswith((CPU_LIMIT, WALL_LIMIT)), rec["reason"]
    assert time.monotonic() - t0 < 15
    # the worker was replaced and works
    assert one(validate_in_worker(GA, "faithful", worker))["ok"]


@pytest.mark.slow
def test_one_broken_function_does_not_drop_the_others(worker: IsolatedWorker) -> None:
    src = loss("return log_probs_forget.mean(") + "\n" + GRAD_DIFF.replace("loss_fn(", "loss_fn_2(")
    records = validate_in_worker(src, "faithful", worker, all_functions=True)
    assert not one(records, "loss_fn")["ok"] and "syntax error" in one(records, "loss_fn")["reason"]
    assert one(records, "loss_fn_2")["ok"]
    # a runaway candidate next to a good one: only the runaway is rejected
    runaway = loss(
        "for i in range(1000000):\n    y = torch.ones(200, 200).exp().sum()\nreturn log_probs_forget.mean()"
    )
    records = validate_in_worker(
        runaway + "\n" + GA.replace("loss_fn(", "loss_fn_2("),
        "faithful",
        worker,
        all_functions=True,
        cpu_limit_s=1,
        wall_limit_s=5,
    )
    assert not one(records, "loss_fn")["ok"] and one(records, "loss_fn_2")["ok"]


@pytest.mark.slow
def test_driver_survives_corpus_and_valid_loss_still_validates(worker: IsolatedWorker) -> None:
    everything = [c[1] for c in STATIC_CORPUS + RUNTIME_CORPUS]
    records = validate_in_worker(
        "\n\n".join(s.replace("loss_fn(", f"loss_fn_{i}(") for i, s in enumerate(everything[:12])),
        "faithful",
        worker,
        all_functions=True,
    )
    assert records and not any(r["ok"] for r in records)
    assert os.getcwd() and os.environ.get(WORKER_ENV) is None
    rec = one(validate_in_worker(NPO, "faithful", worker))
    assert rec["ok"], rec["reason"]


# --------------------------------------------------------------------------------------------
# valid losses, fingerprints, epochs


@pytest.mark.slow
@pytest.mark.parametrize("name,src", [("GA", GA), ("GradDiff", GRAD_DIFF), ("NPO", NPO), ("SimNPO", SIMNPO)])
def test_literature_losses_pass(worker: IsolatedWorker, name: str, src: str) -> None:
    rec = one(validate_in_worker(src, "faithful", worker))
    assert rec["ok"], (name, rec["reason"])
    assert rec["fingerprint"] and len(rec["probe_values"]) == 3
    assert rec["program"].strip() == src.strip()


@pytest.mark.slow
def test_helpers_and_annotations_accepted(worker: IsolatedWorker) -> None:
    src = (
        "import torch\nimport torch.nn.functional as F\n\nBETA = 0.5\n\n"
        'def _helper_margin(x, m=0.5):\n    """A helper."""\n    return F.softplus(x + m)\n\n'
        "def loss_fn(log_probs_forget: torch.Tensor, log_probs_retain: torch.Tensor,\n"
        "            ref_log_probs_forget=None, ref_log_probs_retain=None) -> torch.Tensor:\n"
        '    """epochs: 3"""\n'
        "    total = _helper_margin(log_probs_forget - ref_log_probs_forget).mean()\n"
        "    total += -log_probs_retain.mean() * math.log(2.0)\n"
        "    for k in range(2):\n        total = total + 0.0 * k\n"
        "    return total\n"
    )
    rec = one(validate_in_worker(src, "faithful", worker))
    assert rec["ok"], rec["reason"]
    assert rec["epochs"] == 3 and rec["helpers"] == ["_helper_margin"]
    assert rec["program"].index("def _helper_margin") < rec["program"].index("def loss_fn")


@pytest.mark.slow
def test_fingerprint_equates_same_function_and_separates_others(worker: IsolatedWorker) -> None:
    variants = {
        "loss_fn_a": "return 2 * log_probs_forget.mean() - log_probs_retain.mean()",
        "loss_fn_b": "m = log_probs_forget.mean()\nreturn m + m - log_probs_retain.sum() / log_probs_retain.shape[0]",
        "loss_fn_c": "x = log_probs_forget\nreturn (x + x).mean() + (-log_probs_retain).mean()",
        "loss_fn_d": "return 3 * log_probs_forget.mean() - log_probs_retain.mean()",
        "loss_fn_e": "return F.softplus(log_probs_forget).mean()",
    }
    src = "\n".join(loss(b, SIG.replace("loss_fn(", f"{n}(")) for n, b in variants.items())
    recs = {r["name"]: r for r in validate_in_worker(src, "faithful", worker, all_functions=True)}
    assert all(r["ok"] for r in recs.values()), recs
    fp = {n: r["fingerprint"] for n, r in recs.items()}
    assert fp["loss_fn_a"] == fp["loss_fn_b"] == fp["loss_fn_c"]
    assert len({fp["loss_fn_a"], fp["loss_fn_d"], fp["loss_fn_e"]}) == 3


def test_validate_candidate_in_process_on_trusted_functions() -> None:
    import torch.nn.functional as F

    def npo(lpf, lpr, rf=None, rr=None):
        return -(2 / 0.1) * F.logsigmoid(-0.1 * (lpf - rf)).mean() - lpr.mean()

    def npo_beta2(lpf, lpr, rf=None, rr=None):
        return -(2 / 0.2) * F.logsigmoid(-0.2 * (lpf - rf)).mean() - lpr.mean()

    a, b = validate_candidate(npo), validate_candidate(npo_beta2)
    assert a.ok and b.ok and a.fingerprint != b.fingerprint
    assert a.grad_forget > 0 and a.grad_retain < 0 and a.uses_retain
    ga = validate_candidate(lambda lpf, lpr, rf=None, rr=None: lpf.mean())
    assert ga.ok and not ga.uses_retain


@pytest.mark.slow
def test_extended_interface(worker: IsolatedWorker) -> None:
    sig = (
        "def loss_fn(tok_logp_forget, mask_forget, tok_logp_retain, mask_retain,"
        " ref_tok_logp_forget=None, ref_tok_logp_retain=None):\n"
    )
    good = loss(
        """
f = (tok_logp_forget * mask_forget).sum(dim=1) / mask_forget.sum(dim=1)
r = (tok_logp_retain * mask_retain).sum(dim=1) / mask_retain.sum(dim=1)
delta = (tok_logp_forget - ref_tok_logp_forget) * mask_forget
return F.softplus(delta.sum(dim=1)).mean() + 0.1 * f.mean() - r.mean()
""",
        sig,
    )
    rec = one(validate_in_worker(good, "extended", worker))
    assert rec["ok"], rec["reason"]
    bad = loss("return -(tok_logp_forget * mask_forget).sum()", sig)
    assert "wrong direction" in one(validate_in_worker(bad, "extended", worker))["reason"]
    assert "wrong signature" in one(validate_in_worker(GA, "extended", worker))["reason"]


def test_parse_epochs() -> None:
    assert parse_epochs(NPO) == 5
    assert parse_epochs(GA) is None
    assert parse_epochs(loss('"""epochs: 50"""\nreturn log_probs_forget.mean()')) == 10
    assert parse_epochs(loss('"""Epochs = 0"""\nreturn log_probs_forget.mean()')) == 1
    assert parse_epochs(loss('"""A loss.\n\nepochs: 3"""\nreturn log_probs_forget.mean()')) is None
    assert parse_epochs(loss('"""epochs: 4"""\nreturn log_probs_forget.mean(')) == 4  # syntax error: regex


def test_split_functions_recovers_from_syntax_errors() -> None:
    src = "```python\n" + loss("return (") + "\n" + GA.replace("loss_fn(", "loss_fn_2(") + "print(1)\n```\n"
    funcs = split_functions(src)
    assert [f.name for f in funcs] == ["loss_fn", "loss_fn_2"]
    assert funcs[0].error and "syntax error" in funcs[0].error
    assert funcs[1].error is None and "print" not in funcs[1].source and funcs[1].lineno == 5
    ok = split_functions(GA + "\n\ndef helper(x):\n    return x\n")
    assert [(f.name, f.lineno) for f in ok] == [("loss_fn", 1), ("helper", 5)]


@pytest.mark.parametrize("separator", ["\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
def test_split_functions_cuts_lines_where_the_parser_does(separator: str) -> None:
    # str.splitlines() would also break at these characters, shifting every later function by a
    # line: the form feed in the helper's comment would hide loss_fn's return line
    helper = f"def h(x):\n    return x  # a comment {separator} with a separator\n\n"
    body = "y = h(log_probs_forget)\nreturn y.mean()"
    src = helper + loss(body)
    funcs = split_functions(src)
    assert [(f.name, f.lineno) for f in funcs] == [("h", 1), ("loss_fn", 4)]
    assert funcs[0].source == helper.rstrip("\n") + "\n"
    assert funcs[1].source == loss(body)
    pc = check_program(src)
    assert pc.reasons["loss_fn"] == "ok", pc.reasons
    assert pc.program_text("loss_fn").endswith("    return y.mean()\n")
    # the recovery path (a program that does not parse) cuts lines the same way
    broken = split_functions(loss("return (") + "\n" + src)
    assert [f.name for f in broken] == ["loss_fn", "h", "loss_fn"]
    assert broken[2].source == loss(body) and broken[2].error is None


def test_output_parameters_come_from_the_signatures() -> None:
    assert policy.output_parameter("F.relu") == (1, "inplace")
    assert policy.output_parameter("F.hardtanh") == (3, "inplace")
    assert policy.output_parameter("F.normalize") == (4, "out")
    assert policy.output_parameter("torch.norm") == (4, "out")
    for path in ("torch.clamp", "torch.add", "F.softplus", "Tensor.clamp", "math.log"):
        assert policy.output_parameter(path) is None, path  # `out` keyword-only, or none at all
    # every allowed Python-level function with an `inplace` / `out` parameter is covered
    import inspect

    import torch.nn.functional as F

    for name in sorted(policy.F_FUNCTIONS):
        try:
            params = list(inspect.signature(getattr(F, name)).parameters)
        except (TypeError, ValueError):
            continue
        if policy.OUTPUT_PARAMETERS & set(params):
            assert policy.output_parameter(f"F.{name}") is not None, name
    # the same functions without the flag stay allowed
    ok = loss("y = F.relu(log_probs_forget) + F.elu(log_probs_forget, 1.0)\nreturn y.mean()")
    assert check_program(ok).reasons["loss_fn"] == "ok"
    assert check_program(loss("return F.hardtanh(log_probs_forget, -1.0, 0.0).mean()")).reasons["loss_fn"] == "ok"


def test_check_function_reports_line_numbers_and_roles() -> None:
    res = check_function(loss("x = 1\nreturn eval(x)"), line_offset=10)
    assert not res.ok and res.reason == "line 13: forbidden name 'eval'"
    assert check_function("def helper(x, y=2.0):\n    return x * y\n").ok
    assert check_function(GA, helpers=("h",)).calls == ()
    assert check_function(loss("return h(log_probs_forget)"), helpers=("h",)).calls == ("h",)


def test_whitelisted_names_exist() -> None:
    import torch.nn.functional as F

    for n in policy.TORCH_FUNCTIONS | policy.TORCH_CONSTANTS:
        assert hasattr(torch, n), n
    for n in policy.F_FUNCTIONS:
        assert hasattr(F, n), n
    for n in policy.MATH_ATTRIBUTES:
        assert hasattr(math, n), n
    tensor_attrs = set(dir(torch.Tensor))
    for n in policy.TENSOR_ATTRIBUTES - {"values", "indices", "eps", "tiny"}:
        assert n in tensor_attrs, n


def test_compile_refuses_to_run_in_the_driver() -> None:
    with pytest.raises(SandboxError, match="isolated worker"):
        compile_function(GA)
    fn = compile_function(GA, allow_in_process=True)  # trusted: explicit opt-in
    assert float(fn(torch.tensor([-1.0, -3.0]), torch.tensor([-1.0]))) == -2.0
    g = fn.__globals__
    assert set(g["__builtins__"]) <= set(policy.SAFE_BUILTIN_NAMES) | {"True", "False", "None", "__import__"}
    with pytest.raises(ImportError):
        g["__builtins__"]["__import__"]("os")
    assert {k for k in g if not k.startswith("__")} == {"torch", "F", "math", "loss_fn"}
    with pytest.raises(SandboxError, match="forbidden name 'open'"):
        compile_function(loss("return open(0)"), allow_in_process=True)
    # x += y does not modify the caller's tensor
    fn = compile_function(
        loss("log_probs_forget += 1.0\nreturn log_probs_forget.mean()"), allow_in_process=True
    )
    x = torch.zeros(3)
    fn(x, x)
    assert float(x.sum()) == 0.0


# --------------------------------------------------------------------------------------------
# the worker


@pytest.mark.slow
def test_worker_limits_and_restart(worker: IsolatedWorker) -> None:
    info = worker.run(DIAG, {"action": "info"})
    assert info.ok and info.value["marker"] == "1" and info.value["pgid"] == info.value["pid"]
    assert info.value["cwd"] != os.getcwd() and "evounlearn-worker-" in info.value["cwd"]
    pid0 = info.value["pid"]

    res = worker.run(DIAG, {"action": "sleep", "seconds": 30}, wall_limit_s=1.0)
    assert not res.ok and res.killed_reason == WALL_LIMIT and res.wall_seconds < 5
    after = worker.run(DIAG, {"action": "info"})
    assert after.ok and after.value["pid"] != pid0  # restarted transparently

    res = worker.run(DIAG, {"action": "spin", "seconds": 30}, cpu_limit_s=1, wall_limit_s=20)
    assert res.killed_reason == CPU_LIMIT, res

    res = worker.run(DIAG, {"action": "alloc", "megabytes": 50_000})  # 50 GB
    assert res.killed_reason == MEMORY_LIMIT, res
    assert worker.run(DIAG, {"action": "alloc", "megabytes": 64}).ok

    for action, expected in (("segfault", "SIGSEGV"), ("exit", "code 3")):
        res = worker.run(DIAG, {"action": action})
        assert res.killed_reason == CRASH and expected in (res.error or ""), res
    res = worker.run(DIAG, {"action": "recursion"})
    assert not res.ok and res.killed_reason is None and res.error.startswith("RecursionError")
    res = worker.run(DIAG, {"action": "raise"})
    assert not res.ok and res.error.startswith("ValueError: diagnostic failure")
    assert worker.run(DIAG, {"action": "echo", "value": [1, 2]}).value == [1, 2]
    assert worker.restarts >= 5
    with pytest.raises(ValueError, match="trusted prefix"):
        worker.run("os:system", {"command": "true"})


@pytest.mark.slow
def test_pool_runs_jobs_in_parallel() -> None:
    with WorkerPool(2, wall_limit_s=20, cpu_limit_s=20, memory_limit_mb=512, trusted_prefixes=TRUSTED) as pool:
        pool.start()
        t0 = time.monotonic()
        futures = [pool.submit(DIAG, {"action": "sleep", "seconds": 1.0}) for _ in range(2)]
        results = [f.result() for f in futures]
        elapsed = time.monotonic() - t0
        assert all(r.ok for r in results)
        assert elapsed < 1.8, elapsed
        pids = pool.map(DIAG, [{"action": "info"}] * 2)
        assert all(r.ok for r in pids)
        recs = validate_in_worker(GA, "faithful", pool)
        assert one(recs)["ok"]


@pytest.mark.slow
def test_rss_watchdog_without_rlimit() -> None:
    with IsolatedWorker(
        wall_limit_s=30, cpu_limit_s=30, memory_limit_mb=256, rlimit_data=False, trusted_prefixes=TRUSTED
    ) as w:
        res = w.run(DIAG, {"action": "alloc", "megabytes": 4000})
        assert res.killed_reason == MEMORY_LIMIT and "worker killed" in (res.error or ""), res
        assert w.run(DIAG, {"action": "echo", "value": 1}).value == 1


def _fresh_python(code: str) -> list[str]:
    """The stdout lines of `code` run in a fresh interpreter (this checkout's sources and tests
    importable): for what depends on process state this test process already has (a running fork
    server, imported modules)."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "src"), str(root)]))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


@pytest.mark.slow
def test_a_worker_env_is_set_in_its_child_only() -> None:
    """`IsolatedWorker(env=...)` (a Ray actor's slot: its own CUDA_VISIBLE_DEVICES) reaches the
    child, on every restart, and leaves this process's environment alone."""
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    with IsolatedWorker(wall_limit_s=60, cpu_limit_s=30, memory_limit_mb=512, trusted_prefixes=TRUSTED,
                        env={"CUDA_VISIBLE_DEVICES": "3"}) as w:
        first = w.run(DIAG, {"action": "info"})
        w.run(DIAG, {"action": "exit"})  # the worker restarts for the next job
        again = w.run(DIAG, {"action": "info"})
    assert first.value["visible_devices"] == again.value["visible_devices"] == "3"
    assert first.value["pid"] != again.value["pid"] and os.environ.get("CUDA_VISIBLE_DEVICES") == before


@pytest.mark.slow
@pytest.mark.parametrize("in_actor", [False, True])
def test_a_ray_actor_s_workers_do_not_import_its_main_script(tmp_path: Path, in_actor: bool) -> None:
    """A driver started as a script has it imported again (as `__mp_main__`, its main block not
    run) in its workers, as in any multiprocessing child; a Ray actor (whose script is Ray's
    worker process) turns that off for its own process (`no_main_reimport`), and only there."""
    script = tmp_path / "driver_script.py"
    script.write_text(
        "import os\n"
        "from evounlearn.sandbox import IsolatedWorker\n"
        "from tests.worker_jobs import DIAG, TRUSTED\n"
        "if __name__ == '__main__':\n"
        + ("    from evounlearn.search.executors.ray import no_main_reimport; no_main_reimport()\n" if in_actor else "")
        +
        "    with IsolatedWorker(wall_limit_s=60, cpu_limit_s=30, memory_limit_mb=512, trusted_prefixes=TRUSTED) as w:\n"
        "        print(w.run(DIAG, {'action': 'echo', 'value': 'ran'}).value)\n"
        "else:\n"
        "    open(os.path.join(os.environ['MARK_DIR'], 'imported-%d' % os.getpid()), 'w').close()\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MARK_DIR": str(tmp_path), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "ran"
    assert bool(list(tmp_path.glob("imported-*"))) is not in_actor  # imported in the worker unless in an actor


@pytest.mark.slow
def test_preloaded_modules_are_imported_before_the_first_job() -> None:
    """`preload_modules` (the benchmark's heavy imports) reaches the fork server: a worker's first
    job finds the module imported, and not one it was not asked for."""
    out = _fresh_python(
        "from evounlearn.sandbox import IsolatedWorker, preload_modules\n"
        "from tests.worker_jobs import DIAG, TRUSTED\n"
        "preload_modules('colorsys')\n"
        "with IsolatedWorker(wall_limit_s=60, cpu_limit_s=30, memory_limit_mb=512, trusted_prefixes=TRUSTED) as w:\n"
        "    print(w.run(DIAG, {'action': 'modules', 'value': ['colorsys', 'wave']}).value)\n"
    )
    assert out[-1] == "['colorsys']"


@pytest.mark.slow
def test_the_worker_side_of_the_sandbox_does_not_import_torch() -> None:
    """A process that only drives workers (a Ray actor, the executors) does not pay torch's import:
    the package loads its torch-using parts on first use; every exported name still resolves."""
    out = _fresh_python(
        "import sys\n"
        "import evounlearn.sandbox as s, evounlearn.search.executors.ray\n"
        "assert s.IsolatedWorker and s.JobResult and s.WORKER_ENV\n"
        "print('torch' in sys.modules)\n"
        "missing = [n for n in s.__all__ if not hasattr(s, n)]\n"
        "print('torch' in sys.modules, missing)\n"
    )
    assert out == ["False", "True", "[]"]
