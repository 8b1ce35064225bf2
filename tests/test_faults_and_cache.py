"""Infrastructure faults are never charged to candidates; cache entries are atomic and safe for
concurrent runs sharing one cache.

- `files`: `atomic_dir`, `file_lock` (a second holder waits; no lock file left), `read_json`;
- `candidate.classify_failure`: one test per case of its rule, and through `evaluate_candidate`
  with small benchmarks that fail in prepare / in the candidate's run;
- the tiny prepared TOFU benchmark (a copy of its cache): a corrupt target config.json, a corrupt
  prepare info JSON, a deleted data split -> `infra: true`, `ok: false`, the reason names the file;
- two processes preparing the same entry at once: one builds, both succeed, the entry is
  complete, a third prepare writes nothing.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from evounlearn.errors import ConfigError, DataError, ModelError
from evounlearn.files import ArtifactError, atomic_dir, file_lock, lock_path, read_json
from evounlearn.search.candidate import classify_failure, evaluate_candidate

from .conftest import ROOT, tiny_prepare_config
from .fakes import FakeBenchmark

# ------------------------------------------------------------------------------------------------
# files.py: folders, locks, checked reads


def test_atomic_dir_replaces_the_folder_only_when_complete(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not out.exists()  # nothing at the target while it is being written
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("half")
        raise RuntimeError("killed while saving")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # the old folder is intact
    with atomic_dir(out) as tmp:
        (tmp / "c.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp folders left


def test_file_lock_makes_a_second_holder_wait_and_leaves_no_lock_file(tmp_path):
    entry = tmp_path / "entry"
    events: list[str] = []
    inside = threading.Event()

    def second() -> None:
        inside.wait(10)
        with file_lock(entry):
            events.append("second")

    t = threading.Thread(target=second)
    with file_lock(entry):
        assert lock_path(entry).exists()
        t.start()
        inside.set()
        time.sleep(0.3)  # the second holder is blocked meanwhile
        events.append("first done")
    t.join(10)
    assert events == ["first done", "second"]
    assert not lock_path(entry).exists() and list(tmp_path.iterdir()) == []


def test_read_json_names_a_missing_or_corrupt_file(tmp_path):
    p = tmp_path / "info.json"
    with pytest.raises(ArtifactError, match="info.json is missing"):
        read_json(p)
    p.write_text('{"half": ')
    with pytest.raises(ArtifactError, match=r"info.json is corrupt") as e:
        read_json(p, "prepare info")
    assert e.value.path == str(p) and isinstance(e.value, DataError)


# ------------------------------------------------------------------------------------------------
# the classification rule, case by case


def _raised_from(error: BaseException, cause: BaseException) -> BaseException:
    try:
        raise error from cause
    except BaseException as e:  # noqa: BLE001 - building a chained exception
        return e


@pytest.mark.parametrize("candidate_ran", [False, True])
def test_out_of_disk_is_infra_anywhere(candidate_ran):
    full = OSError(errno.ENOSPC, "No space left on device")
    assert classify_failure(full, candidate_ran=candidate_ran).startswith("out of disk")
    wrapped = _raised_from(RuntimeError("saving the checkpoint failed"), full)
    assert classify_failure(wrapped, candidate_ran=candidate_ran).startswith("out of disk")
    rust = RuntimeError('IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
    assert classify_failure(rust, candidate_ran=candidate_ran).startswith("out of disk")


def test_anything_before_the_candidate_ran_is_infra():
    for e in (RuntimeError("prepare crashed"), ValueError("bad reference"), ConfigError("unknown option")):
        reason = classify_failure(e, candidate_ran=False)
        assert reason and reason.startswith("infrastructure fault before the candidate ran") and str(e) in reason


@pytest.mark.parametrize("error", [
    ArtifactError("prepare info /c/prepare-forget10.json is corrupt", "/c/prepare-forget10.json"),
    DataError("split 'forget10' not found in /d (expected forget10.json)"),
    ModelError("model path /c/target does not exist"),
    FileNotFoundError(2, "No such file or directory", "/c/target/model.safetensors"),
    OSError("It looks like the config file at '/c/target/config.json' is not a valid JSON file."),
    json.JSONDecodeError("Expecting value", "", 0),
    type("SafetensorError", (Exception,), {})("Error while deserializing header: /c/target/model.safetensors"),
])
def test_a_missing_or_corrupt_file_while_the_candidate_runs_is_infra(error):
    reason = classify_failure(error, candidate_ran=True)
    assert reason and reason.startswith("missing or corrupt prepared artifact")


@pytest.mark.parametrize("error", [
    RuntimeError("the loss is not finite"), ValueError("loss function f returned a tensor of shape (2,)"),
    ConfigError("loss.beta must be a number"), ZeroDivisionError("division by zero"), MemoryError(),
])
def test_errors_of_the_candidates_own_run_are_the_candidates(error):
    assert classify_failure(error, candidate_ran=True) is None


class PrepareCrashes(FakeBenchmark):
    def prepare(self, options: Any = None) -> Any:
        raise RuntimeError("the cache is unreadable")


class LossCrashes(FakeBenchmark):
    def run(self, prepared: Any, run: Any, **kw: Any) -> Any:
        raise RuntimeError("loss exploded")


class DiskFull(FakeBenchmark):
    def run(self, prepared: Any, run: Any, **kw: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoint/state.pt")


@pytest.mark.parametrize("cls, infra, words", [
    ("PrepareCrashes", True, "before the candidate ran: RuntimeError: the cache is unreadable"),
    ("LossCrashes", False, "RuntimeError: loss exploded"),
    ("DiskFull", True, "out of disk"),
])
def test_evaluate_candidate_reports_whose_fault(tmp_path, cls, infra, words):
    res = evaluate_candidate(str(tmp_path / "run"), method="npo", benchmark=f"tests.test_faults_and_cache:{cls}")
    assert res["ok"] is False and res["infra"] is infra and words in res["error"]
    assert res["fitness"] == float("-inf")


# ------------------------------------------------------------------------------------------------
# a damaged cache entry of the tiny prepared TOFU benchmark


@pytest.fixture
def cache_copy(tiny_prepared, tmp_path):
    """(options for evaluate_candidate, Prepared) on a private copy of the tiny benchmark's cache."""
    from evounlearn.benchmarks.tofu import prepare
    from evounlearn.config import to_dict

    cfg, _ = tiny_prepared
    cache = tmp_path / "cache"
    shutil.copytree(cfg.cache_dir, cache)
    pcfg = replace(cfg, cache_dir=str(cache))
    options = {"prepare": to_dict(pcfg), "train": {"epochs": 1, "batch_size": 4}, "eval": {"max_new_tokens": 8}}
    return options, prepare(pcfg)


def _assert_infra_naming(res: dict[str, Any], file: Path) -> None:
    assert res["ok"] is False and res["infra"] is True, res
    assert str(file) in res["error"] or file.name in res["error"], res["error"]
    assert res["fitness"] == float("-inf") and res["stage"] == 0


@pytest.mark.slow
def test_a_corrupt_target_model_config_is_an_infra_fault(cache_copy, tmp_path):
    options, p = cache_copy
    (p.target / "config.json").write_text('{"model_type": "lla')  # a half-written file
    res = evaluate_candidate(str(tmp_path / "run"), method="grad_ascent", unlearn=options)
    _assert_infra_naming(res, p.target / "config.json")


@pytest.mark.slow
def test_a_corrupt_prepare_info_is_an_infra_fault(cache_copy, tmp_path):
    options, p = cache_copy
    info = p.root / f"prepare-{p.forget_split}.json"
    info.write_text(info.read_text()[:40])
    res = evaluate_candidate(str(tmp_path / "run"), method="grad_ascent", unlearn=options)
    _assert_infra_naming(res, info)


@pytest.mark.slow
def test_a_deleted_data_split_is_an_infra_fault(cache_copy, tmp_path):
    options, p = cache_copy
    data = tmp_path / "tofu-folder"  # the generated data as a local TOFU folder (same content: same cache entry)
    shutil.copytree(p.data, data)
    (data / f"{p.forget_split}.json").unlink()
    options = {**options, "data": str(data)}
    res = evaluate_candidate(str(tmp_path / "run"), method="grad_ascent", unlearn=options)
    _assert_infra_naming(res, data / f"{p.forget_split}.json")


# ------------------------------------------------------------------------------------------------
# two runs preparing the same entry at once

CHILD = """
import json, sys, time
from pathlib import Path
from evounlearn.benchmarks.tofu import build as tofu
from evounlearn.benchmarks.tofu import PrepareConfig, prepare
from evounlearn.config import load_config

trained = []
real = tofu._train_one
def counting(name, *a, **k):
    trained.append(name)
    return real(name, *a, **k)
tofu._train_one = counting
cfg = load_config(PrepareConfig, sys.argv[1], [])
Path(sys.argv[2] + ".ready").touch()
while not Path(sys.argv[3]).exists():  # start both at once
    time.sleep(0.01)
p = prepare(cfg)
print(json.dumps({"trained": trained, "root": str(p.root)}))
"""


def _files(root: Path) -> dict[str, int]:
    return {str(f.relative_to(root)): f.stat().st_mtime_ns for f in sorted(root.rglob("*"))}


@pytest.mark.slow
def test_two_processes_preparing_the_same_entry_build_it_once(tmp_path):
    from evounlearn.benchmarks.tofu.build import _Entry, prepare
    from evounlearn.config import save_config
    from evounlearn.search.candidate import check_model_folder
    from evounlearn.training.finetune import FinetuneConfig

    cfg = tiny_prepare_config(tmp_path / "cache")
    cfg.train = FinetuneConfig(epochs=1, batch_size=16, lr=5e-3)
    cfg.eval = replace(cfg.eval, max_new_tokens=4)
    cfg_file = tmp_path / "prepare.yaml"
    save_config(cfg, cfg_file)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(cfg_file), str(tmp_path / f"p{i}"), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    deadline = time.time() + 120
    while not all((tmp_path / f"p{i}.ready").exists() for i in range(2)) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sorted(len(r["trained"]) for r in results) == [0, 2]  # one built both models, the other waited
    assert results[0]["root"] == results[1]["root"]

    root = Path(results[0]["root"])
    entry = _Entry.at(root, cfg.forget_split)
    assert entry.complete()
    for folder in (entry.target, entry.retain):
        check_model_folder(folder)
    assert read_json(entry.info)["forget_split"] == cfg.forget_split
    assert not list(tmp_path.joinpath("cache").rglob("*.lock")) and not list(root.glob(".*"))

    before = _files(tmp_path / "cache")
    again = prepare(cfg)  # a cache hit: no write at all
    assert again.root == root and _files(tmp_path / "cache") == before
    assert again.info == read_json(entry.info)


@pytest.mark.slow
def test_a_cache_hit_writes_nothing(tiny_prepared):
    from evounlearn.benchmarks.tofu import prepare

    cfg, p = tiny_prepared
    before = _files(Path(cfg.cache_dir))
    prepare(cfg)
    assert _files(Path(cfg.cache_dir)) == before


# ------------------------------------------------------------------------------------------------
# a worker that cannot start


@pytest.mark.slow
def test_a_worker_that_cannot_start_is_an_infra_fault(monkeypatch):
    from evounlearn.sandbox.workers import IsolatedWorker

    w = IsolatedWorker(wall_limit_s=5, trusted_prefixes=("evounlearn.", "tests.worker_jobs"))

    def cannot_start() -> None:
        raise RuntimeError("isolated worker failed to start (exit code 1)")

    monkeypatch.setattr(w, "start", cannot_start)
    res = w.run("tests.worker_jobs:diagnostic_job", {"action": "echo", "value": 1})
    assert not res.ok and res.infra and "worker start failed" in (res.error or "")
    w.close()
