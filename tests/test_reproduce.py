"""benchmarks/reproduce.py: a fresh install's datasheet against the committed one, on fixed numbers."""

from __future__ import annotations

import math

import pytest

from .benchmark_scripts import load_script


@pytest.fixture
def rp():
    return load_script("reproduce")


def _loss(values: list[float]) -> dict:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return {"values": values, "mean": m, "sd": sd, "n": len(values)}


def _sheet(losses: dict, target_mu: float) -> dict:
    return {"settings": {"partial-large": {"losses": losses, "target": {"search": {"model_utility": target_mu}},
                                           "oracle": {"search": {"model_utility": 0.9}}, "single_run_sd": 0.04,
                                           "item_sd": 0.03, "paired_diff_sd": 0.05, "oracle_part_gap": -0.04}}}


def test_identical_runs_reproduce_bit_for_bit(rp) -> None:
    old = _sheet({"npo": _loss([0.5, 0.4, 0.45, 0.41])}, 0.9126)
    out = rp.compare(old, old)["partial-large"]
    v = out["losses"]["npo"]
    assert v["delta"] == 0 and v["reproduced"] and v["bit_identical_seeds"] == 4 and v["max_seed_abs_diff"] == 0
    assert out["target_max_abs_diff"] == 0 and out["all_reproduced"]


def test_a_shifted_mean_beyond_2_se_is_not_reproduced(rp) -> None:
    old = _sheet({"npo": _loss([0.50, 0.40, 0.45, 0.41]), "simnpo": _loss([0.40, 0.41, 0.38, 0.42])}, 0.9126)
    new = _sheet({"npo": _loss([0.51, 0.41, 0.44, 0.42]), "simnpo": _loss([0.60, 0.61, 0.58, 0.62])}, 0.9)
    out = rp.compare(new, old)["partial-large"]
    assert out["losses"]["npo"]["reproduced"] and out["losses"]["npo"]["bit_identical_seeds"] == 0
    s = out["losses"]["simnpo"]
    assert s["delta"] == pytest.approx(0.2) and not s["reproduced"] and not out["all_reproduced"]
    assert out["target_max_abs_diff"] == pytest.approx(0.0126)
    assert "simnpo" in rp.markdown({"benchmarks": {"partial-large": out}, "seconds": 60, "env": {}, "committed_env": {}})


def test_the_summary_compares_one_training_under_either_name(rp) -> None:
    """A datasheet with the instrument's fields (one run = k trainings) against one written before
    them: one training's sds are compared, whatever each file calls them."""
    old = _sheet({"npo": _loss([0.5, 0.4, 0.45, 0.41])}, 0.9126)
    new = _sheet({"npo": _loss([0.5, 0.4, 0.45, 0.41])}, 0.9126)
    new["settings"]["partial-large"].update({"single_run_sd": 0.0231, "single_training_sd": 0.04,
                                             "paired_diff_sd": 0.0289, "paired_diff_sd_one_training": 0.05,
                                             "trainings_per_candidate": 3, "meets_targets": True})
    summary = rp.compare(new, old)["partial-large"]["summary"]
    assert summary["single_training_sd"] == {"new": 0.04, "committed": 0.04}
    assert summary["paired_diff_sd_one_training"] == {"new": 0.05, "committed": 0.05}
    assert summary["trainings_per_candidate"] == {"new": 3, "committed": None}
