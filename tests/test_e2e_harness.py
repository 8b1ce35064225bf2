"""End to end: prepare + eval on a very small generated benchmark, through the library and the CLI."""

from __future__ import annotations

import json
import time

import pytest

from evounlearn.benchmarks.tofu import prepare
from evounlearn.cli.main import main
from evounlearn.evaluation.metrics import MU_COMPONENTS
from evounlearn.evaluation.tofu_eval import load_results

from .conftest import tiny_prepare_config


@pytest.mark.slow
def test_prepare_saves_models_and_full_results(tiny_prepared):
    cfg, p = tiny_prepared
    for d in (p.target, p.retain):
        assert (d / "config.json").exists() and (d / "tokenizer.json").exists()
    target, retain = load_results(p.target_results), load_results(p.retain_results)
    n_forget = 4  # forget10 of 10 authors x 4 questions
    for key in ("forget_prob", "forget_rouge", "forget_truth_ratio", "extraction_strength", "exact_memorization",
                "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus"):
        entry = target["metrics"][key]
        assert entry["agg"] is not None, key
        vals = entry["values"] if "forget" not in entry["values"] else entry["values"]["forget"]
        assert sorted(vals, key=int) == [str(i) for i in range(n_forget)], key
    assert set(target["metrics"]["model_utility"]["components"]) == set(MU_COMPONENTS)
    # The oracle is the reference of itself; the target is compared with it.
    assert retain["summary"]["forget_quality"] == pytest.approx(1.0)
    assert retain["summary"]["privleak"] == pytest.approx(0.0)
    assert 0.0 <= target["summary"]["forget_quality"] <= 1.0
    # The target saw the forget authors, the oracle did not.
    assert target["summary"]["forget_prob"] > retain["summary"]["forget_prob"]


@pytest.mark.slow
def test_second_prepare_is_cached(tiny_prepared):
    cfg, p = tiny_prepared
    t = time.time()
    again = prepare(cfg)
    assert again.target == p.target and time.time() - t < 10
    assert again.target_results.stat().st_mtime == p.target_results.stat().st_mtime


@pytest.mark.slow
def test_cli_eval_prints_table_and_writes_json(tiny_prepared, tmp_path, capsys, monkeypatch):
    cfg, p = tiny_prepared
    monkeypatch.setenv("EVOUNLEARN_CACHE", cfg.cache_dir)
    over = ["generated.authors=10", "generated.questions_per_author=4", "generated.holdout_authors=2",
            "generated.general_items=8", "generated.retain_perturbed_authors=2", "eval.max_new_tokens=24"]
    rc = main(["eval", "--model", str(p.target), "--retain-results", str(p.retain_results),
               "--out", str(tmp_path), "--json", *over])
    assert rc == 0
    out = capsys.readouterr().out
    assert "forget_quality" in out and "model_utility" in out
    summary = json.loads(out.strip().splitlines()[-1])
    saved = load_results(tmp_path / "target_results.json")
    assert summary["target"]["forget_rouge"] == saved["summary"]["forget_rouge"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "missing-model")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model path") and "\n" not in err
    assert main(["prepare", "--split", "forget20"]) == 2
    assert "unknown forget split 'forget20'" in capsys.readouterr().err
    assert main(["prepare", "--data", str(tmp_path / "nothing-here")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_real_tofu_eval_pipeline_runs_on_a_few_examples(shared_data, tiny_prepared):
    # The metric code runs unchanged on the real TOFU files (a tiny untrained-on-TOFU model).
    from evounlearn.evaluation.tofu_eval import EvalConfig, TofuEvaluator
    from evounlearn.models.loading import load_model_and_tokenizer

    _, p = tiny_prepared
    model, tok = load_model_and_tokenizer(p.target)
    ev = TofuEvaluator(shared_data / "tofu", "forget01", EvalConfig(max_new_tokens=8, max_examples=6))
    res = ev.evaluate(model, tok)
    assert res["summary"]["model_utility"] is not None and len(res["metrics"]["forget_rouge"]["values"]) == 6


def test_prepare_config_is_validated(tmp_path):
    from evounlearn.errors import EvoUnlearnError

    cfg = tiny_prepare_config(tmp_path, forget_split="forget99")
    with pytest.raises(EvoUnlearnError, match="forget99"):
        prepare(cfg)
