"""A prepared benchmark as an artifact (`benchmarks/tofu/artifact.py`): export, import into another
cache, and every refusal (other recipe, another preparation held, corrupt or hostile archive)."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import pytest

from evounlearn.errors import ConfigError, DataError

pytestmark = pytest.mark.slow  # the session's tiny benchmark is trained once (a few seconds)


def _export(tiny_prepared, path: Path):
    from evounlearn.benchmarks.tofu.artifact import export_prepared

    cfg, _ = tiny_prepared
    return export_prepared(cfg, path)


def _cfg_in(cache: Path, tiny_prepared):
    import copy

    cfg = copy.deepcopy(tiny_prepared[0])  # the session's config stays as it is
    cfg.cache_dir = str(cache)
    return cfg


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    from evounlearn.benchmarks.tofu import build

    def refuse(*a, **k):
        raise AssertionError("an imported benchmark must not be trained again")

    monkeypatch.setattr(build, "_train_one", refuse)


def _rewrite(src: Path, dst: Path, change) -> None:
    """A copy of the tar artifact `src` with `change(name, bytes) -> bytes | None` applied to
    every member (None drops it)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            data = change(m.name, tin.extractfile(m).read())
            if data is None:
                continue
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))


def test_an_exported_benchmark_imports_into_another_cache_unchanged(tiny_prepared, tmp_path, monkeypatch) -> None:
    from evounlearn.benchmarks.tofu import build
    from evounlearn.benchmarks.tofu.artifact import import_prepared, models_sha256

    _, here = tiny_prepared
    prepared, manifest = _export(tiny_prepared, tmp_path / "a.tar.gz")
    assert manifest.models_sha256 == models_sha256(here.target, here.retain)
    _export(tiny_prepared, tmp_path / "b.tar.gz")  # the same entry gives the same bytes
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()

    _no_training(monkeypatch)
    cfg2 = _cfg_in(tmp_path / "other-cache", tiny_prepared)
    there, m2, wrote = import_prepared(cfg2, tmp_path / "a.tar.gz")
    assert wrote and m2 == manifest and there.root != here.root
    assert models_sha256(there.target, there.retain) == manifest.models_sha256
    for a, b in ((here.target, there.target), (here.retain, there.retain)):
        for f in Path(a).iterdir():
            assert (Path(b) / f.name).read_bytes() == f.read_bytes(), f.name
    assert json.loads(Path(there.target_results).read_text()) == json.loads(Path(here.target_results).read_text())
    assert there.info["imported"]["from"].endswith("a.tar.gz")
    assert there.info["models_sha256"] == manifest.models_sha256
    # the cache now has it: prepare finds it (no training), a second import writes nothing
    again = build.prepare(cfg2)
    assert again.target == there.target
    assert import_prepared(cfg2, tmp_path / "a.tar.gz")[2] is False


def test_another_preparation_in_the_cache_is_kept_unless_forced(tiny_prepared, tmp_path) -> None:
    from evounlearn.benchmarks.tofu.artifact import import_prepared, models_sha256

    _export(tiny_prepared, tmp_path / "a.tar")
    cfg2 = _cfg_in(tmp_path / "c2", tiny_prepared)
    there, manifest, _ = import_prepared(cfg2, tmp_path / "a.tar")
    weights = next(Path(there.target).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # as if another machine had trained it
    mine = weights.read_bytes()
    with pytest.raises(ConfigError, match="holds another preparation .*target.*--force"):
        import_prepared(cfg2, tmp_path / "a.tar")
    assert weights.read_bytes() == mine  # nothing lost
    there, _, wrote = import_prepared(cfg2, tmp_path / "a.tar", force=True)
    assert wrote and models_sha256(there.target, there.retain) == manifest.models_sha256


def test_an_artifact_of_another_recipe_is_refused_before_anything_is_written(tiny_prepared, tmp_path) -> None:
    from evounlearn.benchmarks.tofu.artifact import import_prepared

    _export(tiny_prepared, tmp_path / "a.tar")
    cfg2 = _cfg_in(tmp_path / "c2", tiny_prepared)
    cfg2.train.epochs += 1
    with pytest.raises(ConfigError, match="prepared from other train than these options give"):
        import_prepared(cfg2, tmp_path / "a.tar")
    assert not (tmp_path / "c2" / "prepare").exists()


def test_other_library_versions_are_said_in_one_line_and_the_models_used(tiny_prepared, tmp_path, monkeypatch,
                                                                          caplog) -> None:
    from evounlearn.benchmarks.tofu import artifact, build
    from evounlearn.versions import library_versions

    _export(tiny_prepared, tmp_path / "a.tar")
    newer = {**library_versions(), "transformers": "99.0.0"}
    monkeypatch.setattr(build, "library_versions", lambda: newer)
    monkeypatch.setattr("evounlearn.versions.library_versions", lambda: newer)
    with caplog.at_level(logging.WARNING):
        there, manifest, wrote = artifact.import_prepared(_cfg_in(tmp_path / "c2", tiny_prepared), tmp_path / "a.tar")
    assert wrote and "transformers 99.0.0" in caplog.text and "using its models as they are" in caplog.text
    assert there.info["imported"]["trained_with"] == manifest.recipe["libraries"] != newer


@pytest.mark.parametrize("damage", ["altered", "missing", "hostile", "not-a-tar", "no-manifest"])
def test_a_bad_artifact_is_one_line_and_writes_nothing(tiny_prepared, tmp_path, damage) -> None:
    from evounlearn.benchmarks.tofu.artifact import MANIFEST_NAME, import_prepared

    _export(tiny_prepared, tmp_path / "a.tar")
    bad = tmp_path / "bad.tar"
    if damage == "altered":
        _rewrite(tmp_path / "a.tar", bad, lambda n, b: b + b" " if n == "target_results.json" else b)
        expect = "target_results.json does not match its sha256"
    elif damage == "missing":
        _rewrite(tmp_path / "a.tar", bad, lambda n, b: None if n == "retain/config.json" else b)
        expect = "retain/config.json is missing"
    elif damage == "hostile":
        def change(n, b):
            if n != MANIFEST_NAME:
                return b
            m = json.loads(b)
            m["files"]["../../escape.txt"] = m["files"]["target_results.json"]
            return json.dumps(m).encode()
        _rewrite(tmp_path / "a.tar", bad, change)
        expect = "lists '../../escape.txt', not a file of a prepared benchmark"
    elif damage == "not-a-tar":
        bad.write_bytes(b"hello")
        expect = "not a readable tar archive"
    else:
        _rewrite(tmp_path / "a.tar", bad, lambda n, b: None if n == MANIFEST_NAME else b)
        expect = "not an evounlearn artifact"
    with pytest.raises(DataError, match=expect) as err:
        import_prepared(_cfg_in(tmp_path / "c2", tiny_prepared), bad)
    assert len(str(err.value).splitlines()) == 1
    assert not (tmp_path / "c2" / "prepare").exists() and not (tmp_path / "escape.txt").exists()


def test_the_command_line_exports_and_imports(tiny_prepared, tmp_path, capsys) -> None:
    from evounlearn.benchmarks.tofu.artifact import models_sha256
    from evounlearn.cli.main import main
    from evounlearn.config import save_config

    cfg, here = tiny_prepared
    save_config(cfg, tmp_path / "prepare.yaml")
    assert main(["prepare", "--config", str(tmp_path / "prepare.yaml"), "--export", str(tmp_path / "a.tgz")]) == 0
    out = capsys.readouterr().out
    sha = models_sha256(here.target, here.retain)
    assert f"models sha256: {sha}" in out and "exported to" in out
    assert main(["prepare", "--config", str(tmp_path / "prepare.yaml"), f"cache_dir={tmp_path / 'c2'}",
                 "--import", str(tmp_path / "a.tgz")]) == 0
    out = capsys.readouterr().out
    assert "imported" in out and f"models sha256: {sha}" in out and str(tmp_path / "c2") in out
    assert main(["prepare", "--config", str(tmp_path / "prepare.yaml"), "--import", str(tmp_path / "a.tgz"),
                 "--export", str(tmp_path / "b.tgz")]) == 2
    assert "one at a time" in capsys.readouterr().err


def test_benchmarks_without_artifacts_say_so(tmp_path, capsys) -> None:
    from evounlearn.cli.main import main

    assert main(["prepare", "--benchmark", "muse-news", "--export", str(tmp_path / "x.tar")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--export / --import are for the TOFU-shaped benchmarks" in err[0]
    assert not (tmp_path / "x.tar").exists()


def test_the_benchmark_names_its_models(tiny_prepared) -> None:
    from evounlearn.benchmarks import get_benchmark
    from evounlearn.benchmarks.tofu.artifact import models_sha256
    from evounlearn.config import to_dict

    cfg, here = tiny_prepared
    bench = get_benchmark("generated")
    prepared = bench.prepare({"prepare": to_dict(cfg)})
    assert bench.models_sha256(prepared) == models_sha256(here.target, here.retain)
    assert get_benchmark("muse-news").models_sha256(object()) is None


def test_import_for_benchmark_is_the_command_from_python(tiny_prepared, tmp_path) -> None:
    """What noise.py and search_value.py call: the benchmark's own option handling, the models'
    hash and whether anything was written."""
    from evounlearn.benchmarks.tofu import TofuBenchmark
    from evounlearn.benchmarks.tofu.artifact import import_for_benchmark, models_sha256
    from evounlearn.config import save_config

    cfg, here = tiny_prepared
    _export(tiny_prepared, tmp_path / "a.tar.gz")
    cfg2 = _cfg_in(tmp_path / "c2", tiny_prepared)
    save_config(cfg2, tmp_path / "prepare.yaml")

    class Tiny(TofuBenchmark):  # a benchmark whose options are the tiny config (as -large's are its preset)
        name = "tiny-artifact-test"

        def cli_prepare(self, config, overrides, force=False, *, export=None, import_from=None):
            return super().cli_prepare(str(tmp_path / "prepare.yaml"), overrides, force, export=export,
                                       import_from=import_from)

    import evounlearn.benchmarks.base as base

    base.BENCHMARKS[Tiny.name] = Tiny()
    try:
        sha, wrote = import_for_benchmark(Tiny.name, tmp_path / "a.tar.gz")
        assert wrote and sha == models_sha256(here.target, here.retain)
        assert import_for_benchmark(Tiny.name, tmp_path / "a.tar.gz") == (sha, False)
    finally:
        del base.BENCHMARKS[Tiny.name]
