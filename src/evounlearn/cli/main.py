"""The `evounlearn` command. Subcommands: prepare, eval, unlearn, compare, evolve, report.

Each subcommand takes an optional YAML config (`--config`) and `key=value` overrides.
Bad input ends with a one-line `error: ...` message and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..errors import EvoUnlearnError

log = logging.getLogger("evounlearn")

TOFU_TABLE_KEYS = (
    "forget_quality", "model_utility", "forget_rouge", "forget_prob", "forget_truth_ratio",
    "extraction_strength", "exact_memorization", "privleak", "mia_loss", "mia_zlib", "mia_min_k",
    "mia_min_k_plus_plus", "retain_rouge", "retain_prob", "retain_truth_ratio",
    "real_authors_rouge", "real_authors_prob", "real_authors_truth_ratio",
    "world_facts_rouge", "world_facts_prob", "world_facts_truth_ratio",
)


def _data_args(p: argparse.ArgumentParser) -> None:
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


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..reports.tables import metric_table
    from ..training.prepare import PrepareConfig, prepare, summaries

    cfg = load_config(PrepareConfig, args.config, _overrides(args))
    p = prepare(cfg, force=args.force)
    s = summaries(p)
    print(f"target: {p.target}\nretain: {p.retain}\nresults: {p.target_results}, {p.retain_results}")
    print(metric_table(s, TOFU_TABLE_KEYS))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..evaluation.tofu_eval import EvalConfig, TofuEvaluator, load_results, save_results
    from ..models.loading import load_model_and_tokenizer
    from ..reports.tables import metric_table
    from ..training.prepare import PrepareConfig, prepare, resolve_data

    cfg = load_config(PrepareConfig, args.config, _overrides(args))
    models: dict[str, tuple[str, str | None]] = {}
    retain_results = load_results(args.retain_results) if args.retain_results else None
    if args.model:
        models[Path(args.model).name] = (args.model, args.adapter)
        source = resolve_data(cfg)
    else:  # default: the prepared target and retain oracle of the benchmark
        p = prepare(cfg)
        source = p.data
        models = {"target": (str(p.target), None), "retain": (str(p.retain), None)}
    ev_cfg: EvalConfig = cfg.eval
    ev = TofuEvaluator(source, cfg.forget_split, ev_cfg)
    summaries = {}
    out_dir = Path(args.out) if args.out else None
    reference = None
    if args.reference_model:
        reference, _ = load_model_and_tokenizer(args.reference_model)
    from ..evaluation.attacks import parse_attacks

    attacks = parse_attacks(args.attacks)
    retain_first = sorted(models, key=lambda n: n != "retain")
    for name in retain_first:
        path, adapter = models[name]
        model, tok = load_model_and_tokenizer(path, adapter=adapter)
        ref_res = retain_results
        if name == "retain" and ref_res is None:
            ref_res = ev.evaluate(model, tok)
        res = ev.evaluate(model, tok, retain_results=ref_res, reference_model=reference)
        if attacks:  # leakage attacks on the forget split (evaluation/attacks.py)
            from ..data.prompting import PromptFormatter
            from ..evaluation.attacks import AttackConfig, add_attacks

            add_attacks(res, model, PromptFormatter(tok), ev.forget, attacks, AttackConfig(
                samples=args.attack_samples, temperature=args.attack_temperature,
                max_new_tokens=ev_cfg.max_new_tokens, batch_size=ev_cfg.batch_size))
        if name == "retain":
            retain_results = res
        res["model"] = path
        summaries[name] = res["summary"]
        if out_dir:
            save_results(res, out_dir / f"{name}_results.json")
            log.info("saved %s", out_dir / f"{name}_results.json")
    print(metric_table(summaries, TOFU_TABLE_KEYS + tuple(f"{a}_attack_rouge" for a in attacks)))
    if args.json:
        print(json.dumps(summaries))
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

    p = sub.add_parser("eval", help="evaluate models with the full TOFU suite")
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

    from . import extra_commands

    extra_commands.register(sub)
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
