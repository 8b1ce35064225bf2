"""WGA, SatImp, CE-U, PDU and AltPO through the real loop on the tiny benchmark: each unlearns and is
evaluated, the CLI runs them, PDU's dual variable resumes exactly, AltPO's alternates are cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evounlearn.benchmarks.tofu import run_unlearning
from evounlearn.cli.main import main

from .fakes import Interrupted, interrupt_after
from .test_unlearning_loop import _cfg, _weights

pytestmark = pytest.mark.slow

NEW = ["wga", "satimp", "ceu", "pdu", "altpo"]


@pytest.mark.parametrize("method", NEW)
def test_new_method_unlearns_and_is_evaluated(tiny_prepared, tmp_path, method):
    cfg = _cfg(tiny_prepared, method, tmp_path / method)
    record = run_unlearning(cfg)
    assert record["steps"] == 2
    assert all(torch.isfinite(torch.tensor(record["loss_history"])))
    res = json.loads((tmp_path / method / "results.json").read_text())
    assert res["summary"]["forget_quality"] is not None and res["method"] == method
    before, after = _weights(tiny_prepared[1].target), _weights(tmp_path / method / "model")
    assert any(not torch.equal(before[k], after[k]) for k in after), "no weight moved"


def _ckpt(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint" / "state.pt", map_location="cpu", weights_only=False)


def test_pdu_resume_restores_the_dual_variable_bit_identical(tiny_prepared, tmp_path):
    extra = ("train.epochs=3", "loss.dual_warmup_epochs=0", "loss.retain_loss_eps=0.0", "loss.dual_step_size=5.0")
    run_unlearning(_cfg(tiny_prepared, "pdu", tmp_path / "a", *extra), evaluate=False)
    with pytest.raises(Interrupted):
        run_unlearning(_cfg(tiny_prepared, "pdu", tmp_path / "b", *extra, "train.checkpoint_every_steps=1"),
                       evaluate=False, on_step=interrupt_after(3))
    lam_at_3 = _ckpt(tmp_path / "b")["params"]["lam"]
    assert lam_at_3 > 1.0  # the dual variable moved (retain NLL > eps = 0), so its restore matters
    record = run_unlearning(_cfg(tiny_prepared, "pdu", tmp_path / "b", *extra), resume=True, evaluate=False)
    assert record["steps"] == 6
    assert _ckpt(tmp_path / "a")["params"]["lam"] == _ckpt(tmp_path / "b")["params"]["lam"] > lam_at_3
    a, b = _weights(tmp_path / "a" / "model"), _weights(tmp_path / "b" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # without the dual variable in the state, the resumed run would have gone elsewhere
    run_unlearning(_cfg(tiny_prepared, "pdu", tmp_path / "c", *extra, "loss.primal_dual=false"), evaluate=False)
    c = _weights(tmp_path / "c" / "model")
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_altpo_samples_once_per_model(tiny_prepared, tmp_path, monkeypatch):
    import evounlearn.methods.pmc as pmc

    pcfg = tiny_prepared[0]
    run_unlearning(_cfg(tiny_prepared, "altpo", tmp_path / "one", "loss.max_new_tokens=12"), evaluate=False)
    cached = list((Path(pcfg.cache_dir) / "generations").glob("altpo-*.json"))
    assert cached and len(json.loads(cached[0].read_text())["samples"][0]) == 5

    def no_sampling(*a, **k):
        raise AssertionError("sampled again although the cache holds this model's samples")

    monkeypatch.setattr(pmc, "sample_answers", no_sampling)
    run_unlearning(_cfg(tiny_prepared, "altpo", tmp_path / "two", "loss.max_new_tokens=12"), evaluate=False)
    a, b = _weights(tmp_path / "one" / "model"), _weights(tmp_path / "two" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_unlearn_runs_the_new_methods_and_lists_them(tiny_prepared, tmp_path, capsys):
    pcfg, p = tiny_prepared
    for method in NEW:
        args = ["unlearn", "--method", method, "--model", str(p.target), "--run-dir", str(tmp_path / method),
                f"retain_results={p.retain_results}", "train.epochs=1", "train.batch_size=2",
                "eval.max_new_tokens=8", f"prepare.cache_dir={pcfg.cache_dir}",
                *[f"prepare.generated.{k}={getattr(pcfg.generated, k)}" for k in
                  ("authors", "questions_per_author", "holdout_authors", "general_items", "retain_perturbed_authors")]]
        assert main(args) == 0, method
        assert (tmp_path / method / "results.json").exists()
    capsys.readouterr()
    assert main(["unlearn", "--method", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and all(m in err for m in NEW)
