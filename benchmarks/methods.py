"""Benchmark of the method library (issue 3): every method with its registered defaults on the
default generated benchmark, forget10, evaluated against the retain oracle.

Prints as its last line one JSON object {"target": {...}, "retain": {...}, "methods": {name: {...}}},
each entry holding forget_quality, model_utility, forget_rouge, forget_prob, privleak, seconds,
seconds_per_step, tokens_per_second; writes benchmarks/results/methods.json and methods.md.

`--sweep` instead runs each method over a grid of learning rates at the common epoch budget and
writes benchmarks/results/methods_sweep.json/.md: this is how the defaults in
src/evounlearn/methods/configs/*.yaml were chosen (see the markdown for the rule).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
METHODS = ["grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo", "rmu", "undial", "wga", "satimp", "ceu", "pdu",
           "altpo"]
KEYS = ("forget_quality", "model_utility", "forget_rouge", "forget_prob", "privleak")


def run_method(method: str, cache: str, run_root: Path, overrides: list[str], pcfg=None) -> dict:
    from evounlearn.benchmarks.tofu import build_config, run_unlearning

    cfg = build_config(method, None, [f"run_dir={run_root / method}", *overrides])
    if pcfg is not None:  # the prepared benchmark this run unlearns (data, recipe, cache)
        cfg.prepare, cfg.data = pcfg, pcfg.data
    cfg.prepare.cache_dir = cache
    record = run_unlearning(cfg)
    s = record["summary"]
    return {**{k: s.get(k) for k in KEYS}, "seconds": round(record["seconds"] + record["eval_seconds"], 2),
            "train_seconds": round(record["seconds"], 3), "seconds_per_step": record["seconds_per_step"],
            "tokens_per_second": record["tokens_per_second"], "steps": record["steps"],
            "lr": cfg.train.lr, "epochs": cfg.train.epochs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default="cache", help="prepare cache (target/retain are reused when present)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--sweep", action="store_true", help="learning-rate sweep at the common budget")
    ap.add_argument("--lrs", default="1e-4,3e-4,1e-3,3e-3")
    ap.add_argument("--tag", default="", help="suffix of the sweep result files")
    ap.add_argument("--data", default="generated", help="generated, or a TOFU folder such as ../shared/data/tofu")
    ap.add_argument("--prepare", action="append", default=[], help="PrepareConfig key=value (e.g. train.epochs=10)")
    ap.add_argument("--name", default="methods", help="results file stem")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from evounlearn.benchmarks.tofu import PrepareConfig, prepare, summaries
    from evounlearn.config import load_config
    from evounlearn.reports.tables import table

    t0 = time.time()
    pcfg = load_config(PrepareConfig, None, [f"cache_dir={args.cache_dir}", f"data={args.data}", *args.prepare])
    prepared = prepare(pcfg)
    base = summaries(prepared)
    out: dict = {"target": {k: base["target"][k] for k in KEYS}, "retain": {k: base["retain"][k] for k in KEYS},
                 "methods": {}}
    root = Path(tempfile.mkdtemp(prefix="evounlearn-methods-"))
    methods = args.methods.split(",")
    if args.sweep:
        rows = []
        for m in methods:
            for lr in args.lrs.split(","):
                r = run_method(m, args.cache_dir, root / f"lr{lr}", [f"train.lr={lr}", *args.overrides], pcfg)
                rows.append({"method": m, **r})
                print(json.dumps(rows[-1]), flush=True)
        tu = out["target"]["model_utility"]
        md = ["# Learning-rate sweep (same epoch budget for every method)", "",
              "Rule: per method, the lr with the highest forget_quality among those keeping "
              f"model_utility >= 0.8 x target ({0.8 * tu:.4f}); GradAscent has no retain term and no such lr.", "",
              table(rows, ["method", "lr", "epochs", *KEYS, "seconds"], markdown=True)]
        (RESULTS / f"methods_sweep{args.tag}.md").write_text("\n".join(md) + "\n")
        (RESULTS / f"methods_sweep{args.tag}.json").write_text(json.dumps({"target": out["target"], "rows": rows}, indent=1))
        return
    for m in methods:
        out["methods"][m] = run_method(m, args.cache_dir, root, args.overrides, pcfg)
        print(m, json.dumps(out["methods"][m]), flush=True)
    # Caching pays: NPO (reference log-probs cached once) against GradAscent on the same batches (the paired
    # retain rows go through the forward pass too) and against NPO recomputing the reference every step.
    if "npo" in out["methods"] and "grad_ascent" in out["methods"]:
        same = run_method("grad_ascent", args.cache_dir, root / "ga_same_batches", ["train.pair_retain=true",
                                                                                  *args.overrides], pcfg)
        naive = run_method("npo", args.cache_dir, root / "npo_naive", ["train.ref_cache=false", *args.overrides],
                           pcfg)
        npo_sps = out["methods"]["npo"]["seconds_per_step"]
        out["caching"] = {
            "grad_ascent_same_batches_seconds_per_step": same["seconds_per_step"],
            "npo_cached_seconds_per_step": npo_sps,
            "npo_uncached_seconds_per_step": naive["seconds_per_step"],
            "npo_over_grad_ascent_same_batches": npo_sps / same["seconds_per_step"],
            "npo_over_grad_ascent_own_batches": npo_sps / out["methods"]["grad_ascent"]["seconds_per_step"],
        }
        print("caching", json.dumps(out["caching"]), flush=True)
    out["seconds"] = round(time.time() - t0, 1)
    rows = [{"model": "target", **out["target"]}, {"model": "retain", **out["retain"]}]
    rows += [{"model": m, **v} for m, v in out["methods"].items()]
    cols = ["model", *KEYS, "seconds", "seconds_per_step", "tokens_per_second", "lr", "epochs"]
    RESULTS.mkdir(exist_ok=True)
    out["data"] = args.data
    (RESULTS / f"{args.name}.md").write_text(
        f"# Methods on {args.data}, forget10 (defaults)\n\n" + table(rows, cols, markdown=True) + "\n")
    from evounlearn.models.device import runtime_info

    out["runtime"] = runtime_info()
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    print(table(rows, cols))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
