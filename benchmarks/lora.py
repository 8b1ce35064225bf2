"""A LoRA recipe for the default benchmark (issue 11): NPO with a LoRA adapter over a small grid.

The default full fine-tuning recipe (lr 1e-3) with `train.lora=true` drops model utility to ~0.4 on
the default generated benchmark, and lower learning rates unlearn nothing. This grid measures
NPO with LoRA at several learning rates and ranks, next to full fine-tuning NPO, on the prepared
default benchmark (forget10, the method's other defaults). The rule, fixed before the run: the
recommended LoRA setting is the one with the highest forget quality among those whose model
utility is at least 0.9x the target's (ties: higher utility). Writes benchmarks/results/lora.json
and lora.md; prints the JSON as its last line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from methods import KEYS, RESULTS, run_method

GRID = [(lr, r) for r in (8, 32) for lr in (1e-3, 3e-3, 1e-2)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default="cache", help="prepare cache (target/retain are reused when present)")
    ap.add_argument("--method", default="npo")
    args = ap.parse_args()

    from evounlearn.benchmarks.tofu import PrepareConfig, prepare, summaries
    from evounlearn.config import load_config
    from evounlearn.models.device import runtime_info
    from evounlearn.reports.tables import table

    t0 = time.time()
    pcfg = load_config(PrepareConfig, None, [f"cache_dir={args.cache_dir}"])
    target = summaries(prepare(pcfg))["target"]
    floor = 0.9 * target["model_utility"]
    root = Path(tempfile.mkdtemp(prefix="evounlearn-lora-"))
    rows = [{"setting": "full fine-tuning", **run_method(args.method, args.cache_dir, root / "full", [], pcfg)}]
    for lr, r in GRID:
        ov = ["train.lora=true", f"train.lora_r={r}", f"train.lora_alpha={2 * r}", f"train.lr={lr}"]
        res = run_method(args.method, args.cache_dir, root / f"lora-r{r}-lr{lr}", ov, pcfg)
        rows.append({"setting": f"LoRA r={r} alpha={2 * r} lr={lr:g}", "lora_r": r, **res})
        print(json.dumps(rows[-1]), flush=True)
    ok = [x for x in rows[1:] if (x["model_utility"] or 0) >= floor]
    best = max(ok, key=lambda x: (x["forget_quality"] or 0, x["model_utility"] or 0)) if ok else None
    out = {"method": args.method, "target": {k: target.get(k) for k in KEYS}, "utility_floor": floor,
           "rows": rows, "recommended": best["setting"] if best else None, "seconds": round(time.time() - t0, 1),
           "runtime": runtime_info()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lora.json").write_text(json.dumps(out, indent=1) + "\n")
    cols = ("setting", *KEYS, "seconds")
    md = [f"# LoRA recipe for `{args.method}` on the default generated benchmark (forget10)\n",
          f"Rule (fixed before the run): highest forget quality with model utility >= 0.9 x the target's "
          f"({floor:.3f}). Recommended: **{out['recommended']}**.\n",
          table(rows, cols, markdown=True), ""]
    (RESULTS / "lora.md").write_text("\n".join(md))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
