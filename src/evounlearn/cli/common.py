"""What the commands share: the benchmark a command works on, printing its report (once), and the
executor options checked before anything is prepared."""

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


def check_executor(cfg: Any) -> None:
    """A search's or tune's executor options, checked before anything is prepared or written
    (the arithmetic the executor would do when it starts, e.g. Ray's whole GPUs per actor, and
    whether Ray is installed). Starts nothing."""
    if getattr(cfg, "executor", "local") != "ray":
        return
    import importlib.util

    from ..errors import ConfigError
    from ..search.executors import EXECUTORS

    if importlib.util.find_spec("ray") is None:
        raise ConfigError('executor "ray" needs Ray: pip install "evounlearn[ray]" (or "ray>=2.9")')
    EXECUTORS["ray"]()(int(cfg.workers), None, 1, options=cfg.ray)  # type: ignore[call-arg]
