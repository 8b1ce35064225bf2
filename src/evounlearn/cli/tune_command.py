"""`evounlearn tune`: hyperparameter search for one registered method (search/tune.py, docs/TUNE.md)."""

from __future__ import annotations

import argparse


def cmd_tune(args: argparse.Namespace) -> int:
    from ..search.tune import Tuner, check_method, load_tune_config

    ov = list(args.overrides or [])
    for value, key in ((args.budget, "budget"), (args.workers, "workers"), (args.benchmark, "benchmark"),
                       (args.seed, "seed")):
        if value is not None:
            ov.append(f"{key}={value}")
    if args.resume:
        if args.method:
            ov.append(f"method={check_method(args.method)}")
        tuner = Tuner.for_resume(args.resume, ov)
    else:
        check_method(args.method or "")  # fails fast (no torch import) on an unknown name
        cfg = load_tune_config(args.config, [f"method={args.method}", *ov])
        tuner = Tuner(cfg, args.run_dir or None)
    data = tuner.run()
    print(f"run directory: {tuner.run_dir}")
    print((tuner.run_dir / "leaderboard.md").read_text())
    if data.get("best"):
        print(f"best config: {data['best']['config_path']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="hyperparameter search for one method (the fair control for evolve)")
    p.add_argument("--method", help="a registered method: grad_ascent, grad_diff, npo, simnpo, idk_dpo, rmu, "
                   "undial, pmc")
    p.add_argument("--budget", type=int, help="trials trained (default 20)")
    p.add_argument("--workers", type=int, help="trials in parallel (default 2)")
    p.add_argument("--seed", type=int, help="sampler and training seed (default 0)")
    p.add_argument("--benchmark", help="a registered benchmark or alias (default: evolve's, generated)")
    p.add_argument("--config", help="YAML file with TuneConfig fields (search/tune.py)")
    p.add_argument("--run-dir", help="output folder (default runs/tune-METHOD-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a tune (its saved config + these overrides)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. space.beta=[0.01,1.0] unlearn.train.batch_size=8")
    p.set_defaults(func=cmd_tune)
