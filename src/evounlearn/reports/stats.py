"""The one comparison statistic of two arms' repeated values (seeds): the difference of their
means and its standard error SE = sqrt(sd_a^2 / n_a + sd_b^2 / n_b). `a` is resolved above `b`
when the difference exceeds 2 SE (and an optional minimum size), below when it is under -2 SE,
and within the noise otherwise. Used by the leaderboard's noise line and the benchmark scripts."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Difference:
    delta: float
    se: float | None  # None with fewer than 2 values on a side: no standard error to say
    n_a: int
    n_b: int
    min_delta: float = 0.0

    @property
    def above(self) -> bool:
        """a beats b: delta > 2 SE and delta > min_delta."""
        return self.se is not None and self.delta > 2 * self.se and self.delta > self.min_delta

    @property
    def below(self) -> bool:
        """a is worse than b: delta < -2 SE."""
        return self.se is not None and self.delta < -2 * self.se

    @property
    def within_noise(self) -> bool:
        return self.se is not None and abs(self.delta) < 2 * self.se


def difference_of_means(mean_a: float, sd_a: float | None, n_a: int, mean_b: float, sd_b: float | None,
                        n_b: int, min_delta: float = 0.0) -> Difference:
    """From each arm's mean, sd and number of values."""
    se = None
    if n_a > 1 and n_b > 1 and sd_a is not None and sd_b is not None:
        se = math.sqrt(float(sd_a) ** 2 / n_a + float(sd_b) ** 2 / n_b)
    return Difference(float(mean_a) - float(mean_b), se, n_a, n_b, min_delta)


def difference_of_values(a: Iterable[float | None], b: Iterable[float | None], min_delta: float = 0.0) -> Difference | None:
    """From each arm's values (None and non-finite ones left out); None when a side has none."""
    xa = [float(x) for x in a if isinstance(x, (int, float)) and math.isfinite(x)]
    xb = [float(x) for x in b if isinstance(x, (int, float)) and math.isfinite(x)]
    if not xa or not xb:
        return None
    sd_a = statistics.stdev(xa) if len(xa) > 1 else None
    sd_b = statistics.stdev(xb) if len(xb) > 1 else None
    return difference_of_means(statistics.fmean(xa), sd_a, len(xa), statistics.fmean(xb), sd_b, len(xb), min_delta)
