"""Benchmark of the executors (issue 13): the same 8-candidate search with LocalExecutor(1),
LocalExecutor(2) and a 2-slot RayExecutor on a local Ray instance.

The search: `--mode ours` on the default generated benchmark (forget10), offline proposer,
8 trained candidates all in generation 0 (`ours.initial=8`: proposed before any result comes
back, so every executor trains the same 8 losses whatever order results arrive in), no
baselines, no finalists. The benchmark is prepared once into a shared cache before the timed
runs. Ray is started (and timed: `ray_start_seconds`) before its run, so `ray2_seconds` is the
search alone; `ray_overhead_per_candidate_seconds` = (ray2 - local2) / candidates.

Writes benchmarks/results/executors.json and prints it as the last line:
  {"local1_seconds", "local2_seconds", "ray2_seconds", "ray_start_seconds",
   "ray_overhead_per_candidate_seconds", "identical_fitness", "candidates", "env": {...}}
`identical_fitness`: every candidate (by code) got the same search-part fitness in all three runs.

    python benchmarks/executors.py
    python benchmarks/executors.py --budget 4   # a shorter run of this script
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def search_overrides(args: argparse.Namespace, cache: str) -> dict[str, Any]:
    return {
        "mode": "ours", "budget": args.budget, "benchmark": args.benchmark, "seed": args.seed,
        "baselines": [], "finalists": 0, "ours.initial": args.budget, "ours.stage1_epochs": 0,
        "unlearn.prepare.cache_dir": cache,
    }


def run_search(overrides: dict[str, Any], run_dir: Path) -> tuple[float, dict[str, float | None]]:
    """(wall seconds, search-part fitness by candidate code) of one search."""
    from evounlearn.search.config import load_search_config
    from evounlearn.search.driver import SearchDriver
    from evounlearn.search.store import Store

    cfg = load_search_config(None, overrides)
    t0 = time.time()
    SearchDriver(cfg, run_dir).run()
    seconds = time.time() - t0
    st = Store(run_dir / "search.sqlite")
    fitness = {c.code: c.fitness_search for c in st.candidates(kind="candidate") if c.n_search}
    st.close()
    return seconds, fitness


def prepare_cache(overrides: dict[str, Any]) -> None:
    """Prepare the benchmark (target + oracle, their evaluations) once, outside the timings."""
    from evounlearn.search.candidate import target_info
    from evounlearn.search.config import load_search_config

    cfg = load_search_config(None, overrides)
    target_info(unlearn=dict(cfg.unlearn), benchmark=cfg.benchmark)


def environment() -> dict[str, Any]:
    import torch

    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=8, help="trained candidates (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--benchmark", default="generated", help="registered benchmark (default: generated)")
    ap.add_argument("--cache-dir", help="prepared-benchmark cache (default: a new temporary folder)")
    ap.add_argument("--work-dir", help="where the three runs go (default: a new temporary folder)")
    ap.add_argument("--out", default=str(RESULTS / "executors.json"), help="results JSON path")
    args = ap.parse_args()

    import ray

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="evounlearn-executors-"))
    cache = str(Path(args.cache_dir or work / "cache").resolve())
    base = search_overrides(args, cache)
    prepare_cache(base)

    local1, fit1 = run_search({**base, "workers": 1, "executor": "local"}, work / "local1")
    local2, fit2 = run_search({**base, "workers": 2, "executor": "local"}, work / "local2")
    t0 = time.time()
    ray.init(address="local", num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    ray_start = time.time() - t0
    try:
        ray2, fit_ray = run_search({**base, "workers": 2, "executor": "ray"}, work / "ray2")
    finally:
        ray.shutdown()

    n = max(1, len(fit_ray))
    out = {
        "local1_seconds": round(local1, 2),
        "local2_seconds": round(local2, 2),
        "ray2_seconds": round(ray2, 2),
        "ray_start_seconds": round(ray_start, 2),
        "ray_overhead_per_candidate_seconds": round((ray2 - local2) / n, 3),
        "identical_fitness": bool(fit1) and fit1 == fit2 == fit_ray,
        "candidates": len(fit_ray),
        "benchmark": args.benchmark,
        "ray_version": ray.__version__,
        "env": environment(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
