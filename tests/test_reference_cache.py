"""The target / oracle reference evaluations are cached on disk (`benchmarks.references`): a
second search start reads them instead of evaluating again, gets the same numbers, and a changed
model, part or option evaluates afresh."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from evounlearn.benchmarks import Reference
from evounlearn.benchmarks.references import cached_reference, reference_cache_path
from tests.fakes import RETAIN, TARGET, FakeBenchmark


class CountingBenchmark(FakeBenchmark):
    """FakeBenchmark with local model folders; counts its reference evaluations."""

    def __init__(self, models: Path) -> None:
        self.models = models
        self.calls = 0

    def paths(self, prepared: Any) -> dict[str, str | None]:
        return {"target": str(self.models / "target"), "retain": str(self.models / "retain")}

    def reference(self, prepared: Any, part: str = "all", fraction: float | None = None) -> Reference:
        self.calls += 1
        return Reference({**TARGET, "part": part, "tuple": (1, 2)}, dict(RETAIN))


def _models(tmp_path: Path) -> Path:
    for name in ("target", "retain"):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "model.safetensors").write_bytes(b"weights-" + name.encode())
    return tmp_path / "models"


def test_second_call_reads_the_cache_with_identical_values(tmp_path: Path) -> None:
    bench = CountingBenchmark(_models(tmp_path))
    opts = {"prepare": {"cache_dir": str(tmp_path / "cache")}, "eval": {"batch_size": 4}, "seed": 1}
    first = cached_reference(bench, {}, "search", opts)
    second = cached_reference(bench, {}, "search", {**opts, "seed": 7})  # the seed cannot change it
    assert bench.calls == 1
    assert first == second
    assert first.target["tuple"] == [1, 2]  # fresh values are the JSON round trip too
    assert first.retain == RETAIN
    path = reference_cache_path(bench, {}, "search", opts)
    assert path is not None and path.parent == tmp_path / "cache" / "references" and path.is_file()


def test_a_changed_model_part_or_option_evaluates_again(tmp_path: Path) -> None:
    models = _models(tmp_path)
    bench = CountingBenchmark(models)
    opts = {"prepare": {"cache_dir": str(tmp_path / "cache")}, "eval": {"batch_size": 4}}
    cached_reference(bench, {}, "search", opts)
    cached_reference(bench, {}, "report", opts)
    assert bench.calls == 2
    cached_reference(bench, {}, "search", {**opts, "eval": {"batch_size": 8}})
    assert bench.calls == 3
    weights = models / "target" / "model.safetensors"
    weights.write_bytes(b"retrained weights")
    os.utime(weights, ns=(1, 1))
    cached_reference(bench, {}, "search", opts)
    assert bench.calls == 4
    cached_reference(bench, {}, "search", opts)
    assert bench.calls == 4


def test_no_cache_without_local_models_and_a_corrupt_entry_is_recomputed(tmp_path: Path) -> None:
    hub = CountingBenchmark(tmp_path / "not-here")  # e.g. Hub ids: nothing to stamp
    opts = {"prepare": {"cache_dir": str(tmp_path / "cache")}}
    assert reference_cache_path(hub, {}, "search", opts) is None
    cached_reference(hub, {}, "search", opts)
    cached_reference(hub, {}, "search", opts)
    assert hub.calls == 2 and not (tmp_path / "cache").exists()
    assert reference_cache_path(FakeBenchmark(), {}, "search", opts) is None  # names no model

    bench = CountingBenchmark(_models(tmp_path))
    path = reference_cache_path(bench, {}, "search", opts)
    assert path is not None
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    ref = cached_reference(bench, {}, "search", opts)
    assert bench.calls == 1 and ref.retain == RETAIN
    cached_reference(bench, {}, "search", opts)
    assert bench.calls == 1  # the rewritten entry is read
