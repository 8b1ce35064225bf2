"""The control arms of `evounlearn evolve` (`--control random | seeds`) on the fake benchmark
(real driver, executor and candidate job; no training), and the search's cheap evaluation path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from evounlearn.errors import ConfigError
from evounlearn.search.config import load_search_config
from evounlearn.search.driver import SearchDriver
from evounlearn.search.proposers.offline import render, seed_trees
from evounlearn.search.proposers.offline.tpe import structure_key
from evounlearn.search.store import Store

from .fakes import BENCHMARK


def control_cfg(**over: Any) -> Any:
    base: dict[str, Any] = {"benchmark": BENCHMARK, "workers": 2, "baselines": ["npo"], "finalists": 2,
                            "report_seeds": 1, "baseline_seeds": 1}
    base.update(over)
    return load_search_config(None, base)


@pytest.mark.slow
def test_random_control_draws_random_trees_in_generation_0_only(tmp_path: Path) -> None:
    d = tmp_path / "run"
    data = SearchDriver(control_cfg(control="random", budget=7), d).run()
    store = Store(d / "search.sqlite")
    trained = store.trained_candidates()
    assert len(trained) == 7 == store.trained_count()  # the budget, exactly
    assert {c.generation for c in store.candidates(kind="candidate")} == {0}  # no selection
    assert all(c.operator == "random" and not c.parents for c in trained)
    seeds = {render.render(t) for _, t in seed_trees.seed_trees()}
    assert not seeds & {c.code for c in trained}  # no literature seed
    trees = [render.tree_from_code(c.code or "") for c in trained]
    assert all(t is not None for t in trees)
    assert len({t.epochs for t in trees if t}) > 1  # epochs drawn, not fixed
    assert store.get_meta("winner") is not None and len(store.get_meta("finalists")) == 2
    assert data["counts"]["candidates"] == 7 and data["mode"] == "ours"  # the fitness stays the mode's
    store.close()


@pytest.mark.slow
def test_seeds_control_only_tunes_the_seed_structures(tmp_path: Path) -> None:
    d = tmp_path / "run"
    SearchDriver(control_cfg(control="seeds", budget=14), d).run()
    store = Store(d / "search.sqlite")
    trained = store.trained_candidates()
    assert len(trained) == 14 == store.trained_count()
    seeds = seed_trees.seed_trees()
    gen0 = [c for c in trained if c.generation == 0]
    assert sorted(c.operator for c in gen0) == sorted(f"seed:{n}" for n, _ in seeds)
    keys = {structure_key(t) for _, t in seeds}
    later = [c for c in trained if c.generation > 0]
    assert len(later) == 4
    for c in later:  # constants (and epochs) only: the structure is a seed's
        t = render.tree_from_code(c.code or "")
        assert t is not None and structure_key(t) in keys
        assert c.operator.startswith("tune") and len(c.parents) == 1
    assert len({structure_key(render.tree_from_code(c.code or "")) for c in later}) == 4  # one per structure
    store.close()


@pytest.mark.slow
def test_seeds_control_budget_below_the_seed_count(tmp_path: Path) -> None:
    d = tmp_path / "run"
    SearchDriver(control_cfg(control="seeds", budget=3, baselines=[], finalists=1), d).run()
    store = Store(d / "search.sqlite")
    trained = store.trained_candidates()
    assert [c.operator for c in trained] == ["seed:GA", "seed:GradDiff", "seed:NPO"]
    store.close()


def test_control_config_and_cli_flag() -> None:
    with pytest.raises(ConfigError, match="control must be one of"):
        control_cfg(control="bogus")
    from evounlearn.cli.main import build_parser

    args = build_parser().parse_args(["evolve", "--control", "seeds", "--budget", "3"])
    assert args.control == "seeds"


# ------------------------------------------------------------------------------------------------
# the cheap evaluation path of the search's candidates

KEPT = ("forget_rouge", "forget_prob", "model_utility", "forget_truth_ratio", "forget_quality", "holdout_rouge",
        "holdout_prob", "mia_loss")
DROPPED = ("extraction_strength", "exact_memorization", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "privleak")


@pytest.mark.slow
def test_lean_evaluation_keeps_the_values_it_computes(tiny_prepared) -> None:
    from evounlearn.evaluation.tofu_eval import EvalConfig, TofuEvaluator, load_results
    from evounlearn.models.loading import load_model_and_tokenizer

    _, p = tiny_prepared
    model, tok = load_model_and_tokenizer(str(p.target), dtype="float32")
    model.eval()
    rr = load_results(p.retain_results)
    full, lean, sized = (TofuEvaluator(p.data, "forget10", EvalConfig(max_new_tokens=24, **kw)).evaluate(
        model, tok, retain_results=rr) for kw in ({}, {"lean": True}, {"answer_margin": 2}))
    for k in KEPT:
        assert lean["summary"][k] == full["summary"][k], k
    assert not set(DROPPED) & set(lean["summary"]) and set(DROPPED) <= set(full["summary"])
    # answer-sized generation (greedy): a prefix of the longer generation, never longer
    for a, b in zip(sized["metrics"]["forget_rouge"]["generations"], full["metrics"]["forget_rouge"]["generations"]):
        assert b.startswith(a) and len(a) <= len(b)


@pytest.mark.slow
def test_candidate_cheap_path_equals_the_full_path(tiny_prepared, tmp_path: Path) -> None:
    """The search part's lean evaluation (the default there) against a forced full one: same run,
    same seed, identical fitness inputs."""
    import torch

    from evounlearn.config import to_dict
    from evounlearn.search.candidate import evaluate_candidate

    pcfg, p = tiny_prepared
    base = {"model": str(p.target), "retain_results": str(p.retain_results), "prepare": to_dict(pcfg),
            "threads": 1, "train": {"lr": 1e-3, "batch_size": 2}, "eval": {"max_new_tokens": 16}}
    threads = torch.get_num_threads()
    try:
        out = {}
        for name, extra in (("cheap", {}), ("full", {"lean": False})):
            unlearn = {**base, "eval": {**base["eval"], **extra}}
            out[name] = evaluate_candidate(str(tmp_path / name), method="npo", epochs=1, seed=1, forget_part="search",
                                           unlearn=unlearn, target_utility=0.5, fitness="calibrated")
            assert out[name]["ok"], out[name]["error"]
    finally:
        torch.set_num_threads(threads)
    cheap, full = out["cheap"]["summary"], out["full"]["summary"]
    for k in KEPT:
        assert cheap[k] == full[k], k
    assert out["cheap"]["fitness"] == out["full"]["fitness"]
    assert "privleak" not in cheap and "privleak" in full
