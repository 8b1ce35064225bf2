"""Benchmark of the EvoMU search (issue 5): `--mode ours` with the offline proposer on the default
generated benchmark, forget10, 40 trained candidates.

Prints as its LAST line one JSON object
  {"best": {"fitness_report", "forget_quality", "model_utility", "code"},
   "baselines": {"npo": {"fitness_report_mean", "fitness_report_std"}, ...},
   "candidates": n, "rejected": n, "seconds_per_candidate": x, "seconds": x, ...}
and writes benchmarks/results/evolve.json and .md (`--mode evomu`: evolve_evomu.json / .md).
`seconds` is the search's wall-clock time (target evaluation, baselines, candidates, finalists);
`seconds_per_candidate` = seconds / trained candidates (so it includes the baselines' share).
Baselines and finalists run with 3 seeds each (the issue asks for >= 2).

Criteria (issue 5): the best evolved loss's report-part fitness exceeds every baseline's mean by
more than 2 of that baseline's standard deviations, at model utility >= 0.9 x the target's;
seconds_per_candidate <= 60 on 2 CPU cores; the benchmark <= 45 minutes. Checked in "criteria".

    python benchmarks/evolve.py                       # ours, budget 40
    python benchmarks/evolve.py --mode evomu --budget 80
    python benchmarks/evolve.py --resume              # continue an interrupted run
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def criteria(data: dict, seconds: float) -> dict:
    best = data.get("winner") or {}
    fr = best.get("fitness_report")
    margins = {}
    for name, b in (data.get("baselines") or {}).items():
        mean, std = b.get("fitness_report_mean"), b.get("fitness_report_std") or 0.0
        if fr is None or mean is None:
            margins[name] = None
            continue
        margins[name] = (fr - mean) / std if std > 0 else (math.inf if fr > mean else -math.inf)
    thr = data.get("utility_threshold")
    mu = best.get("model_utility")
    spc = data.get("seconds_per_candidate")
    return {
        "margin_in_baseline_stds": {k: (None if v is None else (round(v, 2) if math.isfinite(v) else str(v)))
                                    for k, v in margins.items()},
        "beats_every_baseline_by_2_std": bool(margins) and all(v is not None and v > 2 for v in margins.values()),
        "utility_ok": mu is not None and thr is not None and mu >= thr,
        "utility_threshold": thr,
        "seconds_per_candidate_ok": spc is not None and spc <= 60,
        "total_time_ok": seconds <= 45 * 60,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="ours", choices=["ours", "evomu"])
    ap.add_argument("--budget", type=int, default=None, help="trained candidates (default 40; evomu: 80)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--split", default="forget10")
    ap.add_argument("--cache-dir", help="prepared models (default $EVOUNLEARN_CACHE or ./cache)")
    ap.add_argument("--run-dir", help="default runs/bench-evolve[-evomu]")
    ap.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    ap.add_argument("--out", help="results JSON path (default benchmarks/results/evolve[_evomu].json)")
    ap.add_argument("overrides", nargs="*", help="search config key=value overrides")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.cache_dir:
        os.environ["EVOUNLEARN_CACHE"] = args.cache_dir

    from evounlearn.search.config import load_search_config
    from evounlearn.search.driver import SearchDriver
    from evounlearn.search.report_text import format_report

    budget = args.budget or (80 if args.mode == "evomu" else 40)
    suffix = "" if args.mode == "ours" else "_evomu"
    run_dir = Path(args.run_dir or ROOT / "runs" / f"bench-evolve{suffix.replace('_', '-')}")
    if args.resume:
        driver = SearchDriver.for_resume(run_dir, {"workers": args.workers, "budget": budget})
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        # 3 seeds (the issue asks for >= 2) so that the baselines' spread is less of a coin toss
        ov = [f"mode={args.mode}", f"budget={budget}", f"workers={args.workers}", "proposer.kind=offline",
              f"unlearn.forget_split={args.split}", "baseline_seeds=3", "report_seeds=3", *args.overrides]
        driver = SearchDriver(load_search_config(None, ov), run_dir)
    print(f"run directory: {run_dir}", flush=True)
    t0 = time.time()
    data = driver.run()
    wall = time.time() - t0
    seconds = float(data.get("seconds") or wall)
    report = format_report(data, markdown=True)
    print(format_report(data), flush=True)

    best = data.get("winner") or {}
    out = {
        "best": {"fitness_report": best.get("fitness_report"), "fitness_report_std": best.get("fitness_report_std"),
                 "fitness_search": best.get("fitness_search"), "forget_quality": best.get("forget_quality"),
                 "model_utility": best.get("model_utility"), "forget_rouge": best.get("forget_rouge"),
                 "id": best.get("id"), "generation": best.get("generation"), "code": best.get("code")},
        "baselines": {k: {"fitness_report_mean": v.get("fitness_report_mean"),
                          "fitness_report_std": v.get("fitness_report_std"),
                          "model_utility": v.get("model_utility"), "forget_quality": v.get("forget_quality")}
                      for k, v in (data.get("baselines") or {}).items()},
        "target_utility": data.get("target_utility"),
        "candidates": (data.get("counts") or {}).get("candidates"),
        "rejected": (data.get("counts") or {}).get("rejected"),
        "duplicates": (data.get("counts") or {}).get("duplicates"),
        "stopped_at_stage1": (data.get("counts") or {}).get("stopped_at_stage1"),
        "failed": (data.get("counts") or {}).get("failed"),
        "runs": (data.get("counts") or {}).get("runs"),
        "mean_candidate_run_seconds": data.get("mean_candidate_run_seconds"),
        "seconds_per_candidate": data.get("seconds_per_candidate"),
        "seconds": seconds,
        "mode": args.mode,
        "budget": budget,
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "run_dir": str(run_dir),
    }
    out["criteria"] = criteria(data, seconds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = Path(args.out) if args.out else RESULTS / f"evolve{suffix}.json"
    from evounlearn.models.device import runtime_info

    out["runtime"] = runtime_info()
    path.write_text(json.dumps(out, indent=1) + "\n")
    path.with_suffix(".md").write_text(
        f"# EvoMU search benchmark (`python benchmarks/evolve.py --mode {args.mode} --budget {budget}`)\n\n"
        + report + "\n\n## criteria\n\n```json\n" + json.dumps(out["criteria"], indent=1) + "\n```\n")
    sys.stdout.flush()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
