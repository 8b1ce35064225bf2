"""`evounlearn tune` (search/tune/) on the fake benchmark: trials through the executor's
sandboxed workers, the Optuna store, finalists, outputs, seeding, resume after kill -9."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("optuna")

from evounlearn.benchmarks import FitnessSpec  # noqa: E402
from evounlearn.benchmarks.tofu import tofu_fitness  # noqa: E402
from evounlearn.cli.main import main  # noqa: E402
from evounlearn.errors import ConfigError  # noqa: E402
from evounlearn.search.points import JobRunner, MethodPoint, evaluate_points  # noqa: E402
from evounlearn.search.tune import (  # noqa: E402
    STUDY_NAME,
    Tuner,
    build_space,
    load_tune_config,
    storage_url,
)

from .fakes import BENCHMARK, FakeBenchmark  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARAM_FAKE = "tests.test_tune:ParamFakeBenchmark"


class ParamFakeBenchmark(FakeBenchmark):
    """FakeBenchmark whose forgetting depends on NPO's beta and the epochs (best: beta 0.1, 5 epochs),
    so that trials differ and the leaderboard's order means something."""

    def run(self, prepared: Any, run: Any, **kwargs: Any) -> Any:
        res = super().run(prepared, run, **kwargs)
        beta = float((prepared.get("loss") or {}).get("beta", 0.1))
        epochs = int(run.train.get("epochs") or 5)
        res.summary["forget_rouge"] = min(1.0, abs(math.log10(beta) + 1.0) / 2.0 + abs(epochs - 5) / 20.0)
        return res


def _cfg(**over: Any) -> Any:
    base: dict[str, Any] = {"method": "npo", "benchmark": PARAM_FAKE, "budget": 6, "workers": 2,
                            "finalists": 2, "report_seeds": 2}
    base.update(over)
    return load_tune_config(None, base)


def _trials(run_dir: Path) -> list[Any]:
    import optuna

    return optuna.load_study(study_name=STUDY_NAME, storage=storage_url(run_dir)).get_trials(deepcopy=False)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    d = tmp_path_factory.mktemp("tune") / "run"
    data = Tuner(_cfg(space={"beta": [0.01, 1.0], "gamma": 2.0}), d).run()
    return d, data


@pytest.mark.slow
def test_tune_budget_store_leaderboard_and_best_config(tuned: tuple[Path, dict[str, Any]]) -> None:
    from evounlearn.benchmarks.tofu import build_config

    d, data = tuned
    trials = _trials(d)
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)  # the budget, exactly
    assert data["trained"] == 6
    lb = json.loads((d / "leaderboard.json").read_text())
    scores = [t["score"] for t in lb["trials"]]
    assert len(scores) == 6 and scores == sorted(scores, reverse=True)
    assert len(lb["finalists"]) == 2 and {f["trial"] for f in lb["finalists"]} == {t["trial"] for t in lb["trials"][:2]}
    for f in lb["finalists"]:  # re-run on the report part with 2 seeds: mean and sd
        assert f["report_runs"] == 2 and f["report_ok"] == 2 and f["report_fitness_sd"] is not None
        assert (d / "trials" / f"{f['trial']:05d}" / "report-seed1" / "candidate.json").is_file()
    md = (d / "leaderboard.md").read_text()
    assert "Finalists (report part)" in md and "+-" in md
    # best_config.yaml: the top trial's params, readable by `evounlearn unlearn --config`
    best = lb["trials"][0]
    cfg = build_config("npo", str(d / "best_config.yaml"), [])
    assert cfg.loss["beta"] == pytest.approx(best["params"]["beta"])
    assert cfg.train.lr == pytest.approx(best["params"]["lr"])
    assert cfg.train.epochs == best["params"]["epochs"]
    assert cfg.loss["gamma"] == 2.0  # pinned by space.gamma=2.0, not tuned
    assert lb["best"]["trial"] == best["trial"]
    with pytest.raises(ConfigError, match="already holds a tune"):  # a finished run is continued, not redone
        Tuner(_cfg(), d).run()
    with pytest.raises(ConfigError, match="tunes npo, not simnpo"):
        Tuner.for_resume(d, ["method=simnpo"])


@pytest.mark.slow
def test_space_ranges_are_respected(tuned: tuple[Path, dict[str, Any]]) -> None:
    d, _ = tuned
    trials = _trials(d)
    assert all(0.01 <= t.params["beta"] <= 1.0 for t in trials)
    assert all("gamma" not in t.params for t in trials)
    assert all(1 <= t.params["epochs"] <= 10 and isinstance(t.params["epochs"], int) for t in trials)
    # the candidate job got the sampled params (in the run's shared `loss` / `train` settings)
    t = trials[0]
    job = json.loads((Path(t.user_attrs["run_dir"]) / "candidate.json").read_text())
    assert job["candidate"]["method"] == "npo" and job["candidate"]["train"]["epochs"] == t.params["epochs"]


def test_build_space_defaults_and_overrides() -> None:
    space = build_space(_cfg(benchmark=BENCHMARK))
    by = {r.name: r for r in space.ranges}
    assert set(by) == {"beta", "gamma", "alpha", "lr", "epochs"}  # retain_loss (a string) is not tuned
    assert by["beta"].log and by["beta"].low == pytest.approx(0.01) and by["beta"].high == pytest.approx(1.0)
    assert by["epochs"].integer and (by["epochs"].low, by["epochs"].high) == (1, 10)
    assert by["lr"].low == pytest.approx(5e-5)  # around evolve's run lr (unlearn.train.lr 5e-4)
    space = build_space(_cfg(method="pmc", space={"temperature": [0.5, 2.0, "linear"]}))
    by = {r.name: r for r in space.ranges}
    assert "seed" not in by and "max_new_tokens" not in by and "lam" in by  # lam = PMC's retain weight
    assert not by["temperature"].log and (by["temperature"].low, by["temperature"].high) == (0.5, 2.0)
    assert by["top_p"].high <= 1.0 and by["n_samples"].integer
    with pytest.raises(ConfigError, match="space.nope"):
        build_space(_cfg(space={"nope": [1, 2]}))
    with pytest.raises(ConfigError, match="space.beta"):
        build_space(_cfg(space={"beta": [1.0, 0.1]}))


@pytest.mark.slow
def test_same_seed_same_trials(tuned: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    d, _ = tuned
    Tuner(_cfg(space={"beta": [0.01, 1.0], "gamma": 2.0}, budget=4, finalists=0), tmp_path / "again").run()
    first = {t.number: t.params for t in _trials(d)}
    again = {t.number: t.params for t in _trials(tmp_path / "again")}
    assert again == {n: first[n] for n in again}
    Tuner(_cfg(space={"beta": [0.01, 1.0], "gamma": 2.0}, budget=2, finalists=0, seed=1), tmp_path / "s1").run()
    other = {t.number: t.params for t in _trials(tmp_path / "s1")}
    assert other[0] != first[0]


def test_unknown_method_fails_fast_without_torch() -> None:
    code = ("import sys, time; from evounlearn.cli.main import main; t = time.perf_counter(); "
            "rc = main(['tune', '--method', 'nope']); "
            "print(rc, round(time.perf_counter() - t, 3), 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    rc, seconds, torch_loaded = proc.stdout.split()
    assert rc == "2" and float(seconds) < 1.0 and torch_loaded == "False"
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown method 'nope'") and "npo" in err[0]


@pytest.mark.slow
def test_resume_after_kill_9_finishes_the_budget(tmp_path: Path) -> None:
    d = tmp_path / "run"
    cmd = [sys.executable, "-m", "evounlearn", "tune", "--method", "npo", "--budget", "6", "--workers", "2",
           "--run-dir", str(d), f"benchmark={BENCHMARK}", "finalists=1", "report_seeds=1", "unlearn.sleep_s=1.0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    deadline, before = time.time() + 180, []
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if not (d / "tune.sqlite").is_file():
                continue
            try:  # plain sqlite: Optuna's own loading is slower than a trial here
                with sqlite3.connect(d / "tune.sqlite") as con:
                    done = con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
            except sqlite3.Error:  # the study is being created
                continue
            if done >= 2:
                os.kill(proc.pid, signal.SIGKILL)  # the tuner only: its workers notice and exit
                proc.wait(10)
                before = _trials(d)
                break
        assert before, "the tune finished or hung before it could be killed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lost = [t for t in before if t.state.name == "RUNNING"]
    assert lost, "no trial was in flight at the kill"
    assert sum(t.state.name == "COMPLETE" for t in before) < 6
    assert main(["tune", "--resume", str(d)]) == 0
    after = _trials(d)
    complete = [t for t in after if t.state.name == "COMPLETE"]
    assert len(complete) == 6  # exactly the budget, across the crash
    for t in lost:  # left running: marked failed (not charged), the same params asked again
        assert after[t.number].state.name == "FAIL"
        if "run_dir" in t.user_attrs:  # submitted (a trial killed mid-draw never ran: nothing to re-ask)
            assert any(c.params == t.params for c in complete)
    lb = json.loads((d / "leaderboard.json").read_text())
    assert lb["trained"] == 6 and (d / "best_config.yaml").is_file()


@pytest.mark.slow
def test_evaluate_points_for_fixed_controls(tmp_path: Path) -> None:
    """The reusable part: fixed (method, params) points, finalists re-run with report seeds."""
    from evounlearn.search.executors import LocalExecutor
    from evounlearn.search.points import REAL_JOBS  # noqa: F401 - the job module the runner submits to

    cfg = _cfg()
    with LocalExecutor(2) as ex:
        runner = JobRunner(ex, PARAM_FAKE, cfg.unlearn, None, cfg.utility_floor)
        runner.target_info(tmp_path / "target.log")
        points = {f"beta{b}": MethodPoint("npo", {"beta": b}, {}, 5) for b in (0.1, 1.0, 0.01)}
        reports = evaluate_points(runner, points, seed=0, finalists=1, report_seeds=2, run_dir=tmp_path)
    assert [r.label for r in reports][0] == "beta0.1"  # the best search score first
    assert len(reports[0].report) == 2 and all(r.part == "report" for r in reports[0].report)
    assert all(not r.report for r in reports[1:])
    mean, sd = reports[0].report_mean_sd
    assert mean is not None and sd is not None


def test_runner_kwargs_reach_the_tofu_run_config(tmp_path: Path) -> None:
    """The sampled params travel in the job's `unlearn.loss` / `unlearn.train` and `epochs`: the
    TOFU benchmark builds the run's config from them in memory (`run_config`, through the one
    method resolver), and writes it whole as RUN_DIR/unlearn_config.yaml, which reproduces it."""
    from evounlearn.benchmarks import get_benchmark
    from evounlearn.benchmarks.tofu import build_config, run_config, save_run_config
    from evounlearn.config import to_dict
    from evounlearn.search.candidate import _method_run

    cfg = _cfg(benchmark="generated")
    runner = JobRunner(None, "generated", cfg.unlearn, None, fitness=cfg.fitness_name())  # type: ignore[arg-type]
    kw = runner.kwargs(MethodPoint("npo", {"beta": 0.3, "alpha": 2.0}, {"lr": 2e-4}, 3), "search", 0, tmp_path)
    assert kw["method"] == "npo" and kw["epochs"] == 3 and kw["forget_part"] == "search"
    assert kw["fitness"] == "calibrated"  # tune's fitness (evolve --mode ours's by default) reaches the job
    # what the candidate job hands the benchmark: the MethodRun and the prepared options
    from evounlearn.search.candidate import CandidateResult

    method_run = _method_run(CandidateResult(str(tmp_path)), tmp_path, None, "npo", "", "faithful", kw["epochs"])
    prepared = get_benchmark("generated").prepare(kw["unlearn"])
    run = run_config(method_run, prepared.layers, part="search", seed=0, fraction=None, run_dir=tmp_path)
    assert run.loss["beta"] == 0.3 and run.loss["alpha"] == 2.0 and run.loss["gamma"] == 1.0
    assert run.train.lr == 2e-4 and run.train.epochs == 3 and run.train.batch_size == 4 and run.train.seed == 0
    assert run.forget_part == "search" and run.eval.lean and run.prepare.generated.setting == "disjoint"
    assert run.run_dir == str(tmp_path)
    save_run_config(run, tmp_path / "unlearn_config.yaml")  # what TofuBenchmark.run writes
    again = build_config("npo", str(tmp_path / "unlearn_config.yaml"), [])
    # the full resolved config: the same run again (in a run directory of its own)
    assert to_dict(again) == {**to_dict(run), "run_dir": ""}
    entangled = get_benchmark("entangled").prepare(kw["unlearn"])
    assert run_config(method_run, entangled.layers, part="report", seed=1, fraction=0.25,
                      run_dir=tmp_path).prepare.generated.setting == "entangled"


def _forget_quality(summary: Any, target: Any = None) -> float:
    from evounlearn.benchmarks.base import metric

    return metric(summary, "forget_quality")


class TwoFitnessFake(ParamFakeBenchmark):
    """Two fitnesses on different scales, the benchmark's default (`evomu`) not the one `tune`
    optimises by default (`calibrated`, as `evolve --mode ours`)."""

    default_fitness = "evomu"
    fitnesses = {"evomu": FitnessSpec("evomu", tofu_fitness, "model_utility"),
                 "calibrated": FitnessSpec("calibrated", _forget_quality, "model_utility")}


class DiskFullOnceFake(ParamFakeBenchmark):
    """The first run anywhere finds the disk full (an infrastructure fault the candidate job itself
    classifies, `infra: true` in its result while the worker's job returned normally); later runs
    are fine. The marker file (`unlearn.fault_marker`) is shared by the worker processes."""

    def run(self, prepared: Any, run: Any, **kwargs: Any) -> Any:
        import errno

        marker = Path(prepared["fault_marker"])
        if not marker.exists():
            marker.write_text("faulted")
            raise OSError(errno.ENOSPC, "No space left on device", str(marker.parent))
        return super().run(prepared, run, **kwargs)


@pytest.mark.slow
def test_tune_scores_evolves_fitness_by_default_and_shows_every_fitness(tmp_path: Path) -> None:
    bench = "tests.test_tune:TwoFitnessFake"
    cfg = _cfg(benchmark=bench, budget=2, workers=1, finalists=0)
    assert cfg.fitness == "" and cfg.fitness_name() == "calibrated"  # evolve --mode ours's, not the default
    data = Tuner(cfg, tmp_path / "run").run()
    assert data["fitness"] == "calibrated" and data["fitnesses"] == ["evomu", "calibrated"]
    for row in data["trials"]:  # scored with calibrated; every fitness and forget quality beside it
        assert row["fitness"] == pytest.approx(row["fitness_calibrated"]) == pytest.approx(row["forget_quality"])
        assert row["fitness_evomu"] is not None and row["fitness_evomu"] != pytest.approx(row["fitness"])
    md = (tmp_path / "run" / "leaderboard.md").read_text()
    assert "forget quality" in md and "evomu fitness" in md and "calibrated fitness (searched)" in md
    assert _cfg(benchmark=bench, fitness="evomu").fitness_name() == "evomu"
    with pytest.raises(ConfigError, match=r"no fitness 'nope' \(known: evomu, calibrated\)"):
        _cfg(benchmark=bench, fitness="nope")


def test_unknown_fitness_is_one_line_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", "--method", "npo", "--benchmark", PARAM_FAKE, "--fitness", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no fitness 'nope'" in err[0] and "known: fake" in err[0]


@pytest.mark.slow
def test_an_infrastructure_fault_the_job_reports_is_retried_not_charged(tmp_path: Path) -> None:
    # the marker lies in the run dir: the sandboxed workers may write only there (and in the cache)
    cfg = _cfg(benchmark="tests.test_tune:DiskFullOnceFake", budget=2, workers=1, finalists=0,
               unlearn={"fault_marker": str(tmp_path / "run" / "disk-full")})
    data = Tuner(cfg, tmp_path / "run").run()
    trials = _trials(tmp_path / "run")
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].user_attrs["charged"] is False
    assert "out of disk" in failed[0].user_attrs["error"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2 and data["trained"] == 2  # the budget, the lost run not counted
    assert any(t.params == failed[0].params for t in complete)  # its params were asked again


class DiskAlwaysFullFake(ParamFakeBenchmark):
    def run(self, prepared: Any, run: Any, **kwargs: Any) -> Any:
        import errno

        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.slow
def test_a_persisting_infrastructure_fault_stops_the_tune_uncharged(tmp_path: Path) -> None:
    from evounlearn.errors import InfrastructureError

    cfg = _cfg(benchmark="tests.test_tune:DiskAlwaysFullFake", budget=2, workers=1, finalists=0)
    with pytest.raises(InfrastructureError, match="infrastructure fault 3 times .* no trial was charged"):
        Tuner(cfg, tmp_path / "run").run()
    trials = _trials(tmp_path / "run")
    assert len(trials) == 3 and not any(t.user_attrs.get("charged") for t in trials)
