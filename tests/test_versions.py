"""Cached models and evaluations are keyed by the library versions that made them: an upgraded
install rebuilds (with a log line) instead of reusing another release's models."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from evounlearn.versions import library_versions, warn_if_versions_changed


def test_library_versions_are_the_installed_ones() -> None:
    import tokenizers
    import torch
    import transformers

    v = library_versions()
    assert v["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert v["transformers"] == transformers.__version__ and v["tokenizers"] == tokenizers.__version__


def test_a_version_change_is_said_once_and_an_unrelated_entry_is_not(tmp_path: Path, caplog) -> None:
    recipe = {"version": "tiny-v1", "train": {"epochs": 3}, "libraries": {"torch": "2.13.0", "transformers": "5.25.0"}}
    old = dict(recipe, libraries={"torch": "2.13.0", "transformers": "5.24.0"})
    other = dict(recipe, train={"epochs": 4}, libraries=old["libraries"])
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "prepare-forget10.json").write_text(json.dumps({"recipe": other}))
    with caplog.at_level(logging.WARNING):
        assert not warn_if_versions_changed(tmp_path.glob("*/prepare-forget10.json"), recipe, "prepare forget10")
    assert not caplog.records
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "prepare-forget10.json").write_text(json.dumps({"recipe": old}))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "prepare-forget10.json").write_text("{not json")  # a corrupt entry is skipped
    with caplog.at_level(logging.WARNING):
        assert warn_if_versions_changed(sorted(tmp_path.glob("*/prepare-forget10.json")), recipe, "prepare forget10")
    assert "transformers 5.24.0 -> 5.25.0" in caplog.text and "torch" not in caplog.text.split("differ")[1]


def test_the_prepare_key_covers_the_library_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same data and recipe under another transformers version: another cache entry."""
    from evounlearn.benchmarks.tofu import build
    from tests.conftest import tiny_prepare_config

    cfg = tiny_prepare_config(tmp_path / "cache")
    first, _, recipe = build._entry_of(cfg)
    assert recipe["libraries"] == library_versions()
    monkeypatch.setattr(build, "library_versions", lambda: {**library_versions(), "transformers": "0.0.1"})
    second, _, _ = build._entry_of(cfg)
    assert first.root != second.root and first.root.parent == second.root.parent


def test_the_large_benchmarks_carry_the_resolving_size() -> None:
    from evounlearn.benchmarks import get_benchmark
    from evounlearn.benchmarks.tofu import LARGE_PRESET

    gen = LARGE_PRESET["prepare"]["generated"]
    for name, setting in (("generated-large", ""), ("entangled-large", "entangled"), ("partial-large", "partial")):
        b = get_benchmark(name)
        assert b.setting == setting and b.preset == LARGE_PRESET
        s = b.prepare({"prepare": {"train": {"epochs": 7}}})  # lazy: builds nothing
        assert s.cfg.prepare.generated.authors == gen["authors"] == 160
        assert s.cfg.prepare.generated.holdout_authors == 16
        assert s.cfg.prepare.train.epochs == 7  # the user's options win over the preset
        assert s.cfg.prepare.generated.setting == (setting or "disjoint")
    # the command line's overrides: the preset first (the user's win), the setting last
    assert get_benchmark("partial-large")._overrides(["generated.authors=20"], "generated.setting") == [
        "generated.authors=160", "generated.holdout_authors=16", "train.epochs=32", "generated.authors=20",
        "generated.setting=partial"]
    assert get_benchmark("generated").preset == {}


@pytest.mark.slow
def test_probe_lengths_come_from_the_search_parts_rows(tiny_prepared) -> None:
    """The search's validation probes draw their lengths from the real rows: the target job reports
    the search part's answer (+EOS) and prompt token counts, and the driver's probe profile uses them."""
    from evounlearn.benchmarks import get_benchmark
    from evounlearn.config import to_dict
    from evounlearn.sandbox.probe_inputs import ProbeProfile
    from evounlearn.search.driver import SearchDriver

    pcfg, _ = tiny_prepared
    bench = get_benchmark("generated")
    setting = bench.prepare({"prepare": to_dict(pcfg)})
    lengths = bench.probe_lengths(setting, "search")
    n = len(bench.part_indices(setting, "search"))
    assert len(lengths["answer"]) == len(lengths["prompt"]) == n > 0
    assert min(lengths["answer"]) >= 2 and min(lengths["prompt"]) >= 2  # an answer token + EOS; BOS + words
    driver = SearchDriver.__new__(SearchDriver)  # only the profile: no run directory, no workers
    driver.cfg = type("Cfg", (), {"unlearn": {"train": {"batch_size": 4}}})()
    driver.target = {"target": {"search": {"summary": {"forget_prob": 0.5}}}, "probe_lengths": lengths}
    profile = ProbeProfile.from_dict(driver._probe_profile())
    assert profile.token_counts == tuple(lengths["answer"]) and profile.prompt_counts == tuple(lengths["prompt"])
    assert profile.tokens_max == max(lengths["answer"]) and profile.batch_size == 4
