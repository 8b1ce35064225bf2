"""Search / report parts of a forget split: disjoint, whole authors, covering the split."""

from __future__ import annotations

import pytest

from evounlearn.benchmarks.parts import forget_part_indices
from evounlearn.errors import ConfigError


def test_parts_split_at_author_boundaries():
    search = forget_part_indices(40, "search", 0.5, group=10)
    report = forget_part_indices(40, "report", 0.5, group=10)
    assert search == list(range(20)) and report == list(range(20, 40))
    # 400 TOFU rows, 20 questions per author, 30% search -> 6 whole authors
    assert len(forget_part_indices(400, "search", 0.3, group=20)) == 120
    assert forget_part_indices(40, "all") is None


def test_parts_are_never_empty():
    assert forget_part_indices(10, "search", 0.5, group=10) == list(range(5))
    assert forget_part_indices(10, "report", 0.5, group=10) == list(range(5, 10))
    assert forget_part_indices(20, "report", 0.9, group=10) == list(range(10, 20))


def test_unknown_part():
    with pytest.raises(ConfigError, match="forget_part"):
        forget_part_indices(10, "middle")
