"""benchmarks/noise.py, the instrument's datasheet: its loss specs and its statistics on made-up runs
(the datasheet itself trains models and is not run in CI)."""

from __future__ import annotations

import math
import statistics

import pytest

from .benchmark_scripts import load_script


@pytest.fixture(scope="module")
def noise():
    return load_script("noise", "noise_datasheet")


def test_loss_spec(noise) -> None:
    run = noise.loss_run("npo@lr=3e-4,beta=0.2,retain_loss=kl,epochs=4")
    assert run.method == "npo"
    assert run.train == {"lr": 3e-4, "epochs": 4}
    assert run.loss == {"beta": 0.2, "retain_loss": "kl"}
    assert noise.loss_run("simnpo").loss == {} and noise.loss_run("simnpo").train == {}
    with pytest.raises(SystemExit, match="not key=value"):
        noise.loss_run("npo@lr")


def _run(loss: str, seed: int, forget_rouge: float, mu: float) -> dict:
    """A made-up run: 4 forget and 6 holdout rows, the forget ROUGE shifted by `forget_rouge`."""
    f = {str(i): forget_rouge + 0.01 * i for i in range(4)}
    h = {str(i): 0.2 + 0.01 * (i % 3) for i in range(6)}
    fp = {str(i): 0.05 + 0.001 * i for i in range(4)}
    hp = {str(i): 0.05 + 0.002 * (i % 2) for i in range(6)}
    lf = {str(i): 2.0 + 0.1 * i + seed * 0.01 for i in range(4)}
    lh = {str(i): 2.0 + 0.1 * (i % 3) for i in range(6)}
    return {"loss": loss, "seed": seed, "seconds": 1.0, "train_seconds": 0.5, "eval_seconds": 0.5, "threads": 1,
            "summary": {"model_utility": mu, "forget_rouge": statistics.fmean(f.values()),
                        "forget_prob": statistics.fmean(fp.values()), "mia_loss": 0.5,
                        "forget_quality": 0.5},
            "rows": {"forget_rouge": f, "holdout_rouge": h, "forget_prob": fp, "holdout_prob": hp,
                     "loss_forget": lf, "loss_holdout": lh}}


def test_datasheet_pools_every_pair_and_splits_the_terms(noise) -> None:
    losses = ["a", "b", "c"]
    runs = [_run(loss, s, 0.2 + 0.3 * k + 0.02 * s * k, 0.8 - 0.05 * s * (k == 2))
            for k, loss in enumerate(losses) for s in range(3)]
    ref = {"model_utility": 0.9, "forget_rouge": 1.0, "forget_prob": 1.0, "holdout_rouge": 0.2, "holdout_prob": 0.05}
    sheet = noise.datasheet("generated", runs, {"search": ref, "report": ref},
                            {"search": {**ref, "forget_rouge": 0.2, "forget_prob": 0.05, "mia_loss_smd": 0.0},
                             "report": {**ref, "forget_rouge": 0.2, "forget_prob": 0.05, "mia_loss_smd": 0.0}},
                            losses, draws=5)
    main = sheet["fitnesses"]["calibrated"]
    vals = {loss: main["per_loss"][loss]["values"] for loss in losses}
    pairs = main["paired_diff_sd_per_pair"]
    assert set(pairs) == {"a - b", "a - c", "b - c"}
    expect = statistics.stdev([x - y for x, y in zip(vals["a"], vals["c"])])
    assert pairs["a - c"] == pytest.approx(expect)
    assert sheet["paired_diff_sd"] == pytest.approx(math.sqrt(statistics.fmean(v ** 2 for v in pairs.values())))
    # the factors: loss c's utility varies over its seeds, loss a's does not
    assert sheet["terms"]["a"]["relative_utility"]["sd"] == pytest.approx(0.0)
    assert sheet["terms"]["c"]["relative_utility"]["sd"] > 0.04
    k = sheet["sd_of_mean_of_k_seeds"]
    assert k["1"] == pytest.approx(sheet["single_run_sd"]) and k["3"] == pytest.approx(k["1"] / math.sqrt(3))
