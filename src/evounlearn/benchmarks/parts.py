"""The one forget-part splitter (held-out selection: the search scores candidates on one part,
the report on the other).

Every benchmark splits its forget side the same way: ``search`` = the first `fraction` of the
items (the search scores candidates on it), ``report`` = the rest (for reporting only), ``all``
= everything. `group` keeps groups whole (TOFU: the questions of one author), and each part keeps
at least one item (one group) when there are two or more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from ..errors import ConfigError

PARTS = ("all", "search", "report")
T = TypeVar("T")


def check_part(part: str) -> None:
    if part not in PARTS:
        raise ConfigError(f"part must be one of {', '.join(PARTS)}, not {part!r}")


def part_cut(n: int, fraction: float = 0.5, group: int = 1) -> int:
    """Where the search part ends: round(n * fraction), at a multiple of `group` when there are at
    least two groups, leaving at least one item (group) on each side."""
    if group > 1 and n >= 2 * group:
        cut = int(round(n * fraction / group)) * group
        return min(max(cut, group), n - group)
    if n < 2:
        return n
    return min(n - 1, max(1, int(round(n * fraction))))


def forget_part_indices(n: int, part: str, fraction: float = 0.5, group: int = 1) -> list[int] | None:
    """Indices of one part of `n` items (None for ``all``)."""
    if part == "all":
        return None
    if part not in PARTS:
        raise ConfigError(f"forget_part must be all, search or report, not {part!r}")
    cut = part_cut(n, fraction, group)
    return list(range(cut)) if part == "search" else list(range(cut, n))


def cut_part(items: Sequence[T], part: str, fraction: float = 0.5, group: int = 1) -> list[T]:
    """The items of one part."""
    idx = forget_part_indices(len(items), part, fraction, group)
    return list(items) if idx is None else [items[i] for i in idx]
