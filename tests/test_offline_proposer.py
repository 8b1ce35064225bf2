"""The offline proposer uses what it measures: metric diagnosis, directed mutations, TPE tuning
of a structure's constants, token-level terms in the extended interface; every proposal passes
the sandbox."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import pytest
import torch

from evounlearn.sandbox import WORKER_ENV, validate_source
from evounlearn.search.proposers import ProposalRequest, ReferenceLevels
from evounlearn.search.proposers.offline import (
    OfflineConfig,
    OfflineProposer,
    directed,
    interpret,
    operators,
    render,
    seed_trees,
    tpe,
)
from evounlearn.search.proposers.offline import tree as lt
from evounlearn.search.proposers.offline.diagnosis import OVER, UNDER, UTILITY, diagnose
from evounlearn.search.proposers.offline.tree import LossTree

REF = ReferenceLevels(target_utility=0.6, target_forget_rouge=0.95, holdout_rouge=0.18, holdout_prob=0.1)
GRADDIFF = LossTree("lpf", ("neg", "lpr"), 1.0, 5)
NPO = dict(seed_trees.SEEDS)["NPO"]
UNDER_METRICS = {"forget_rouge": 0.61, "model_utility": 0.6}
OVER_METRICS = {"forget_rouge": 0.02, "model_utility": 0.58}
UTILITY_METRICS = {"forget_rouge": 0.2, "model_utility": 0.3}


@pytest.fixture
def sandbox_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Trusted code (our own renderings): the validation job may run in this process.
    monkeypatch.setenv(WORKER_ENV, "1")


def assert_sandbox_ok(code: str, interface: str) -> None:
    records = validate_source(code, interface)
    assert len(records) == 1 and records[0]["ok"], (records[0]["reason"], code)


def refine(tree: LossTree, metrics: dict[str, Any], n: int = 8, seed: int = 0, **kw: Any) -> list[Any]:
    parent = {"id": 1, "code": render.render(tree, kw.pop("interface", "faithful")), "fitness": 0.1, "metrics": metrics}
    req = ProposalRequest(kind="refine", n=n, seed=seed, parents=[parent], reference=REF, **kw)
    return OfflineProposer(OfflineConfig(directed_share=1.0)).propose(req)


# -- diagnosis -----------------------------------------------------------------------------------


def test_diagnosis_reads_levels_mia_and_utility() -> None:
    d = diagnose(UNDER_METRICS, REF)
    assert d.primary == UNDER and "forget ROUGE 0.61 vs holdout 0.18" in d.describe()
    assert diagnose(OVER_METRICS, REF).primary == OVER
    assert diagnose(UTILITY_METRICS, REF).primary == UTILITY
    assert diagnose({"forget_rouge": 0.2, "model_utility": 0.59}, REF).primary is None  # at the level
    # The candidate's own holdout level wins over the reference's; {"agg": v} entries are read.
    assert diagnose({"forget_rouge": {"agg": 0.4}, "holdout_rouge": 0.38}, REF).primary is None
    # Without levels: the MIA AUC of forget vs holdout decides; without anything: no finding.
    assert diagnose({"mia_min_k": 0.85}, None).primary == UNDER
    assert diagnose({"mia_loss": 0.2}, None).primary == OVER
    assert diagnose({"forget_rouge": 0.9}, None).primary is None
    assert diagnose(None, None).findings == []
    # The oracle's forget level serves when no holdout level is known.
    assert diagnose({"forget_prob": 0.5}, ReferenceLevels(oracle_forget_prob=0.1)).primary == UNDER
    # A benchmark with another utility metric names it.
    muse = ReferenceLevels(target_utility=0.5, utility_key="retain_knowmem_rouge")
    assert diagnose({"retain_knowmem_rouge": 0.2, "model_utility": 0.9}, muse).primary == UTILITY


def test_reference_levels_from_target_info() -> None:
    info = {
        "target": {"search": {"summary": {"model_utility": 0.61, "forget_rouge": 0.97, "forget_prob": 0.9,
                                          "holdout_rouge": 0.2, "holdout_prob": {"agg": 0.12}}}},
        "retain": {"search": {"summary": {"forget_rouge": 0.4, "forget_prob": 0.15}}},
        "target_utility": 0.6,
    }
    ref = ReferenceLevels.from_target_info(info)
    assert ref == ReferenceLevels(0.6, 0.97, 0.9, 0.4, 0.15, 0.2, 0.12)
    assert ReferenceLevels.from_target_info({"target": {}, "retain": None}) == ReferenceLevels()


# -- directed mutations --------------------------------------------------------------------------


def _saturating(node: Any) -> int:
    if not isinstance(node, tuple):
        return 0
    return (node[0] in directed.SATURATING) + sum(_saturating(c) for c in lt.children(node))


@pytest.mark.parametrize("parent", [GRADDIFF, NPO])
def test_under_forgetting_strengthens_the_forget_side(parent: LossTree) -> None:
    out = refine(parent, UNDER_METRICS)
    assert len(out) == 8 and all(x.operator.startswith("directed:") for x in out)
    for x in out:
        child = render.tree_from_code(x.code)
        assert child is not None
        assert x.notes.startswith("directed: under-forgetting (forget ROUGE 0.61 vs holdout 0.18) -> ")
        assert (
            directed.forget_scale(child) > directed.forget_scale(parent)
            or child.weight < parent.weight
            or child.epochs > parent.epochs
            or _saturating(child.forget) < _saturating(parent.forget)
        ), x.notes
        # Never a move the other way.
        assert child.weight <= parent.weight and child.epochs >= parent.epochs, x.notes


@pytest.mark.parametrize("metrics", [OVER_METRICS, UTILITY_METRICS])
def test_over_forgetting_and_utility_loss_protect_the_retain_side(metrics: dict[str, float]) -> None:
    out = refine(GRADDIFF, metrics)
    assert len(out) == 8
    for x in out:
        child = render.tree_from_code(x.code)
        assert child is not None and x.operator.startswith("directed:")
        anchored = child.retain != GRADDIFF.retain
        bounded = isinstance(child.forget, tuple) and _saturating(child.forget) > 0
        ratio = "dF" in lt.leaves_used(child.forget)
        assert child.weight > GRADDIFF.weight or bounded or ratio or child.epochs < 5 or anchored, x.notes
        assert child.weight >= GRADDIFF.weight and child.epochs <= 5, x.notes
    kinds = {x.operator for x in out}
    assert "directed:retain_weight_up" in kinds and len(kinds) >= 3
    if metrics is UTILITY_METRICS:
        assert out[0].notes.startswith("directed: utility loss (model utility 0.30 vs target 0.60) -> ")


def test_directed_is_deterministic_and_mixed_with_random_mutations() -> None:
    a, b = refine(NPO, UNDER_METRICS, seed=5), refine(NPO, UNDER_METRICS, seed=5)
    assert [x.code for x in a] == [x.code for x in b] and [x.notes for x in a] == [x.notes for x in b]
    assert [x.code for x in refine(NPO, UNDER_METRICS, seed=6)] != [x.code for x in a]
    parent = {"id": 1, "code": render.render(NPO), "fitness": 0.1, "metrics": UNDER_METRICS}
    req = ProposalRequest(kind="refine", n=12, seed=0, parents=[parent], reference=REF)
    ops = [x.operator for x in OfflineProposer().propose(req)]
    assert any(o.startswith("directed:") for o in ops) and any(not o.startswith("directed:") for o in ops)
    # No metrics (or no reference levels for them): random mutations only, as before.
    plain = ProposalRequest(kind="refine", n=6, seed=0, parents=[{"code": render.render(NPO)}])
    assert not any(x.operator.startswith("directed:") for x in OfflineProposer().propose(plain))


# -- model-based tuning --------------------------------------------------------------------------

TUNE_TREE = LossTree(("softplus", ("*", 1.0, "dF")), ("neg", "lpr"), 1.0, 5)


def _history(cs: list[float]) -> list[dict[str, Any]]:
    return [{"code": render.render(tpe.with_constants(TUNE_TREE, [c, 1.0])), "fitness": -((c - 0.3) ** 2)} for c in cs]


def test_structure_key_and_constant_vector_roundtrip() -> None:
    rng = random.Random(0)
    for _ in range(30):
        t = operators.random_tree(rng, tokens=True)
        vec = tpe.constant_vector(t)
        assert tpe.with_constants(t, vec) == t
        moved = tpe.with_constants(t, [v * 1.1 for v in vec])
        assert tpe.structure_key(moved) == tpe.structure_key(t)
    assert tpe.structure_key(TUNE_TREE) != tpe.structure_key(GRADDIFF)


def test_tpe_tuning_concentrates_near_the_best_constant() -> None:
    pytest.importorskip("optuna", reason="optuna (the `tune` extra) is not installed")
    cs = [0.05, 0.1, 0.2, 0.45, 0.7, 1.0, 1.5, 2.0, 2.5, 3.0]
    hist = _history(cs)
    # Unrelated structures in the history are ignored; the parent is the worst point.
    hist.append({"code": render.render(GRADDIFF), "fitness": 1.0})
    seen = statistics.median(abs(math.log(c / 0.3)) for c in cs)
    dists = []
    for seed in range(4):
        req = ProposalRequest(kind="tune", n=6, seed=seed, parents=[hist[-2]], history=hist)
        out = OfflineProposer().propose(req)
        assert len(out) == 6 and all(x.operator == "tune_tpe" for x in out)
        assert "TPE over 10 evaluated points" in out[0].notes
        got = [tpe.constant_vector(render.tree_from_code(x.code))[0] for x in out]  # type: ignore[arg-type]
        dists.append(statistics.median(abs(math.log(c / 0.3)) for c in got))
        assert dists[-1] < math.log(3.0), got
        assert [x.code for x in OfflineProposer().propose(req)] == [x.code for x in out]  # deterministic
    # Half the history's distance to the optimum, on average; the parent (c = 3) is 2.3 away.
    assert statistics.mean(dists) < 0.6 * seen, dists


def test_tune_falls_back_to_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    hist = _history([0.1, 0.3, 1.0, 2.0])
    req = ProposalRequest(kind="tune", n=3, seed=0, parents=[hist[0]], history=hist)
    monkeypatch.setattr(tpe, "_import_optuna", lambda: None)
    out = OfflineProposer().propose(req)
    assert len(out) == 3 and all(x.operator == "tune_constants" for x in out)
    # Too few points of the structure: jitter too.
    monkeypatch.undo()
    few = ProposalRequest(kind="tune", n=2, seed=0, parents=[hist[0]], history=hist[:1])  # 1 point < tpe_min_points (2)
    assert all(x.operator == "tune_constants" for x in OfflineProposer().propose(few))


# -- token-level terms (extended interface) ------------------------------------------------------

TOKEN_TREES = [t for _, t in seed_trees.TOKEN_SEEDS] + [
    LossTree(("tmean", "f", ("focal", ("+", "tlpf", 0.5), 1.5)), ("tmean", "r", ("entw", ("neg", "tdR"))), 0.5, 3),
    LossTree(("tmean", "f", ("refmask", ("exp", ("*", 0.5, "tlpf")), -2.0)), ("relu", ("neg", "dR")), 1.0, 4),
    LossTree(("+", "dF", ("tmean", "f", ("softplus", "tdF"))), ("tmean", "r", ("neg", "tlpr")), 1.0, 5),
]


def test_token_trees_check_render_and_match_the_interpreter() -> None:
    probe = interpret.token_probe_inputs(batch=6, length=5, seed=3)
    for t in TOKEN_TREES:
        assert interpret.check_tree(t) is None, t
        code = render.render(t, "extended")
        assert render.tree_from_code(code) == t
        with pytest.raises(ValueError):
            render.render(t, "faithful")
        ns: dict[str, Any] = {"torch": torch, "F": torch.nn.functional}
        exec(code, ns)  # test only: our own rendering
        got = ns["loss_fn"](probe["tlpf"], probe["mask_f"], probe["tlpr"], probe["mask_r"], probe["trpf"], probe["trpr"])
        env = interpret.token_env(probe["tlpf"], probe["mask_f"], probe["tlpr"], probe["mask_r"], probe["trpf"], probe["trpr"])
        assert torch.allclose(got, interpret._loss_from_env(t, env)), code
    # Token leaves outside a token mean, or mean leaves inside one, are not trees.
    assert lt.structure_problem(LossTree("tlpf")) is not None
    assert lt.structure_problem(LossTree(("tmean", "f", "lpf"))) is not None
    assert lt.structure_problem(LossTree(("tmean", "f", "tlpr"))) is not None


def test_every_token_operator_passes_the_sandbox(sandbox_env: None) -> None:
    ops_seen: set[str] = set()
    for t in TOKEN_TREES:
        assert_sandbox_ok(render.render(t, "extended"), "extended")
        ops_seen |= lt.ops_used(t.forget) | lt.ops_used(t.retain)
    assert {"tmean", *lt.TOKEN_WEIGHTS} <= ops_seen
    assert {"tlpf", "tlpr", "tdF", "tdR"} <= set().union(*(lt.leaves_used(t.forget) | lt.leaves_used(t.retain) for t in TOKEN_TREES))


def test_extended_proposals_use_tokens_and_faithful_never(sandbox_env: None) -> None:
    p = OfflineProposer()
    ext = p.propose(ProposalRequest(kind="initial", n=24, seed=1, interface="extended"))
    assert len(ext) == 24 and any(x.operator.startswith("seed:token_") for x in ext)
    trees = [render.tree_from_code(x.code) for x in ext]
    assert sum(lt.uses_tokens(t) for t in trees if t is not None) >= 6
    for x in ext:
        assert_sandbox_ok(x.code, "extended")
    faithful = p.propose(ProposalRequest(kind="initial", n=24, seed=1))
    assert not any(lt.uses_tokens(render.tree_from_code(x.code)) for x in faithful)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("interface", ["faithful", "extended"])
def test_every_proposal_passes_the_sandbox(sandbox_env: None, interface: str) -> None:
    p = OfflineProposer()
    seeds = p.propose(ProposalRequest(kind="initial", n=14, seed=2, interface=interface))
    parents = [
        {"id": i, "code": s.code, "fitness": -0.1 * i, "metrics": m}
        for i, (s, m) in enumerate(zip(seeds, [UNDER_METRICS, OVER_METRICS, UTILITY_METRICS, {}] * 4))
    ]
    out = list(seeds)
    for i, parent in enumerate(parents):
        kind = ("refine", "crossover", "tune", "repair")[i % 4]
        req = ProposalRequest(
            kind=kind, n=3, seed=i, interface=interface, reference=REF,
            parents=[parent, parents[(i + 1) % len(parents)]] if kind == "crossover" else [parent],
            error="loss not finite" if kind == "repair" else None,
            history=[{"code": q["code"], "fitness": q["fitness"]} for q in parents],
        )
        out += p.propose(req)
    assert len(out) >= 14 + 3 * len(parents) - 3
    for x in out:
        assert_sandbox_ok(x.code, interface)


def test_foreign_parent_epochs_follow_the_metrics() -> None:
    foreign = (
        "def loss_fn(log_probs_forget, log_probs_retain, ref_log_probs_forget=None, ref_log_probs_retain=None):\n"
        '    """epochs: 4"""\n'
        "    return 1.5 * torch.relu(log_probs_forget + 2.0).mean() - log_probs_retain.mean()\n"
    )
    p = OfflineProposer(OfflineConfig(directed_share=1.0))
    for metrics, want in ((UNDER_METRICS, "epochs: 5"), (OVER_METRICS, "epochs: 3")):
        parent = {"code": foreign, "fitness": 0.1, "metrics": metrics}
        out = p.propose(ProposalRequest(kind="refine", n=3, parents=[parent], reference=REF))
        assert len(out) == 3 and all(x.operator == "directed:tune_ast" and want in x.code for x in out)
        assert out[0].notes.endswith(f"-> epochs 4 -> {want[-1]}")
