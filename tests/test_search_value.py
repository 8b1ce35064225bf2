"""benchmarks/search_value.py's orchestration, with the arm runs replaced by fixed results: the
settings tried in order until two qualify (a setting where the noise datasheet says the instrument
does not resolve costs nothing, one without headroom only its tuned baselines), each setting's
trainings per run from the datasheet, the records kept per finished arm run and reused only when
made by the same code, and the criteria computed from the per-seed lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .benchmark_scripts import load_script


@pytest.fixture
def sv():
    return load_script("search_value")


# report fitness per (setting, arm): the tuned baselines decide the headroom against the oracle
ORACLE = {"partial-large": 0.99, "entangled-large": 0.95, "generated-large": 0.90, "paraphrase-large": 0.99}
# the noise datasheet's verdict per setting: trainings per run k (None: no k <= 3 resolves), oracle gap
SHEETS = {"partial-large": (1, 0.01), "entangled-large": (3, 0.0), "paraphrase-large": (2, 0.05),
          "generated-large": (2, 0.0)}
# the prepared models each setting's cache holds (the datasheet names the ones it measured)
MODELS = {s: f"{i:x}" * 64 for i, s in enumerate(SHEETS, 10)}


def _noise_file(path: Path) -> Path:
    noise = load_script("noise")
    settings = {}
    for name, (k, gap) in SHEETS.items():
        one = 0.034 * (k or 1) ** 0.5  # one training's sd: k trainings bring it to 0.034
        settings[name] = noise.instrument({"single_run_sd": one, "paired_diff_sd": one, "oracle_part_gap": gap,
                                           "models_sha256": MODELS[name]})
    path.write_text(json.dumps({"settings": settings}))
    return path
LEVEL = {("partial-large", "tuned_npo"): 0.70, ("partial-large", "tuned_simnpo"): 0.80,
         ("entangled-large", "tuned_npo"): 0.93, ("entangled-large", "tuned_simnpo"): 0.90,
         ("generated-large", "tuned_npo"): 0.60, ("generated-large", "tuned_simnpo"): 0.65}


def _fake_runs(sv, monkeypatch, calls: list[tuple[str, str, int]]) -> None:
    def run_arm(arm: str, setting: str, seed: int, budget: int, opts: Any, k: int = 1) -> Path:
        assert k == SHEETS[setting][0]
        calls.append((setting, arm, seed))
        return Path(opts.work) / setting / f"{arm}-seed{seed}"

    def parse(rd: Path) -> tuple[str, str, int]:
        arm, seed = rd.name.rsplit("-seed", 1)
        setting = rd.parent.name if rd.parent.name in SHEETS else rd.parent.parent.name  # runs sit per models
        return setting, arm, int(seed)

    def tune_result(rd: Path, k: int = 1) -> dict[str, Any]:
        setting, arm, seed = parse(rd)
        v = LEVEL[(setting, arm)] + 0.01 * seed
        return {"report_fitness": v, "forget_quality": 0.5, "model_utility": 0.8, "winner_search_fitness": v,
                "trained": 4, "trainings": 4}

    def evolve_result(rd: Path, k: int = 1) -> dict[str, Any]:
        setting, arm, seed = parse(rd)
        v = ORACLE[setting] - (0.02 if arm == "search" else 0.15) + 0.01 * seed
        return {"report_fitness": v, "forget_quality": 0.5, "model_utility": 0.8, "winner_search_fitness": v,
                "winner_search_sd": 0.01, "trainings": 4, "trained": 4, "gen0_best": 0.5, "final_best": 0.7,
                "gen0_best_fitness": 0.5, "final_best_fitness": 0.7, "gen0_best_mean": 0.5 + 0.01 * seed,
                "gen0_best_seeds": 1, "final_best_mean": 0.7 + 0.01 * seed, "final_best_seeds": 3}

    monkeypatch.setattr(sv, "run_arm", run_arm)
    monkeypatch.setattr(sv, "tune_result", tune_result)
    monkeypatch.setattr(sv, "evolve_result", evolve_result)
    monkeypatch.setattr(sv, "_winner_job", lambda rd: {"code": "def loss(): ...", "epochs": 3, "unlearn": {
        "prepare": {"cache_dir": "/this/machine/cache", "train": {"epochs": 32}}}})
    monkeypatch.setattr(sv, "oracle_report_fitness", lambda s: ORACLE[s])
    monkeypatch.setattr(sv, "prepared_models", lambda s, opts: MODELS[s])
    monkeypatch.setattr(sv, "transfer", lambda found, own, opts: {s: {s: own[s]} for s in found})


def test_settings_in_order_until_two_qualify_and_records_reused(sv, monkeypatch, tmp_path: Path) -> None:
    calls: list[tuple[str, str, int]] = []
    _fake_runs(sv, monkeypatch, calls)
    args = ["--budget", "4", "--seeds", "3", "--work", str(tmp_path / "work"), "--records", str(tmp_path / "rec"),
            "--out", str(tmp_path / "out" / "sv"), "--noise", str(_noise_file(tmp_path / "noise.json"))]
    assert sv.main(args) == 0
    data = json.loads((tmp_path / "out" / "sv.json").read_text())
    s = data["settings"]
    # partial qualifies (0.99 - 0.80 + seeds' spread), entangled has no headroom: only its tuned
    # baselines ran; generated is needed for the second qualifying setting
    assert s["partial-large"]["qualifies"] and s["generated-large"]["qualifies"]
    assert not s["entangled-large"]["qualifies"]
    assert s["entangled-large"]["headroom"] == pytest.approx(0.95 - 0.94)
    assert set(s["entangled-large"]["arms"]) == {"tuned_npo", "tuned_simnpo"}
    assert s["entangled-large"]["not_run"] == ["search", "random"]
    # the datasheet says the oracle's parts differ by 0.05 on paraphrase: nothing of it runs
    assert s["paraphrase-large"]["arms"] == {} and "oracle part gap +0.050" in s["paraphrase-large"]["not_run"]
    assert s["generated-large"]["instrument"]["trainings_per_candidate"] == 2
    order = [(st, arm) for st, arm, seed in calls if seed == 0]
    assert order == [("partial-large", "tuned_npo"), ("partial-large", "tuned_simnpo"), ("partial-large", "search"),
                     ("partial-large", "random"), ("entangled-large", "tuned_npo"),
                     ("entangled-large", "tuned_simnpo"), ("generated-large", "tuned_npo"),
                     ("generated-large", "tuned_simnpo"), ("generated-large", "search"), ("generated-large", "random")]
    assert len(calls) == 3 * len(order)
    # the criteria, recomputed from the per-seed lists
    c = data["criteria"]
    assert c["qualifying_settings"] == ["generated-large", "partial-large"] and c["enough_settings"]
    vs = c["vs_better_tuned"]["partial-large"]
    assert vs["better_tuned"] == "tuned_simnpo" and vs["delta"] == pytest.approx(0.99 - 0.02 - 0.80)
    assert vs["beats"] and c["beats_tuned_on_2_settings"] and c["beats_random_somewhere"]
    assert c["final_best_above_gen0_best_everywhere"] and c["instrument_meets_targets_everywhere"]
    rec0 = json.loads((tmp_path / "rec" / "generated-large" / "search-seed0.json").read_text())
    assert rec0["train_seeds"] == 2
    assert s["partial-large"]["arms"]["search"]["final_best_mean"] == pytest.approx([0.70, 0.71, 0.72])
    rec = json.loads((tmp_path / "rec" / "partial-large" / "search-seed1.json").read_text())
    assert rec["result"]["report_fitness"] == pytest.approx(0.98) and rec["winner_job"]["epochs"] == 3
    # the record travels: no folder of this machine in it
    assert rec["winner_job"]["unlearn"] == {"prepare": {"train": {"epochs": 32}}}
    assert rec["code_version"] == {**sv.code_version(), "models_sha256": MODELS["partial-large"]}
    assert s["partial-large"]["models_sha256"] == MODELS["partial-large"]

    # a second invocation (the run folders gone, as on another machine) reuses every record
    calls.clear()
    assert sv.main(args) == 0
    assert calls == []
    assert json.loads((tmp_path / "out" / "sv.json").read_text())["settings"] == s

    # records made by other code are not reused
    monkeypatch.setattr(sv, "code_version", lambda: {"src": "other", "libraries": {}})
    assert sv.main(args) == 0
    assert len(calls) == 3 * len(order)


def test_a_setting_runs_only_against_the_models_its_datasheet_measured(sv, monkeypatch, tmp_path: Path) -> None:
    """Another machine's preparation moved the instrument's verdicts (reproduce_avx512_*.json):
    a setting whose cache holds other models than the datasheet measured is not run, and a record
    made against other models is not reused."""
    calls: list[tuple[str, str, int]] = []
    _fake_runs(sv, monkeypatch, calls)
    args = ["--budget", "4", "--seeds", "2", "--work", str(tmp_path / "work"), "--records", str(tmp_path / "rec"),
            "--out", str(tmp_path / "out" / "sv"), "--noise", str(_noise_file(tmp_path / "noise.json")),
            "--settings", "partial-large,generated-large"]
    here = {**MODELS, "partial-large": "f" * 64}
    monkeypatch.setattr(sv, "prepared_models", lambda s, opts: here[s])
    assert sv.main(args) == 0
    s = json.loads((tmp_path / "out" / "sv.json").read_text())["settings"]
    assert s["partial-large"]["arms"] == {} and "the datasheet measured models" in s["partial-large"]["not_run"]
    assert {st for st, _, _ in calls} == {"generated-large"}
    # the same records, now against other models: run again
    calls.clear()
    here["generated-large"] = "e" * 64
    noise = json.loads((tmp_path / "noise.json").read_text())
    noise["settings"]["generated-large"]["models_sha256"] = "e" * 64
    (tmp_path / "noise.json").write_text(json.dumps(noise))
    assert sv.main(args) == 0
    assert len(calls) == 2 * 4 and {st for st, _, _ in calls} == {"generated-large"}
    assert sv.same_models({"models_sha256": None}, "a") and sv.same_models({"models_sha256": "a"}, "a") is None


def test_compare_uses_the_standard_error_of_the_difference(sv) -> None:
    d = sv.compare([0.80, 0.82, 0.84], [0.70, 0.72, 0.74])
    assert d["delta"] == pytest.approx(0.10) and d["se"] == pytest.approx((0.02**2 / 3 * 2) ** 0.5)
    assert d["beats"] and not d["worse"]
    small = sv.compare([0.80, 0.90, 0.70], [0.78, 0.88, 0.68])  # 0.02 apart, SE 0.08
    assert not small["beats"] and not small["worse"]


def test_an_arm_runs_budget_over_k_runs_of_k_trainings(sv, monkeypatch, tmp_path: Path) -> None:
    """With k = 3 trainings per run, a budget of 24 trainings is 8 runs of train_seeds=3; 3 report
    trainings are 1 report run; no special case for the search (its races count trainings)."""
    seen: list[list[str]] = []
    monkeypatch.setattr(sv, "_cli", lambda args, log: seen.append(args))
    opts = sv.argparse.Namespace(work=str(tmp_path), finalists=1, report_seeds=3, workers=2)
    for setting in ("entangled-large", "partial-large"):
        (tmp_path / setting).mkdir()
    sv.run_arm("search", "entangled-large", 0, 24, opts, 3)
    sv.run_arm("tuned_npo", "entangled-large", 0, 24, opts, 3)
    sv.run_arm("random", "partial-large", 1, 24, opts, 1)
    search, tuned, random_one = seen
    assert search[search.index("--budget") + 1] == "8" and tuned[tuned.index("--budget") + 1] == "8"
    for args in (search, tuned):
        assert "train_seeds=3" in args and "report_seeds=1" in args
    assert not any(a.startswith("ours.") for a in search + tuned)
    assert random_one[random_one.index("--budget") + 1] == "24" and "report_seeds=3" in random_one
    assert "train_seeds=1" in random_one and not any(a.startswith("ours.") for a in random_one)
    assert sv.runs_of(24, 3) == 8 and sv.runs_of(2, 3) == 1
