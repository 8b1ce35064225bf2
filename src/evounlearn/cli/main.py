"""The `evounlearn` command. Subcommands: prepare, eval, unlearn, compare, evolve, report.

Each subcommand takes an optional YAML config (`--config`) and `key=value` overrides.
Bad input ends with a one-line `error: ...` message and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ..errors import EvoUnlearnError

log = logging.getLogger("evounlearn")

def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", help="a registered benchmark or alias (default: the generated TOFU-shaped one; "
                   "docs/ARCHITECTURE.md lists them)")
    p.add_argument("--data", help="'generated' (default), a TOFU-shaped folder, or a Hub dataset id")
    p.add_argument("--tofu-dir", help="local folder with TOFU's files (same as --data PATH)")
    p.add_argument("--split", help="forget split: forget01, forget05 or forget10 (default forget10)")


def _overrides(args: argparse.Namespace) -> list[str]:
    ov = list(args.overrides or [])
    data = getattr(args, "tofu_dir", None) or getattr(args, "data", None)
    if data:
        ov.append(f"data={data}")
    if getattr(args, "split", None):
        ov.append(f"forget_split={args.split}")
    return ov


def benchmark_of(args: argparse.Namespace) -> Any:
    """The benchmark a command works on (`--benchmark`, default the generated TOFU-shaped one)."""
    from ..benchmarks import DEFAULT_BENCHMARK, get_benchmark

    return get_benchmark(getattr(args, "benchmark", None) or DEFAULT_BENCHMARK)


def print_report(report: Any) -> None:
    from ..reports.tables import metric_table

    for line in report.lines:
        print(line)
    print(metric_table(report.summaries, report.keys))


def cmd_prepare(args: argparse.Namespace) -> int:
    report = benchmark_of(args).cli_prepare(args.config, _overrides(args), force=args.force)
    print_report(report)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..benchmarks.runs import EvalRequest

    req = EvalRequest(args.config, _overrides(args), args.model, args.adapter, args.retain_results,
                      args.reference_model, args.out, args.attacks, args.attack_samples, args.attack_temperature)
    report = benchmark_of(args).cli_eval(req)
    print_report(report)
    if args.json:
        print(json.dumps(report.summaries))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evounlearn", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="train (or fetch from cache) the target model and the retain oracle")
    _data_args(p)
    p.add_argument("--config", help="YAML file with PrepareConfig fields")
    p.add_argument("--force", action="store_true", help="retrain even when cached")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.epochs=30 generated.authors=20")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("eval", help="evaluate models with the benchmark's suite (TOFU: the full suite, any model)")
    _data_args(p)
    p.add_argument("--model", help="model path or Hub id (default: the prepared target and retain oracle)")
    p.add_argument("--adapter", help="LoRA adapter folder to load on top of --model")
    p.add_argument("--retain-results", help="a retain run's results JSON, for forget quality and PrivLeak")
    p.add_argument("--reference-model", help="model for the reference-model MIA")
    p.add_argument("--out", help="folder for the results JSON files")
    p.add_argument("--json", action="store_true", help="also print the summaries as one JSON line")
    p.add_argument("--attacks", help="leakage attacks on the forget split: sampling,prefill")
    p.add_argument("--attack-samples", type=int, default=16, help="samples per question (sampling attack)")
    p.add_argument("--attack-temperature", type=float, default=1.0, help="temperature (sampling attack)")
    p.add_argument("--config", help="YAML file with PrepareConfig fields")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. eval.max_new_tokens=100")
    p.set_defaults(func=cmd_eval)

    from . import extra_commands, tune_command

    extra_commands.register(sub)
    tune_command.register(sub)
    __import__("evounlearn.cli.check_command", fromlist=["register"]).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except EvoUnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
