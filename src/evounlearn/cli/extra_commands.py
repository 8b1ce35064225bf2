"""Subcommands beyond prepare/eval: unlearn, compare, evolve (the EvoMU search) and report."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import check_executor

log = logging.getLogger("evounlearn")

COMPARE_KEYS = ("forget_quality", "model_utility", "forget_rouge", "forget_prob", "privleak",
                "extraction_strength", "seconds")  # `compare` reads results.json of any run


def cmd_unlearn(args: argparse.Namespace) -> int:
    from ..methods.base import check_method_name, method_names
    from .common import benchmark_of, is_main_process, print_report

    if not args.resume:
        if not args.method:
            raise ConfigError(f"--method is required (known: {', '.join(method_names())})")
        check_method_name(args.method)  # before anything is imported or written
    ov = list(args.overrides or [])
    if not args.resume:
        for flag, key in ((args.split, "forget_split"), (args.tofu_dir or args.data, "data"), (args.model, "model"),
                          (args.loss_file, "loss.loss_file"), (args.run_dir, "run_dir")):
            if flag:
                ov.append(f"{key}={flag}")
    report = benchmark_of(args).cli_unlearn(args.method, args.config, ov, resume=args.resume)
    if is_main_process():
        print(f"run directory: {report.run_dir}")
    print_report(report)
    return 0


def _load_run(path: Path) -> tuple[str, dict] | None:
    """(row name, summary) of one run for `compare`; a run marked FAILED shows as failed, a folder
    without results.json is skipped with a warning (None)."""
    import sys

    from ..benchmarks.runs import FAILED_MARKER

    res = path / "results.json" if path.is_dir() else path
    if path.is_dir() and (path / FAILED_MARKER).is_file() and not res.is_file():
        reason = (path / FAILED_MARKER).read_text().strip()
        return f"{path.name} (FAILED: {reason[:80]})", {}
    if not res.is_file():
        print(f"warning: skipping {path}: no results.json (not a finished run)", file=sys.stderr)
        return None
    try:
        data = json.loads(res.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{res} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    summary = dict(data.get("summary", {}))
    summary["seconds"] = data.get("train_seconds")
    name = data.get("method") or res.parent.name
    return (f"{name} ({res.parent.name})" if path.is_dir() else name), summary


def cmd_compare(args: argparse.Namespace) -> int:
    from ..reports.tables import table

    missing = [p for p in args.runs if not Path(p).exists()]
    if missing:  # a typo is an error, not a silently shorter table
        raise ConfigError(f"no such run: {', '.join(missing)}")
    rows = []
    for p in args.runs:
        loaded = _load_run(Path(p))
        if loaded is not None:
            rows.append({"run": loaded[0], **loaded[1]})
    if not rows:
        raise ConfigError("no finished run to compare (none of the folders holds a results.json)")
    print(table(rows, ["run", *COMPARE_KEYS], markdown=args.markdown))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..methods.base import method_names  # torch-free: the registry and the methods' YAML defaults

    p = sub.add_parser("unlearn", help="run one unlearning method and evaluate it against the retain oracle")
    p.add_argument("--method", help=f"required: {', '.join(method_names())} (default: none)")
    p.add_argument("--benchmark", help="a registered benchmark or alias (default: generated)")
    p.add_argument("--split", help="forget split (default: forget10)")
    p.add_argument("--data", help="'generated', a TOFU-shaped folder, or a Hub dataset id (default: generated)")
    p.add_argument("--tofu-dir", help="local folder with TOFU's files, same as --data PATH (default: none)")
    p.add_argument("--model", help="model to unlearn (default: the prepared target)")
    p.add_argument("--loss-file", help="for --method evolved: a .py file with loss_fn (default: none)")
    p.add_argument("--run-dir", help="where to write the run (default: runs/<method>-<split>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint; a "
                   "finished run is only reported (default: none)")
    p.add_argument("--config", help="YAML file with the benchmark's run options (TOFU: UnlearnConfig fields; "
                   "default: none)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.lr=1e-4 loss.beta=0.2 train.lora=true")
    p.set_defaults(func=cmd_unlearn)

    p = sub.add_parser("compare", help="one table of several runs")
    p.add_argument("runs", nargs="+", help="run directories or results.json files")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.set_defaults(func=cmd_compare)

    register_search(sub)


def check_search_data(cfg: Any) -> None:
    """The search's benchmark name and every data split its runs read, before anything starts."""
    from ..benchmarks import get_benchmark

    get_benchmark(cfg.benchmark).check_data(dict(cfg.unlearn))
    if cfg.unlearn.get("model"):  # a given model: there, or one line before anything is prepared
        from ..models.source import check_model_source

        check_model_source(str(cfg.unlearn["model"]), "unlearn.model")


def prepare_before_search(cfg: Any) -> None:
    """Prepare the benchmark here, in the CLI process (trusted code), with its progress bars and
    ETA on the terminal, so that the search's target job finds the models in the cache. The
    options are the driver's (its pinned cache folder included)."""
    import time

    from ..benchmarks import get_benchmark

    if cfg.evaluator != "real":  # a test's evaluator module prepares nothing real
        return
    bench = get_benchmark(cfg.benchmark)
    bench.check_data(dict(cfg.unlearn))
    log.info("preparing %s: the target model and the retain oracle (cached after the first run)", bench.name)
    t0 = time.time()
    bench.paths(bench.prepare(dict(cfg.unlearn)))  # a lazy benchmark (TOFU) trains its models here
    log.info("prepared in %.1f s", time.time() - t0)


def default_search_dir(cfg: Any) -> Path:
    """runs/evolve-<the control arm, else the mode>-<split>-<time>: a control run is named as one."""
    import time

    split = cfg.unlearn.get("forget_split", "forget10")
    return Path("runs") / f"evolve-{cfg.control or cfg.mode}-{split}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_evolve(args: argparse.Namespace) -> int:
    from ..search.config import load_search_config

    ov = list(args.overrides or [])
    if args.resume:
        from ..config import parse_overrides

        extra = parse_overrides(ov)
        for key, val in (("budget", args.budget), ("workers", args.workers)):
            if val is not None:
                extra[key] = val
        if args.mode or args.control or args.config or args.proposer or args.split or args.data or args.benchmark:
            raise ConfigError("--resume continues a search with its saved config; only --budget, --workers "
                              "and key=value overrides may change")
        from ..search.driver import SearchDriver  # after the checks: it imports torch

        driver = SearchDriver.for_resume(args.resume, extra)
        run_dir = Path(args.resume)
    else:
        for flag, key in ((args.mode, "mode"), (args.control, "control"), (args.budget, "budget"), (args.workers, "workers"),
                          (args.proposer, "proposer.kind"), (args.split, "unlearn.forget_split"),
                          (args.data, "unlearn.data"), (args.seed, "seed"), (args.benchmark, "benchmark")):
            if flag is not None:
                ov.append(f"{key}={flag}")
        cfg = load_search_config(args.config, ov)
        check_search_data(cfg)  # bad data: one line now, not in the target job after a minute
        check_executor(cfg)  # e.g. Ray's GPU arithmetic: one line, before preparing or writing anything
        from ..search.driver import SearchDriver  # after the checks: it imports torch

        run_dir = Path(args.run_dir or cfg.run_dir or default_search_dir(cfg))
        driver = SearchDriver(cfg, run_dir)
    if args.resume:
        check_executor(driver.cfg)  # the saved config with this command's overrides
    prepare_before_search(driver.cfg)
    print(f"run directory: {run_dir}  (continue after an interruption: evounlearn evolve --resume "
          f"{_quoted(run_dir.resolve())})", flush=True)
    data = driver.run()
    from ..search.report_text import format_report

    print(format_report(data))
    print(f"\nwritten: {run_dir / 'leaderboard.md'}, {run_dir / 'leaderboard.json'}, "
          f"{run_dir / 'best_loss.py'}, {run_dir / 'fitness.png'}")
    if (run_dir / "best_loss.py").is_file():
        from ..search.report import use_command

        print(f"re-run the best loss on the search part (add forget_part=report train.seed=0 for the report part): "
              f"{use_command(str(driver.cfg.benchmark), run_dir)}")
    return 0


def _quoted(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


def cmd_report(args: argparse.Namespace) -> int:
    from ..search.report import write_outputs
    from ..search.report_text import format_report
    from ..search.store import Store

    store = Store.open_run(args.run_dir)  # ConfigError when the directory holds no search
    try:
        data = write_outputs(args.run_dir, store)
    finally:
        store.close()
    print(format_report(data, markdown=args.markdown))
    if args.json:
        print(json.dumps({k: v for k, v in data.items() if k != "points"}))
    return 0


def register_search(sub: argparse._SubParsersAction) -> None:
    from ..search.config import CONTROLS, MODES  # torch-free
    from ..search.proposers.registry import PROPOSERS  # torch-free: kinds to "module:Class"

    p = sub.add_parser("evolve", help="EvoMU search for an unlearning loss (sandboxed, resumable, parallel)")
    p.add_argument("--mode", choices=list(MODES), help="ours (default): archive, crossover, staged "
                   "evaluation; evomu: the paper's 80-candidate schedule")
    p.add_argument("--control", choices=list(CONTROLS), help="a control arm instead of the search, same "
                   "budget and finalists: random trees without selection, or the literature seeds with tuned "
                   "constants and epochs only (default: none, the search itself)")
    p.add_argument("--budget", type=int, help="number of trained candidates (default 12)")
    p.add_argument("--workers", type=int, help="candidates trained in parallel, one process each (default 2)")
    p.add_argument("--proposer", choices=list(PROPOSERS), help="who writes the losses (default offline)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted search (default: none)")
    p.add_argument("--run-dir", help="where to write the search (default runs/evolve-<mode or control>-<split>-<time>)")
    p.add_argument("--split", help="forget split (default forget10)")
    p.add_argument("--data", help="'generated' (default) or a TOFU-shaped folder")
    p.add_argument("--seed", type=int, help="search seed (default 0)")
    p.add_argument("--benchmark", help="a registered benchmark or alias (default: the generated TOFU-shaped one; "
                   "docs/ARCHITECTURE.md lists them)")
    p.add_argument("--config", help="YAML file with search options (defaults: configs/evolve.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. ours.per_generation=8 unlearn.train.lr=5e-4 "
                   "proposer.base_url=http://127.0.0.1:8000/v1")
    p.set_defaults(func=cmd_evolve)

    p = sub.add_parser("report", help="print (and rewrite) a search's leaderboard, best loss and lineage")
    p.add_argument("run_dir", help="a search's run directory")
    p.add_argument("--markdown", action="store_true", help="print the leaderboard as Markdown")
    p.add_argument("--json", action="store_true", help="also print the leaderboard data as one JSON line")
    p.set_defaults(func=cmd_report)
