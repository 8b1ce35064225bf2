"""benchmarks/methods_tuned.py: its aggregation and JSON shape on fixed records, and a micro run of
the whole script (real `evounlearn tune` commands and workers) on the fake benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .benchmark_scripts import load_script


def _script():
    return load_script("methods_tuned")


def test_method_result_takes_the_winners_report_runs_by_seed() -> None:
    mt = _script()
    assert len(mt.METHODS) == 13 and "evolved" not in mt.METHODS
    assert {"wga", "satimp", "ceu", "pdu", "altpo"} <= set(mt.METHODS)
    lb = {"budget": 4, "trained": 4, "best": {"trial": 2},
          "trials": [{"trial": 2, "params": {"lr": 1e-3}}, {"trial": 0, "params": {"lr": 1e-4}}]}
    stored = {
        "00002/report-seed1": {"seed": 1, "ok": True, "fitness": 0.5,
                               "summary": {"forget_quality": 0.2, "model_utility": {"agg": 0.8}}},
        "00002/report-seed0": {"seed": 0, "ok": True, "fitness": 0.7,
                               "summary": {"forget_quality": 0.1, "model_utility": 0.9}},
        "00002/report-seed2": {"seed": 2, "ok": False, "fitness": None, "summary": None},
        "00000/report-seed0": {"seed": 0, "ok": True, "fitness": 0.99, "summary": {}},  # not the winner
    }
    runs = mt.winner_runs(lb, stored)
    assert [r["seed"] for r in runs] == [0, 1, 2]
    m = mt.method_result(lb, runs, [0.1, 0.3, None], 12.0)
    assert m["report_fitness"] == [0.7, 0.5, None]
    assert m["forget_quality"] == [0.1, 0.2, None] and m["model_utility"] == [0.9, 0.8, None]
    assert m["seconds_per_step"] == pytest.approx(0.2) and m["budget"] == 4 and m["best_params"] == {"lr": 1e-3}
    assert mt.winner_runs({"best": None}, stored) == []
    data = {"settings": {"s": {"methods": {"npo": m, "wga": {**m, "report_fitness": [0.9, 0.9, 0.9]}}}}}
    rows = mt.table(data).splitlines()[2:]
    assert rows[0].startswith("| s | wga | 0.900") and rows[1].startswith("| s | npo | 0.600")


@pytest.mark.slow
def test_micro_run_on_the_fake_benchmark_writes_the_judged_shape(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    mt = _script()
    args = ["--settings", "tests.fakes:FakeBenchmark", "--methods", "npo,wga", "--budget", "2",
            "--report-seeds", "3", "--fitness", "fake", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out" / "mt")]
    assert mt.main(args) == 0
    data = json.loads((tmp_path / "out" / "mt.json").read_text())
    methods = data["settings"]["tests.fakes:FakeBenchmark"]["methods"]
    assert set(methods) == {"npo", "wga"} and data["fitness"] == "fake" and data["budget"] == 2
    for m in methods.values():
        for key in ("report_fitness", "forget_quality", "model_utility"):
            assert len(m[key]) == 3 and all(isinstance(v, float) for v in m[key]), key
        assert m["budget"] == 2 and m["trained"] == 2 and "seconds_per_step" in m
    assert (tmp_path / "out" / "mt.md").read_text().startswith("# Methods, each tuned alike")
    # a second invocation reuses the finished tune runs: same numbers, no new tune
    assert mt.main(args) == 0
    again = json.loads((tmp_path / "out" / "mt.json").read_text())
    assert again["settings"] == data["settings"]


def test_resolved_tells_a_method_from_the_best_only_beyond_2_se() -> None:
    mt = _script()
    data = {"settings": {"s": {"methods": {
        "a": {"report_fitness": [0.80, 0.82, 0.81]},
        "b": {"report_fitness": [0.79, 0.83, 0.80]},   # within the noise of a
        "c": {"report_fitness": [0.50, 0.52, 0.51]},   # far below
    }}}}
    for m in data["settings"]["s"]["methods"].values():
        m.update(forget_quality=[0.1] * 3, model_utility=[0.9] * 3, seconds_per_step=0.1, budget=4, trained=4)
    r = mt.resolved(data)["s"]
    assert r["best"] == "a" and r["within_2se_of_best"] == ["b"]
    assert r["vs_best"]["c"]["resolved"] and r["vs_best"]["c"]["delta"] == pytest.approx(0.30)
    assert "within 2 SE of it: b" in mt.markdown({**data, "fitness": "calibrated", "budget": 4, "report_seeds": 3,
                                                   "size": "large", "seconds": 60.0, "env": {}})
