"""Benchmark of the harness (issue 2): `prepare` + `eval` on the default generated benchmark, forget10.

Runs from an empty cache (a fresh temporary folder unless --cache-dir is given), times both steps,
and prints as its last line one JSON object:
  {"prepare_seconds": s, "eval_seconds": s, "target": {...}, "retain": {...}}
also written to benchmarks/results/harness.json. `--tofu-dir ../shared/data/tofu` runs the same on
the real TOFU data with the tiny recipe (results/harness_tofu.json).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

KEYS = ("forget_rouge", "forget_prob", "forget_truth_ratio", "forget_quality", "model_utility", "privleak",
        "extraction_strength")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tofu-dir", help="real TOFU folder (default: the generated benchmark)")
    ap.add_argument("--split", default="forget10")
    ap.add_argument("--cache-dir", help="cache folder (default: a new empty temporary folder)")
    ap.add_argument("--out", help="results JSON path")
    ap.add_argument("overrides", nargs="*", help="PrepareConfig key=value overrides")
    args = ap.parse_args()

    from evounlearn.benchmarks.tofu import PrepareConfig, prepare
    from evounlearn.config import load_config
    from evounlearn.evaluation.tofu_eval import TofuEvaluator
    from evounlearn.models.loading import count_parameters, load_model_and_tokenizer
    from evounlearn.reports.tables import metric_table

    cache = args.cache_dir or tempfile.mkdtemp(prefix="evounlearn-harness-")
    ov = [f"cache_dir={cache}", f"forget_split={args.split}", *args.overrides]
    if args.tofu_dir:
        ov.append(f"data={args.tofu_dir}")
    cfg = load_config(PrepareConfig, None, ov)
    print(f"torch threads: {torch.get_num_threads()}; cache: {cache}", flush=True)

    t0 = time.time()
    prepared = prepare(cfg)
    prepare_seconds = time.time() - t0

    # `eval`: both models, every metric, from the saved checkpoints (retain first: it is the reference).
    t0 = time.time()
    ev = TofuEvaluator(prepared.data, cfg.forget_split, cfg.eval)
    model, tok = load_model_and_tokenizer(prepared.retain)
    retain = ev.evaluate(model, tok)
    retain = ev.evaluate(model, tok, retain_results=retain)
    model, tok = load_model_and_tokenizer(prepared.target)
    target = ev.evaluate(model, tok, retain_results=retain)
    eval_seconds = time.time() - t0

    out = {
        "prepare_seconds": round(prepare_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "target": {k: target["summary"][k] for k in KEYS},
        "retain": {k: retain["summary"][k] for k in KEYS},
        "data": "real TOFU (" + args.tofu_dir + ")" if args.tofu_dir else "generated (default config)",
        "forget_split": cfg.forget_split,
        "model_parameters": count_parameters(model),
        "train": prepared.info.get("target_train", {}).get("seconds"),
        "torch_threads": torch.get_num_threads(),
    }
    print(metric_table({"target": out["target"], "retain": out["retain"]}, KEYS))
    path = Path(args.out) if args.out else Path(__file__).parent / "results" / (
        "harness_tofu.json" if args.tofu_dir else "harness.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    from evounlearn.models.device import runtime_info

    out["runtime"] = runtime_info()
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
