"""What the commands share: the benchmark a command works on, and printing its report (once)."""

from __future__ import annotations

import argparse
import os
from typing import Any


def benchmark_of(args: argparse.Namespace) -> Any:
    """The benchmark a command works on (`--benchmark`, default the generated TOFU-shaped one)."""
    from ..benchmarks import DEFAULT_BENCHMARK, get_benchmark

    return get_benchmark(getattr(args, "benchmark", None) or DEFAULT_BENCHMARK)


def is_main_process() -> bool:
    """False in the other processes of an `accelerate launch` (they print nothing)."""
    return os.environ.get("RANK", "0") in ("", "0")


def print_report(report: Any) -> None:
    from ..reports.tables import metric_table

    if not is_main_process():
        return
    for line in report.lines:
        print(line)
    print(metric_table(report.summaries, report.keys))
