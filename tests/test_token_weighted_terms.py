"""The token-weighted terms of WGA, SatImp and CE-U as offline-proposer primitives (`wga`, `ceu`
token weights): the trees equal the methods' losses (WGA, SatImp: values; CE-U: gradients with
respect to the logits), they render, check, pass the sandbox, are seeds and are drawn by the
grammar, and the LLM prompts name them."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from evounlearn.methods.ceu import ceu_loss
from evounlearn.methods.satimp import satimp_loss
from evounlearn.methods.wga import wga_loss
from evounlearn.search.proposers import ProposalRequest
from evounlearn.search.proposers.llm.prompts import render_prompt
from evounlearn.search.proposers.offline import interpret, operators, render, seed_trees
from evounlearn.search.proposers.offline import tree as lt
from evounlearn.search.proposers.offline.tree import LossTree

B, T, V = 3, 5, 11


def _logits_and_labels(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits with grad, labels with a 2-token prompt (-100), every row 3 answer tokens (so that a
    per-row token mean, then the batch mean, equals the global token mean)."""
    g = torch.Generator().manual_seed(seed)
    logits = (2.0 * torch.randn(B, T, V, generator=g)).requires_grad_()
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :2] = -100
    return logits, labels, labels != -100


def _tok_logp(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return lp * mask


def _tree_value(forget: Any, tlpf: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    env = interpret.token_env(tlpf, mask.float(), tlpf, mask.float(), tlpf.detach(), tlpf.detach())
    return interpret.evaluate(forget, env).mean()


def test_wga_and_satimp_trees_equal_the_methods() -> None:
    logits, labels, mask = _logits_and_labels()
    tlpf = _tok_logp(logits, labels, mask)
    for beta in (0.5, 1.0, 3.0):
        tree = ("tmean", "f", ("wga", "tlpf", beta))
        assert torch.allclose(_tree_value(tree, tlpf, mask), wga_loss(tlpf, mask, beta), atol=1e-6)
    sat = ("tmean", "f", ("focal", ("wga", "tlpf", 5.0), 1.0))
    assert torch.allclose(_tree_value(sat, tlpf, mask), satimp_loss(tlpf, mask, 5.0, 1.0), atol=1e-7)
    # the seeds are these trees (SatImp's with its gamma 0.1)
    seeds = dict(seed_trees.TOKEN_SEEDS)
    assert seeds["token_wga"].forget == ("tmean", "f", ("wga", "tlpf", 1.0))
    assert torch.allclose(_tree_value(seeds["token_satimp"].forget, tlpf, mask),
                          0.1 * satimp_loss(tlpf, mask, 5.0, 1.0), atol=1e-7)


def test_ceu_tree_has_ce_us_gradient() -> None:
    logits, labels, mask = _logits_and_labels(1)
    ceu_loss(logits, labels, mask).backward()
    want = logits.grad.clone()
    logits.grad = None
    tree = dict(seed_trees.TOKEN_SEEDS)["token_ceu"]
    assert tree.retain is None  # CE-U has no retain term
    _tree_value(tree.forget, _tok_logp(logits, labels, mask), mask).backward()
    assert torch.allclose(logits.grad, want, atol=1e-6)
    # not a coincidence of the weight: plain ascent (no odds weight) has another gradient
    logits.grad = None
    _tree_value(("tmean", "f", "tlpf"), _tok_logp(logits, labels, mask), mask).backward()
    assert not torch.allclose(logits.grad, want, atol=1e-3)


def test_new_weights_render_check_parse_and_are_drawn() -> None:
    probe = interpret.token_probe_inputs(batch=6, length=5, seed=3)
    trees = [t for n, t in seed_trees.TOKEN_SEEDS if n in ("token_wga", "token_satimp", "token_ceu")]
    trees.append(LossTree(("tmean", "f", ("ceu", ("softplus", "tdF"))), ("tmean", "r", ("wga", ("neg", "tlpr"), 2.0)),
                          0.5, 3))
    for t in trees:
        assert interpret.check_tree(t) is None, t
        code = render.render(t, "extended")
        assert render.tree_from_code(code) == t and LossTree.from_json(t.to_json()) == t
        ns: dict[str, Any] = {"torch": torch, "F": torch.nn.functional}
        exec(code, ns)  # test only: our own rendering
        got = ns["loss_fn"](probe["tlpf"], probe["mask_f"], probe["tlpr"], probe["mask_r"], probe["trpf"], probe["trpr"])
        env = interpret.token_env(probe["tlpf"], probe["mask_f"], probe["tlpr"], probe["mask_r"], probe["trpf"],
                                  probe["trpr"])
        assert torch.allclose(got, interpret._loss_from_env(t, env)), code
    # a p close to 1 stays finite (1 - p clamped)
    near_one = torch.full((2, 3), -1e-9)
    assert torch.isfinite(_tree_value(("tmean", "f", ("ceu", "tlpf")), near_one, torch.ones(2, 3))).all()
    assert lt.structure_problem(LossTree(("ceu", "lpf"))) is not None  # a token weight outside a token mean
    drawn: set[str] = set()  # the ops of the valid random token terms (the proposer drops the others)
    for s in range(300):
        term = operators.random_token_term(random.Random(s), "forget")
        if interpret.check_tree(LossTree(term, ("neg", "lpr"), 1.0, 5)) is None:
            drawn |= lt.ops_used(term)
    assert {"wga", "ceu", "focal"} <= drawn


@pytest.fixture
def sandbox_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from evounlearn.sandbox import WORKER_ENV

    monkeypatch.setenv(WORKER_ENV, "1")  # trusted code (our own renderings): validated in this process


def test_new_seeds_pass_the_sandbox(sandbox_env: None) -> None:
    from evounlearn.sandbox import validate_source

    for name in ("token_wga", "token_satimp", "token_ceu"):
        records = validate_source(render.render(dict(seed_trees.TOKEN_SEEDS)[name], "extended"), "extended")
        assert len(records) == 1 and records[0]["ok"], (name, records[0]["reason"])


def test_llm_prompts_name_the_token_weighted_terms() -> None:
    for kind in ("initial", "crossover"):
        req = ProposalRequest(kind=kind, n=2, interface="extended", parents=[{"code": "x", "fitness": 0.1}] * 2)
        text = render_prompt(req)
        assert "WGA" in text and "SatImp" in text and "CE-U" in text, kind
    initial = render_prompt(ProposalRequest(kind="initial", n=2, interface="extended"))
    assert "torch.exp(beta * tok_logp_forget.detach())" in initial
