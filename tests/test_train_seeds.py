"""A candidate run on several training seeds (`train_seeds`): its seeds, its mean, its config."""

from __future__ import annotations

import math

import pytest

from evounlearn.errors import ConfigError
from evounlearn.search.candidate import CandidateResult, evaluate_candidate
from evounlearn.search.config import SearchConfig
from evounlearn.search.points import JobRunner, MethodPoint
from evounlearn.search.seed_mean import SEED_STRIDE, job_option, mean_over_seeds, training_seeds
from evounlearn.search.tune.config import TuneConfig


def test_training_seeds_are_shared_by_jobs_of_one_seed_and_never_overlap_another():
    assert training_seeds(4, 1) == [4]  # one training: the plain run's seed
    assert training_seeds(4, 3) == [4, 4 + SEED_STRIDE, 4 + 2 * SEED_STRIDE]
    a, b = set(training_seeds(0, 3)), set(training_seeds(1, 3))
    assert not a & b  # the race's next seed trains on new seeds
    assert job_option(1) == {} and job_option(3) == {"train_seeds": 3}


def _ok(fitness: float, mu: float, forget: float, seconds: float) -> CandidateResult:
    return CandidateResult(run_dir="x", ok=True, stage=2, fitness=fitness, epochs=5, loss_history=[fitness],
                           summary={"model_utility": mu, "forget_rouge": forget, "fitness_calibrated": fitness,
                                    "fitness_oracle": None, "note": "text"},
                           timings={"train": seconds, "eval": 1.0}, fitness_name="calibrated", utility_key="model_utility")


def test_mean_over_seeds_averages_fitness_and_numeric_metrics():
    out = mean_over_seeds([_ok(0.5, 0.8, 0.2, 3.0), _ok(0.7, 0.9, 0.4, 5.0)], "run")
    assert out.ok and out.run_dir == "run" and out.seed_fitness == [0.5, 0.7]
    assert out.fitness == pytest.approx(0.6)
    assert out.summary["model_utility"] == pytest.approx(0.85)  # the utility floor reads the mean
    assert out.summary["forget_rouge"] == pytest.approx(0.3)
    assert out.summary["fitness_calibrated"] == pytest.approx(0.6)
    assert out.summary["fitness_oracle"] is None and out.summary["note"] == "text"
    assert out.timings == {"train": 8.0, "eval": 2.0}
    assert out.loss_history == [0.5] and out.utility() == pytest.approx(0.85)


def test_mean_over_seeds_a_failed_training_decides():
    bad = CandidateResult(run_dir="y", error="loss exploded")
    out = mean_over_seeds([_ok(0.5, 0.8, 0.2, 1.0), bad], "run")
    assert not out.ok and out.error == "loss exploded" and out.fitness == -math.inf and not out.infra
    infra = CandidateResult(run_dir="y", error="out of disk", infra=True)
    out = mean_over_seeds([infra], "run")
    assert out.infra and out.run_dir == "run" and out.seed_fitness == [-math.inf]
    with pytest.raises(ValueError):
        mean_over_seeds([], "run")


def test_train_seeds_config_checks_and_reaches_the_job():
    with pytest.raises(ConfigError, match="train_seeds must be >= 1"):
        SearchConfig(train_seeds=0).check()
    with pytest.raises(ConfigError, match="staged evaluation"):
        cfg = SearchConfig(train_seeds=2)
        cfg.ours.stage1_epochs = 2
        cfg.check()
    with pytest.raises(ConfigError, match="train_seeds must be >= 1"):
        TuneConfig(method="npo", train_seeds=0).check()
    point = MethodPoint("npo", {}, {}, 3)
    runner = JobRunner(None, "generated", {}, None, train_seeds=3)  # type: ignore[arg-type]
    assert runner.kwargs(point, "search", 0, "r")["train_seeds"] == 3
    one = JobRunner(None, "generated", {}, None)  # type: ignore[arg-type]
    assert "train_seeds" not in one.kwargs(point, "search", 0, "r")  # a one-seed job: the plain call


def test_staged_evaluation_with_several_seeds_is_refused_by_the_job(tmp_path):
    res = evaluate_candidate(str(tmp_path / "run"), method="npo", stage1_epochs=1, train_seeds=2)
    assert res["ok"] is False and "staged evaluation" in res["error"]


@pytest.mark.slow
def test_a_two_seed_job_is_the_mean_of_its_two_one_seed_jobs(tiny_prepared, tmp_path):
    """The real job on the tiny benchmark: train_seeds=2 with seed 1 trains exactly the one-seed
    runs with seeds 1 and 1 + stride (training and evaluation are deterministic per seed)."""
    from evounlearn.config import to_dict

    cfg, _ = tiny_prepared
    options = {"prepare": to_dict(cfg), "train": {"epochs": 1, "batch_size": 4}, "eval": {"max_new_tokens": 8}}
    both = evaluate_candidate(str(tmp_path / "both"), method="npo", seed=1, unlearn=options, train_seeds=2)
    singles = [evaluate_candidate(str(tmp_path / f"s{s}"), method="npo", seed=s, unlearn=options)
               for s in training_seeds(1, 2)]
    assert both["ok"] and all(r["ok"] for r in singles), (both, singles)
    assert both["seed_fitness"] == [r["fitness"] for r in singles]
    assert both["fitness"] == pytest.approx(sum(r["fitness"] for r in singles) / 2)
    assert both["summary"]["model_utility"] == pytest.approx(
        sum(r["summary"]["model_utility"] for r in singles) / 2)
    assert (tmp_path / "both" / f"train-seed{1 + SEED_STRIDE}").is_dir()
