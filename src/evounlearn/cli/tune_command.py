"""`evounlearn tune`: hyperparameter search for one registered method (search/tune/, docs/TUNE.md)."""

from __future__ import annotations

import argparse

from .common import check_executor


def cmd_tune(args: argparse.Namespace) -> int:
    from ..search.tune import Tuner, check_method, load_tune_config, require_optuna

    ov = list(args.overrides or [])
    for value, key in ((args.budget, "budget"), (args.workers, "workers"), (args.benchmark, "benchmark"),
                       (args.seed, "seed"), (args.fitness, "fitness")):
        if value is not None:
            ov.append(f"{key}={value}")
    if args.resume:
        if args.method:
            ov.append(f"method={check_method(args.method)}")
        tuner = Tuner.for_resume(args.resume, ov)
    else:
        check_method(args.method or "")  # fails fast (no torch import) on an unknown name
        cfg = load_tune_config(args.config, [f"method={args.method}", *ov])
        require_optuna()  # one line, before the run directory is named or made
        tuner = Tuner(cfg, args.run_dir or None)
    check_executor(tuner.cfg)  # e.g. Ray's GPU arithmetic, before the run directory is made
    if tuner.cfg.unlearn.get("model"):
        from ..models.source import check_model_source

        check_model_source(str(tuner.cfg.unlearn["model"]), "unlearn.model")
    print(f"run directory: {tuner.run_dir}  (continue after an interruption: evounlearn tune --resume "
          f"{tuner.run_dir})", flush=True)
    data = tuner.run()
    print((tuner.run_dir / "leaderboard.md").read_text())
    if data.get("best"):
        print(f"best config: {data['best']['config_path']}")
        print(f"use it (the whole forget set): {data['best']['command']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..search.tune.config import tunable_methods  # torch-free: the methods' YAML defaults

    p = sub.add_parser("tune", help="hyperparameter search for one method (the fair control for evolve)")
    p.add_argument("--method", help=f"a registered method: {', '.join(tunable_methods())} (required; no default)")
    p.add_argument("--budget", type=int, help="trials trained (default 20)")
    p.add_argument("--workers", type=int, help="trials in parallel (default 2)")
    p.add_argument("--seed", type=int, help="sampler and training seed (default 0)")
    p.add_argument("--benchmark", help="a registered benchmark or alias (default: evolve's, generated)")
    p.add_argument("--fitness", help="one of the benchmark's fitnesses, docs/FITNESS.md (default: evolve --mode "
                   "ours's, calibrated)")
    p.add_argument("--config", help="YAML file with TuneConfig fields (search/tune/config.py; default: none)")
    p.add_argument("--run-dir", help="output folder (default runs/tune-METHOD-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a tune (its saved config + these overrides; default: a new run)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. space.beta=[0.01,1.0] unlearn.train.batch_size=8")
    p.set_defaults(func=cmd_tune)
