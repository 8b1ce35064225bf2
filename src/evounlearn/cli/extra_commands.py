"""Subcommands beyond prepare/eval: unlearn, compare, evolve (the EvoMU search) and report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError

COMPARE_KEYS = ("forget_quality", "model_utility", "forget_rouge", "forget_prob", "privleak",
                "extraction_strength", "seconds")  # `compare` reads results.json of any run


def cmd_unlearn(args: argparse.Namespace) -> int:
    from .main import benchmark_of, print_report

    ov = list(args.overrides or [])
    if not args.resume:
        for flag, key in ((args.split, "forget_split"), (args.tofu_dir or args.data, "data"), (args.model, "model"),
                          (args.loss_file, "loss.loss_file"), (args.run_dir, "run_dir")):
            if flag:
                ov.append(f"{key}={flag}")
    report = benchmark_of(args).cli_unlearn(args.method, args.config, ov, resume=args.resume)
    print(f"run directory: {report.run_dir}")
    print_report(report)
    return 0


def _load_run(path: Path) -> tuple[str, dict]:
    res = path / "results.json" if path.is_dir() else path
    if not res.is_file():
        raise ConfigError(f"{path} holds no results.json")
    data = json.loads(res.read_text())
    summary = dict(data.get("summary", {}))
    summary["seconds"] = data.get("train_seconds")
    name = data.get("method") or res.parent.name
    return f"{name} ({res.parent.name})" if path.is_dir() else name, summary


def cmd_compare(args: argparse.Namespace) -> int:
    from ..reports.tables import table

    rows = []
    for p in args.runs:
        name, s = _load_run(Path(p))
        rows.append({"run": name, **s})
    print(table(rows, ["run", *COMPARE_KEYS], markdown=args.markdown))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("unlearn", help="run one unlearning method and evaluate it against the retain oracle")
    p.add_argument("--method", help="grad_ascent, grad_diff, npo, simnpo, idk_dpo, rmu, undial, pmc, evolved")
    p.add_argument("--benchmark", help="a registered benchmark or alias (default generated)")
    p.add_argument("--split", help="forget split (default forget10)")
    p.add_argument("--data", help="'generated' (default), a TOFU-shaped folder, or a Hub dataset id")
    p.add_argument("--tofu-dir", help="local folder with TOFU's files")
    p.add_argument("--model", help="model to unlearn (default: the prepared target)")
    p.add_argument("--loss-file", help="for --method evolved: a .py file with loss_fn")
    p.add_argument("--run-dir", help="where to write the run (default runs/<method>-<split>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    p.add_argument("--config", help="YAML file with the benchmark's run options (TOFU: UnlearnConfig fields)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.lr=1e-4 loss.beta=0.2 train.lora=true")
    p.set_defaults(func=cmd_unlearn)

    p = sub.add_parser("compare", help="one table of several runs")
    p.add_argument("runs", nargs="+", help="run directories or results.json files")
    p.add_argument("--markdown", action="store_true")
    p.set_defaults(func=cmd_compare)

    register_search(sub)


def cmd_evolve(args: argparse.Namespace) -> int:
    import time

    from ..search.config import load_search_config
    from ..search.driver import SearchDriver
    from ..search.report import format_report

    ov = list(args.overrides or [])
    if args.resume:
        from ..config import parse_overrides

        extra = parse_overrides(ov)
        for key, val in (("budget", args.budget), ("workers", args.workers)):
            if val is not None:
                extra[key] = val
        if args.mode or args.config or args.proposer or args.split or args.data or args.benchmark:
            raise ConfigError("--resume continues a search with its saved config; only --budget, --workers "
                              "and key=value overrides may change")
        driver = SearchDriver.for_resume(args.resume, extra)
        run_dir = Path(args.resume)
    else:
        for flag, key in ((args.mode, "mode"), (args.budget, "budget"), (args.workers, "workers"),
                          (args.proposer, "proposer.kind"), (args.split, "unlearn.forget_split"),
                          (args.data, "unlearn.data"), (args.seed, "seed"), (args.benchmark, "benchmark")):
            if flag is not None:
                ov.append(f"{key}={flag}")
        cfg = load_search_config(args.config, ov)
        split = cfg.unlearn.get("forget_split", "forget10")
        run_dir = Path(args.run_dir or cfg.run_dir or
                       Path("runs") / f"evolve-{cfg.mode}-{split}-{time.strftime('%Y%m%d-%H%M%S')}")
        driver = SearchDriver(cfg, run_dir)
    print(f"run directory: {run_dir}  (continue after an interruption: evounlearn evolve --resume {run_dir})",
          flush=True)
    data = driver.run()
    print(format_report(data))
    print(f"\nwritten: {run_dir / 'leaderboard.md'}, {run_dir / 'leaderboard.json'}, "
          f"{run_dir / 'best_loss.py'}, {run_dir / 'fitness.png'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..search.report import format_report, write_outputs
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
    p = sub.add_parser("evolve", help="EvoMU search for an unlearning loss (sandboxed, resumable, parallel)")
    p.add_argument("--mode", choices=["ours", "evomu"], help="ours (default): archive, crossover, staged "
                   "evaluation; evomu: the paper's 80-candidate schedule")
    p.add_argument("--budget", type=int, help="number of trained candidates (default 12)")
    p.add_argument("--workers", type=int, help="candidates trained in parallel, one process each (default 2)")
    p.add_argument("--proposer", choices=["offline", "http", "hf"], help="who writes the losses (default offline)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted search")
    p.add_argument("--run-dir", help="where to write the search (default runs/evolve-<mode>-<split>-<time>)")
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
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json", action="store_true", help="also print the leaderboard data as one JSON line")
    p.set_defaults(func=cmd_report)
