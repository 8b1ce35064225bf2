"""Everyday use of the `evounlearn` command: fast one-line errors for bad arguments,
options and data (checked before torch is imported), the help, quiet output, and leftovers
(compare, failed runs, resume of a finished run, the cache folder, eval's labels)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evounlearn.benchmarks import default_cache_dir, get_benchmark
from evounlearn.benchmarks.runs import FAILED_MARKER, finished_run_report, guard_run_dir
from evounlearn.benchmarks.tofu.cli import COMPARE_KEYS, model_label
from evounlearn.data.tofu import SPLIT_COLUMNS
from evounlearn.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
ARG_LIMIT_S = 2.0  # the target is < 1 s; 2 s keeps the test robust on a loaded CI machine
DATA_LIMIT_S = 2.0


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["EVOUNLEARN_CACHE"] = str(tmp_path / "cache")
    env["OMP_NUM_THREADS"] = "1"
    return env


def evounlearn(args: list[str], tmp_path: Path, timeout: float = 60.0) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "evounlearn", *args], cwd=tmp_path, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=timeout)
    return time.perf_counter() - t0, p


def _row(columns: tuple[str, ...], i: int) -> dict:
    row: dict = {"question": f"Who is person {i}?", "answer": f"Person {i} is a writer."}
    if "paraphrased_answer" in columns:
        row["paraphrased_answer"] = f"A writer, person {i}."
    if "perturbed_answer" in columns:
        row["perturbed_answer"] = [f"Person {i} is a cook.", f"Person {i} is a pilot."]
    return row


def tofu_folder(root: Path) -> Path:
    """A small, valid TOFU-shaped folder (every split, JSON Lines)."""
    root.mkdir(parents=True, exist_ok=True)
    for split, columns in SPLIT_COLUMNS.items():
        rows = [_row(columns, i) for i in range(4)]
        (root / f"{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


# ------------------------------------------------------------------------------------------------
# arguments and options


BAD_INVOCATIONS = [
    (["unlearn"], "--method is required (known: "),
    (["unlearn", "--method", "nope"], "unknown method 'nope' (known: "),
    (["unlearn", "--method", "npo", "train.lr=abc"], "train.lr expects a number"),
    (["unlearn", "--method", "npo", "nokey=1"], "unknown option 'nokey'"),
    (["unlearn", "--method", "npo", "loss.nope=1"], "loss.nope"),
    (["prepare", "--benchmark", "nope"], "unknown benchmark 'nope'"),
    (["prepare", "--split", "forget11"], "unknown forget split 'forget11'"),
    (["eval", "--bogus"], "unrecognized arguments: --bogus"),
    (["prepare", "--import", "nowhere.tar.gz"], "nowhere.tar.gz: no such artifact file"),
    (["evolve", "--budget", "x"], "invalid int value"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INVOCATIONS, ids=[" ".join(a) for a, _ in BAD_INVOCATIONS])
def test_bad_invocation_is_one_line_exit_2_under_a_second(tmp_path, args, message):
    times = []
    for _ in range(3):
        seconds, p = evounlearn(args, tmp_path)
        times.append(seconds)
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1, p.stderr
        assert message in lines[0]
        assert p.stdout == ""
    median = statistics.median(times)
    print(f"evounlearn {' '.join(args)}: {median:.2f} s (median of 3)")
    assert median < ARG_LIMIT_S
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_bare_command_prints_the_help(tmp_path):
    _, p = evounlearn([], tmp_path)
    assert p.returncode == 0
    assert "usage: evounlearn" in p.stdout and "unlearn" in p.stdout and "evolve" in p.stdout


def test_every_option_help_shows_its_default():
    from evounlearn.cli.main import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "unlearn" in a.choices).choices
    for name, sub in [("evounlearn", parser), *subparsers.items()]:
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            text = formatter._get_help_string(action)
            assert "default" in text, f"{name} {action.option_strings[0]}: {text!r}"
    unlearn_help = subparsers["unlearn"].format_help()
    assert "(default: forget10)" in unlearn_help
    assert "Markdown" in subparsers["compare"].format_help()


def test_light_imports_do_not_load_torch(tmp_path):
    code = ("import sys\n"
            "import evounlearn.benchmarks, evounlearn.methods, evounlearn.cli.main\n"
            "from evounlearn.benchmarks import get_benchmark\n"
            "from evounlearn.benchmarks.tofu import check_config, PrepareConfig, UnlearnConfig\n"
            "from evounlearn.methods import method_names\n"
            "get_benchmark('generated')\n"
            "cfg, _ = check_config('npo', None, ['train.lr=1e-3', 'loss.beta=0.2'])\n"
            "assert cfg.train.lr == 1e-3 and cfg.loss['beta'] == 0.2, cfg\n"
            "assert 'npo' in method_names()\n"
            "heavy = [m for m in ('torch', 'transformers', 'datasets', 'accelerate', 'peft') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    p = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


# ------------------------------------------------------------------------------------------------
# data


def _bad_folders(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (extra arguments, expected message)."""
    missing = tofu_folder(tmp_path / "missing_column")
    rows = [json.loads(x) for x in (missing / "forget10.json").read_text().splitlines()]
    del rows[2]["answer"]
    (missing / "forget10.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    empty = tofu_folder(tmp_path / "empty_split")
    (empty / "forget10.json").write_text("")
    good = tofu_folder(tmp_path / "good")
    return {
        "missing column": (["--data", str(missing)], f"{missing / 'forget10.json'}: row 2 of split 'forget10' "
                                                     "lacks column(s) answer"),
        "empty split": (["--data", str(empty)], f"{empty / 'forget10.json'}: split 'forget10' is empty"),
        "unknown split": (["--data", str(good), "--split", "forget20"], "unknown forget split 'forget20'"),
        "wrong path": (["--data", str(tmp_path / "nowhere")], f"data folder {tmp_path / 'nowhere'} does not exist"),
    }


@pytest.mark.parametrize("command", [["prepare"], ["unlearn", "--method", "npo"], ["eval"]],
                         ids=["prepare", "unlearn", "eval"])
def test_bad_data_is_reported_before_any_model_is_loaded(tmp_path, command):
    for name, (extra, message) in _bad_folders(tmp_path).items():
        seconds, p = evounlearn([*command, *extra], tmp_path)
        print(f"{' '.join(command)} ({name}): {seconds:.2f} s")
        assert p.returncode == 2, (name, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (name, p.stderr)
        assert seconds < DATA_LIMIT_S, (name, seconds)
    assert not (tmp_path / "runs").exists(), "a command that failed before training left a run directory"
    assert not (tmp_path / "cache").exists()


def test_check_data_hook(tmp_path):
    bench = get_benchmark("tofu")
    bench.check_data({"data": str(tofu_folder(tmp_path / "good")), "forget_split": "forget05"})
    bench.check_data({"data": "generated"})  # made by the benchmark itself: nothing to read yet
    bad = tofu_folder(tmp_path / "bad")
    (bad / "retain_perturbed.json").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(DataError, match=r"retain_perturbed\.json: row 0 .* paraphrased_answer"):
        bench.check_data({"data": str(bad)})
    (bad / "holdout10.json").unlink()
    with pytest.raises(DataError, match="split 'holdout10' not found"):
        bench.check_data({"data": str(bad)})
    get_benchmark("wmdp").check_data({})  # generated data: only its options are checked


@pytest.mark.slow
def test_search_target_job_checks_data_and_times_prepare(tmp_path):
    from evounlearn.search.candidate import target_info

    info = target_info({}, benchmark="tests.fakes:FakeBenchmark")
    assert "prepare_seconds" in info and 0 <= info["prepare_seconds"] <= info["seconds"]


def test_evolve_reports_bad_data_before_the_search(tmp_path):
    folder = tofu_folder(tmp_path / "empty")
    (folder / "retain90.json").write_text("")
    seconds, p = evounlearn(["evolve", "--data", str(folder), "--run-dir", str(tmp_path / "search")], tmp_path)
    assert p.returncode == 2 and "retain90.json: split 'retain90' is empty" in p.stderr, p.stderr
    assert seconds < DATA_LIMIT_S
    assert not (tmp_path / "search").exists()


# ------------------------------------------------------------------------------------------------
# leftovers


def _finished_run(path: Path, method: str = "npo", mu: float = 0.5) -> Path:
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"method": method, "train_seconds": 12.5,
                                                   "summary": {"model_utility": mu, "forget_quality": 0.1}}))
    return path


def test_compare_skips_unfinished_runs_and_shows_failed_ones(tmp_path):
    done = _finished_run(tmp_path / "runs" / "npo-1")
    empty = tmp_path / "runs" / "half"
    empty.mkdir()
    failed = tmp_path / "runs" / "broken"
    failed.mkdir()
    (failed / FAILED_MARKER).write_text("RuntimeError: out of memory\n")
    _, p = evounlearn(["compare", str(done), str(empty), str(failed)], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "npo (npo-1)" in p.stdout and "FAILED" in p.stdout and "broken" in p.stdout
    assert "skipping" in p.stderr and "half" in p.stderr
    _, p = evounlearn(["compare", str(empty)], tmp_path)
    assert p.returncode == 2 and "no finished run" in p.stderr


def test_guard_run_dir_removes_a_run_that_never_trained_and_marks_a_later_failure(tmp_path):
    rd = tmp_path / "run"
    with pytest.raises(RuntimeError), guard_run_dir(rd):
        rd.mkdir()
        (rd / "config.yaml").write_text("method: npo\n")
        raise RuntimeError("model not found")
    assert not rd.exists()
    with pytest.raises(RuntimeError), guard_run_dir(rd):
        rd.mkdir()
        (rd / "config.yaml").write_text("method: npo\n")
        (rd / "checkpoint").mkdir()
        raise RuntimeError("loss became NaN")
    assert (rd / FAILED_MARKER).read_text().startswith("RuntimeError: loss became NaN")
    with guard_run_dir(rd):  # a resumed run that finishes clears the marker
        pass
    assert not (rd / FAILED_MARKER).exists()


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    rd = _finished_run(tmp_path / "runs" / "npo-done")
    before = (rd / "results.json").read_bytes()
    report = finished_run_report(rd, COMPARE_KEYS)
    assert report is not None and report.summaries["npo"]["seconds"] == 12.5
    _, p = evounlearn(["unlearn", "--resume", str(rd)], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "already finished" in p.stdout
    assert (rd / "results.json").read_bytes() == before
    assert sorted(x.name for x in rd.iterdir()) == ["results.json"]


def test_empty_cache_variable_means_the_default_cache(monkeypatch):
    monkeypatch.setenv("EVOUNLEARN_CACHE", "")
    assert default_cache_dir() == Path("cache")
    monkeypatch.setenv("EVOUNLEARN_CACHE", "/x/y")
    assert default_cache_dir() == Path("/x/y")


def test_eval_labels_an_adapter_by_its_run():
    assert model_label("cache/prepare/abc/target", "runs/npo-forget10-1/adapter") == "npo-forget10-1"
    assert model_label("cache/prepare/abc/target", None) == "target"
    assert model_label("gpt2", "my-adapter") == "my-adapter"


def test_quiet_libraries(monkeypatch):
    import logging

    from evounlearn.cli.main import quiet_libraries

    for key in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(key, raising=False)
    quiet_libraries(verbose=False)
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    absl = pytest.importorskip("absl.logging")
    assert logging.getLogger("absl").getEffectiveLevel() >= logging.WARNING
    absl.set_verbosity(absl.INFO)


def test_threads_never_follow_the_core_count():
    src = ROOT / "src" / "evounlearn"
    for path in [*(src / "benchmarks").glob("*.py"), src / "search" / "candidate.py"]:
        assert "cpu_count" not in path.read_text(), path


def test_evolve_prepares_in_the_cli_process_before_the_search(caplog):
    import logging
    from types import SimpleNamespace

    from evounlearn.cli.extra_commands import prepare_before_search

    calls = []
    fake = get_benchmark("tests.fakes:FakeBenchmark")
    cfg = SimpleNamespace(evaluator="real", benchmark=fake, unlearn={"sleep_s": 0})
    fake.prepare = lambda options=None: calls.append(dict(options or {})) or {}
    with caplog.at_level(logging.INFO, logger="evounlearn"):
        prepare_before_search(cfg)
    assert calls == [{"sleep_s": 0}]
    assert any("prepared in" in r.getMessage() for r in caplog.records)
    prepare_before_search(SimpleNamespace(evaluator="tests.worker_jobs", benchmark=fake, unlearn={}))
    assert len(calls) == 1  # a test evaluator prepares nothing


# ------------------------------------------------------------------------------------------------
# missing models, compare of a missing path, control arms, Ray options, tune, eval RUN_DIR


@pytest.mark.parametrize("args", [
    ["eval", "--model", "MISSING"], ["eval", "--model", "runs/typo"], ["eval", "--model", "no-org/no-such-model"],
    ["unlearn", "--method", "npo", "--model", "MISSING"], ["unlearn", "--method", "npo", "--model", "no-org/no-model"],
], ids=["eval-path", "eval-runs-typo", "eval-hub-id", "unlearn-path", "unlearn-hub-id"])
def test_a_missing_model_is_one_line_before_anything_is_written(tmp_path, args):
    (tmp_path / "runs").mkdir()  # `runs/typo` names a folder under runs/, not a Hub id
    args = [str(tmp_path / "missing-model") if a == "MISSING" else a for a in args]
    env = {**_env(tmp_path), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "evounlearn", *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model") and "(--model)" in lines[0], p.stderr
    assert "does not exist" in lines[0] or "HF_HUB_OFFLINE" in lines[0]
    assert list((tmp_path / "runs").iterdir()) == [] and not (tmp_path / "cache").exists()


def test_model_source_checks(tmp_path, monkeypatch):
    from evounlearn.errors import ModelError
    from evounlearn.models import source

    model = tmp_path / "m"
    model.mkdir()
    with pytest.raises(ModelError, match="holds no model"):
        source.check_model_source(str(model))
    (model / "config.json").write_text("{}")
    source.check_model_source(str(model))
    monkeypatch.chdir(tmp_path)
    assert source.looks_like_path("./x") and source.looks_like_path("a/b/c") and source.looks_like_path("m/x")
    assert not source.looks_like_path("gpt2") and not source.looks_like_path("org/name")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snap = tmp_path / "hub" / "models--org--cached" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source.check_model_source("org/cached")  # in the local cache: fine offline
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        source.check_model_source("org/not-cached")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(source, "hub_reachable", lambda timeout=1.5: False)
    with pytest.raises(ModelError, match="not reachable"):
        source.check_model_source("org/not-cached")


def test_compare_of_a_missing_path_is_an_error(tmp_path):
    done = _finished_run(tmp_path / "runs" / "npo-1")
    _, p = evounlearn(["compare", str(done), str(tmp_path / "runs" / "typo")], tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [f"error: no such run: {tmp_path / 'runs' / 'typo'}"]


def test_a_control_arm_is_named_in_its_run_directory_and_summary(tmp_path):
    from evounlearn.cli.extra_commands import default_search_dir
    from evounlearn.search.config import load_search_config

    assert default_search_dir(load_search_config(None, ["control=random"])).name.startswith("evolve-random-forget10-")
    assert default_search_dir(load_search_config(None, [])).name.startswith("evolve-ours-forget10-")
    from evounlearn.search.report_text import _head

    assert _head({"mode": "ours", "control": "random"})[0].startswith("search: control random,")
    assert _head({"mode": "evomu", "control": None})[0].startswith("search: mode evomu,")


def test_ray_options_are_checked_before_anything_is_prepared(tmp_path):
    _, p = evounlearn(["evolve", "executor=ray", "ray.num_gpus=0.75"], tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and ("ray.num_gpus=0.75" in lines[0] or "needs Ray" in lines[0]), p.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_tune_prints_its_run_directory_first_and_leaves_nothing_without_optuna(tmp_path, monkeypatch, capsys):
    from evounlearn.cli.main import main
    from evounlearn.errors import ConfigError
    from evounlearn.search import tune

    order = []

    def fake_run(self):
        order.append(capsys.readouterr().out)
        self.run_dir.mkdir(parents=True)
        (self.run_dir / "leaderboard.md").write_text("# tune\n")
        return {}

    monkeypatch.setattr(tune.Tuner, "run", fake_run)
    rd = tmp_path / "t"
    assert main(["tune", "--method", "npo", "--benchmark", "tests.fakes:FakeBenchmark", "--run-dir", str(rd)]) == 0
    assert order and order[0].startswith(f"run directory: {rd}") and f"tune --resume {rd}" in order[0]

    def no_optuna():
        raise ConfigError("evounlearn tune needs Optuna: pip install 'evounlearn[tune]'")

    monkeypatch.setattr(tune.study, "import_optuna", no_optuna)
    monkeypatch.chdir(tmp_path)
    assert main(["tune", "--method", "npo", "--benchmark", "tests.fakes:FakeBenchmark"]) == 2
    assert "needs Optuna" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_tune_trial_lines_explain_the_utility_floor():
    from types import SimpleNamespace

    from evounlearn.search.points import RunOutcome
    from evounlearn.search.tune import Tuner

    host = SimpleNamespace(runner=SimpleNamespace(target_utility=0.8), cfg=SimpleNamespace(utility_floor=0.9))
    below = RunOutcome("search", 0, "", True, fitness=0.8512, utility=0.5, score=-1.1488)
    line = Tuner.trial_line(host, below)  # type: ignore[arg-type]
    assert "below the floor 0.7200" in line and "score -1.1488 (fitness - 2)" in line
    passes = RunOutcome("search", 0, "", True, fitness=0.8512, utility=0.75, score=0.8512)
    assert Tuner.trial_line(host, passes) == "fitness 0.8512, utility 0.7500 passes the floor 0.7200"  # type: ignore[arg-type]


def test_eval_takes_one_run_directory():
    from evounlearn.cli.main import split_run_dir
    from evounlearn.errors import ConfigError

    assert split_run_dir(["a=1"]) == (None, ["a=1"])
    assert split_run_dir([str(ROOT / "src"), "a=1"]) == (str(ROOT / "src"), ["a=1"])
    with pytest.raises(ConfigError, match="neither a run directory nor a key=value"):
        split_run_dir(["runs/typo"])
    with pytest.raises(ConfigError, match="one run directory"):
        split_run_dir([str(ROOT / "src"), str(ROOT / "tests")])


def test_bare_help_lists_every_subcommand(tmp_path):
    from evounlearn.cli.main import COMMANDS, build_parser

    registered = next(a for a in build_parser()._actions if a.choices and "unlearn" in a.choices).choices
    assert set(COMMANDS) == set(registered)
    _, p = evounlearn([], tmp_path)
    assert p.returncode == 0
    for name in COMMANDS:
        assert f"    {name} " in p.stdout and name in p.stdout.split("commands:")[-1]


@pytest.mark.slow
def test_eval_of_a_run_directory_reproduces_the_run_and_eval_model_keeps_the_oracle(tiny_prepared, tmp_path, capsys):
    from evounlearn.benchmarks.tofu.unlearn import build_config, run_unlearning
    from evounlearn.cli.main import main
    from evounlearn.config import save_config

    cfg, p = tiny_prepared
    ucfg = build_config("grad_ascent", None, ["train.epochs=1", "forget_part=search"])
    ucfg.prepare, ucfg.eval, ucfg.run_dir = cfg, cfg.eval, str(tmp_path / "run")
    run_unlearning(ucfg)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["summary"]
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("eval: the model of")  # says what it does before loading anything
    assert "the search part of forget10" in captured.out and "retain oracle" in captured.out
    summary = json.loads(captured.out.strip().splitlines()[-1])["run"]
    assert summary["forget_quality"] is not None
    for key in ("forget_quality", "privleak", "forget_rouge", "forget_prob", "model_utility"):
        assert summary[key] == pytest.approx(saved[key], rel=1e-6, abs=1e-9), key
    # --model without --retain-results: the prepared oracle from the cache, so forget quality is there
    save_config(cfg, tmp_path / "prepare.yaml")
    assert main(["eval", "--model", str(tmp_path / "run" / "model"), "--config", str(tmp_path / "prepare.yaml"),
                 "--json"]) == 0
    out = capsys.readouterr().out
    assert str(p.retain_results) in out
    assert json.loads(out.strip().splitlines()[-1])["model"]["forget_quality"] is not None


@pytest.mark.slow
def test_a_resumed_run_reports_the_training_time_of_every_session(tiny_prepared, tmp_path):
    from evounlearn.benchmarks.tofu import build_config, run_unlearning

    from .fakes import Interrupted, interrupt_after

    def cfg(*extra: str):
        c = build_config("npo", None, ["train.epochs=3", "train.batch_size=2", *extra])
        c.prepare, c.eval, c.run_dir = tiny_prepared[0], tiny_prepared[0].eval, str(tmp_path / "run")
        return c

    with pytest.raises(Interrupted):
        run_unlearning(cfg("train.checkpoint_every_steps=1"), evaluate=False, on_step=interrupt_after(3))
    record = run_unlearning(cfg(), resume=True, evaluate=False)
    assert record["steps"] == 6
    assert record["seconds"] > record["session_seconds"] > 0  # the first session's time is counted too
