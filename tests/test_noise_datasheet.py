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
    k = noise.instrument(dict(sheet))["by_trainings"]
    assert k["1"]["single_run_sd"] == pytest.approx(sheet["single_run_sd"])
    assert k["3"]["single_run_sd"] == pytest.approx(k["1"]["single_run_sd"] / math.sqrt(3))


def test_instrument_picks_the_fewest_trainings_that_meet_the_targets(noise) -> None:
    # one training: sd 0.047, paired 0.057 -> k = 2 gives 0.033 / 0.0403 (paired misses), k = 3 0.027 / 0.033
    s = noise.instrument({"single_run_sd": 0.047, "paired_diff_sd": 0.057, "oracle_part_gap": 0.0,
                          "seconds_per_candidate": 20.0})
    assert s["trainings_per_candidate"] == 3 and s["meets_targets"] and s["why_not"] is None
    assert s["seconds_per_training"] == 20.0 and s["seconds_per_candidate"] == 60.0  # a run of 3 trainings
    assert s["single_run_sd"] == pytest.approx(0.047 / 3 ** 0.5) and s["paired_diff_sd"] == pytest.approx(0.057 / 3 ** 0.5)
    assert s["single_training_sd"] == 0.047 and s["resolves_at_2sd"] == pytest.approx(2 * 0.057 / 3 ** 0.5)
    assert noise.instrument(dict(s)) == s  # applied again (a merged datasheet): the same
    one = noise.instrument({"single_run_sd": 0.03, "paired_diff_sd": 0.04, "oracle_part_gap": -0.03})
    assert one["trainings_per_candidate"] == 1 and one["meets_targets"]
    # no k <= 3 resolves; the oracle's gap is the data's own (no k moves it)
    far = noise.instrument({"single_run_sd": 0.0576, "paired_diff_sd": 0.0867, "oracle_part_gap": 0.005})
    assert far["trainings_per_candidate"] is None and not far["meets_targets"] and "no k <= 3" in far["why_not"]
    assert far["single_run_sd"] == 0.0576  # reported as one training's
    gap = noise.instrument({"single_run_sd": 0.0366, "paired_diff_sd": 0.051, "oracle_part_gap": -0.041})
    assert gap["trainings_per_candidate"] == 2 and not gap["meets_targets"] and "oracle part gap -0.041" in gap["why_not"]


def test_merge_keeps_the_other_benchmarks_and_refuses_another_protocol(noise) -> None:
    head = {"fitness": "calibrated", "fitness_version": 2, "losses": ["npo"], "seeds": 8, "bootstrap": 300}
    entry = {"single_run_sd": 0.047, "paired_diff_sd": 0.057, "oracle_part_gap": 0.0}
    old = {**head, "settings": {"a": dict(entry), "b": dict(entry)}, "seconds": 100.0, "env": {"torch": "old"}}
    new = {**head, "settings": {"b": noise.instrument({**entry, "oracle_part_gap": 0.1})}, "seconds": 10.0,
           "env": {"torch": "new"}}
    m = noise.merged(old, new)
    assert list(m["settings"]) == ["a", "b"] and m["seconds"] == 110.0
    assert m["settings"]["a"]["measured"]["env"] == {"torch": "old"} and m["settings"]["a"]["meets_targets"]
    assert m["settings"]["b"]["measured"]["env"] == {"torch": "new"} and not m["settings"]["b"]["meets_targets"]
    with pytest.raises(SystemExit, match="bootstrap"):
        noise.merged(old, {**new, "bootstrap": 100})
    # more seeds for one benchmark: each entry keeps its own count, the header lists them
    more = noise.merged(old, {**new, "seeds": 16, "settings": {"b": {**new["settings"]["b"], "seeds": 16}}})
    assert more["seeds"] == {"a": None, "b": 16} and "b: 16" in noise._seeds_text(more["seeds"])


def test_the_standard_error_of_each_sd_follows_its_degrees_of_freedom(noise) -> None:
    sheet = noise.instrument({"single_run_sd": 0.06, "paired_diff_sd": 0.06, "oracle_part_gap": 0.0,
                              "single_run_sd_df": 45, "paired_diff_sd_df": 30})
    assert sheet["trainings_per_candidate"] == 3
    assert sheet["single_run_sd_se"] == pytest.approx(0.06 / 3 ** 0.5 / (2 * 45) ** 0.5)
    assert sheet["by_trainings"]["1"]["paired_diff_sd_se"] == pytest.approx(0.06 / (2 * 30) ** 0.5)
    assert noise.instrument({"single_run_sd": 0.02, "paired_diff_sd": 0.02, "oracle_part_gap": 0.0})[
        "single_run_sd_se"] is None  # an older entry without its degrees of freedom
