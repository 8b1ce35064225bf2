"""The command line's run machinery, generic over the Benchmark protocol.

`evounlearn prepare|eval|unlearn --benchmark NAME` call the benchmark's `cli_prepare`,
`cli_eval` and `cli_unlearn`; the defaults below work for any benchmark through `prepare`,
`reference` and `run`. A benchmark with richer machinery overrides them (the TOFU benchmarks:
`PrepareConfig` files, the full TOFU suite with attacks, resumable runs).

A generic unlearning run keeps in RUN_DIR:

    config.yaml    {benchmark, method, loss, train, options}: what reproduces the run
    train.json     loss history, timings
    results.json   the full evaluation + summary
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import load_yaml
from ..errors import ConfigError
from ..files import atomic_write_text

#: a run directory whose command failed after training started holds this file (one line: why);
#: `evounlearn compare` shows such runs as failed
FAILED_MARKER = "FAILED"
#: what a run directory holds before training starts (written from the config alone)
_SETUP_FILES = frozenset({"config.yaml", "unlearn_config.yaml", "loss.py"})


@dataclass
class Report:
    """What a CLI command prints: a table of summaries, its columns, and a few lines above it."""

    summaries: dict[str, dict[str, Any]]
    keys: tuple[str, ...]
    lines: list[str] = field(default_factory=list)
    run_dir: str = ""
    info: dict[str, Any] = field(default_factory=dict)  # what a caller reads besides the table (e.g. models_sha256)


@dataclass
class EvalRequest:
    """`evounlearn eval`'s options (only benchmarks that evaluate arbitrary models use them all)."""

    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    model: str | None = None
    adapter: str | None = None
    retain_results: str | None = None
    reference_model: str | None = None
    out: str | None = None
    attacks: str | None = None
    attack_samples: int = 16
    attack_temperature: float = 1.0
    run_dir: str | None = None  # `evounlearn eval RUN_DIR`: that run's model with that run's config
    attack_options: list[str] = field(default_factory=list)  # key=value on `attacks.config.AttacksConfig`


def load_options(config: str | None, overrides: Iterable[str]) -> dict[str, Any]:
    """A benchmark's options: the YAML file <- key=value overrides (nested dicts)."""
    from ..config import nest, parse_overrides

    # a benchmark's options are free-form (each benchmark reads its own): nested, not schema-checked
    return nest({**(load_yaml(config) if config else {}), **parse_overrides(list(overrides))})


def _with_fitness(bench: Any, summaries: dict[str, dict[str, Any]], target: Mapping[str, Any]) -> dict[str, Any]:
    from .base import compute_fitness

    return {k: {**v, "fitness": compute_fitness(bench, v, target)} for k, v in summaries.items()}


def prepare_report(bench: Any, options: Mapping[str, Any]) -> Report:
    """Prepare (cached) and report the target's and the oracle's metrics on the whole forget set."""
    bench.check_data(options)
    prepared = bench.prepare(options)
    ref = bench.reference(prepared, "all")
    summaries = {"target": ref.target} | ({"retain": ref.retain} if ref.retain else {})
    lines = [f"{k}: {v}" for k, v in bench.paths(prepared).items() if v]
    return Report(_with_fitness(bench, summaries, ref.target), (*bench.metric_keys, "fitness"), lines)


def unlearn_report(bench: Any, method: str | None, options: dict[str, Any], run_dir: str | None = None) -> Report:
    """Unlearn with one method on the options' `forget_part` (default all) and evaluate; the run
    directory gets config.yaml (what reproduces the run), train.json and results.json."""
    from ..training.resolve import MethodRun

    name = method or options.pop("method", None)
    if not name:
        raise ConfigError("--method is required")
    from ..methods.base import check_method_name

    check_method_name(str(name))
    loss, train = dict(options.pop("loss", None) or {}), dict(options.pop("train", None) or {})
    part = str(options.pop("forget_part", "all"))
    seed = train.pop("seed", None)
    rd = Path(run_dir or options.pop("run_dir", "") or Path("runs") / f"{name}-{bench.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    options.pop("run_dir", None)
    if run_dir and (done := finished_run_report(rd, (*bench.metric_keys, "fitness", "seconds"))) is not None:
        return done  # --resume on a finished run changes nothing
    bench.check_data(options)  # before anything is written or trained
    run = MethodRun(str(name), loss, train)
    from ..training.resolve import resolve_method

    resolve_method(run, bench.method_yaml())  # loss params and training options, before preparing
    with guard_run_dir(rd):
        rd.mkdir(parents=True, exist_ok=True)
        atomic_write_text(rd / "config.yaml", yaml.safe_dump({"benchmark": bench.name, "forget_part": part,
                                                              "seed": seed, **asdict(run), "options": options},
                                                             sort_keys=False))
        prepared = bench.prepare(options)
        ref = bench.reference(prepared, part)
        res = bench.run(prepared, run, part=part, seed=seed, run_dir=rd)
    summaries = {"target": ref.target} | ({"retain": ref.retain} if ref.retain else {})
    summaries[run.method] = {**res.summary, "seconds": res.train.get("seconds")}
    where = "the whole forget set" if part == "all" else f"the {part} part of the forget set (forget_part={part})"
    return Report(_with_fitness(bench, summaries, ref.target), (*bench.metric_keys, "fitness", "seconds"),
                  [f"unlearned and evaluated on {where}"], str(rd))


def resume_options(run_dir: str) -> tuple[str, dict[str, Any]]:
    """(method, options) of a generic run directory, to run it again."""
    p = Path(run_dir) / "config.yaml"
    if not p.exists():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    data = load_yaml(p)
    options = dict(data.get("options") or {})
    options.update(loss=data.get("loss") or {}, train={**(data.get("train") or {}),
                                                       **({"seed": data["seed"]} if data.get("seed") is not None
                                                          else {})},
                   forget_part=data.get("forget_part", "all"))
    return str(data.get("method")), options


@contextlib.contextmanager
def guard_run_dir(run_dir: str | Path) -> Iterator[None]:
    """Leave no half-made run directory behind: when the command fails before training started
    (the folder holds only its config), a folder this command created is removed; a run that
    failed later gets a FAILED marker (`compare` shows it as failed; --resume may continue it)."""
    rd = Path(run_dir)
    existed = rd.exists()
    try:
        yield
    except BaseException as exc:
        if rd.is_dir() and not (rd / "results.json").exists():
            started = {p.name for p in rd.iterdir()} - _SETUP_FILES
            if not started and not existed:
                shutil.rmtree(rd, ignore_errors=True)
            elif isinstance(exc, Exception):
                reason = " ".join(str(exc).split()) or type(exc).__name__
                (rd / FAILED_MARKER).write_text(f"{type(exc).__name__}: {reason}\n")
        raise
    else:
        (rd / FAILED_MARKER).unlink(missing_ok=True)


def finished_run_report(run_dir: str | Path, keys: tuple[str, ...]) -> Report | None:
    """The report of a run that already finished (its results.json exists), read from disk so
    that `--resume` on it changes nothing; None for a run still to be finished."""
    res = Path(run_dir) / "results.json"
    if not res.is_file():
        return None
    data = json.loads(res.read_text())
    summary = {**dict(data.get("summary") or {}), "seconds": data.get("train_seconds")}
    name = str(data.get("method") or Path(run_dir).name)
    return Report({name: summary}, keys, [f"{run_dir} already finished: nothing to resume (results unchanged)"],
                  str(run_dir))


class GenericCommands:
    """The `evounlearn prepare|eval|unlearn` commands of a benchmark, through the protocol alone
    (`check_data`, `prepare`, `reference`, `run`). A benchmark takes them by listing this class
    before `Benchmark` among its bases."""

    name: str

    def cli_prepare(self, config: str | None, overrides: list[str], force: bool = False, *,
                    export: str | None = None, import_from: str | None = None) -> Report:
        if export or import_from:
            raise ConfigError(f"benchmark {self.name}: --export / --import are for the TOFU-shaped benchmarks "
                              "(its preparation is rebuilt from its data on every machine)")
        if force:
            raise ConfigError(f"benchmark {self.name}: --force is not supported (delete its cache folder)")
        return prepare_report(self, load_options(config, overrides))

    def cli_eval(self, request: EvalRequest) -> Report:
        if request.run_dir:
            raise ConfigError(f"benchmark {self.name}: `eval RUN_DIR` evaluates TOFU-shaped runs; a {self.name} "
                              "run's results.json already holds its evaluation (evounlearn compare RUN_DIR)")
        if request.model:
            raise ConfigError(f"benchmark {self.name} evaluates its prepared target and retain oracle only "
                              "(no --model)")
        options = load_options(request.config, request.overrides)
        self.check_data(options)  # type: ignore[attr-defined]  # bad data: one line, before the note below
        import os
        import sys

        if os.environ.get("RANK", "0") in ("", "0"):
            print(f"eval: the prepared target and retain oracle of {self.name} (loading; the table follows)",
                  file=sys.stderr, flush=True)
        return prepare_report(self, options)

    def cli_unlearn(self, method: str | None, config: str | None, overrides: list[str], *,
                    resume: str | None = None) -> Report:
        if resume:
            method, options = resume_options(resume)
            return unlearn_report(self, method, options, resume)
        return unlearn_report(self, method, load_options(config, overrides))
