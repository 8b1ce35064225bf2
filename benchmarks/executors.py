"""Benchmark of the executors (issue 13): the same 8-candidate search with LocalExecutor(1),
LocalExecutor(2) and a 2-slot RayExecutor on a local Ray instance.

The search: `--mode ours` on the default generated benchmark (forget10), offline proposer,
8 trained candidates all in generation 0 (`ours.initial=8`: proposed before any result comes
back, so every executor trains the same 8 losses whatever order results arrive in), no
baselines, no finalists. The benchmark is prepared once into a shared cache before the timed
runs. Each search runs in a fresh Python process (as one `evounlearn evolve` command would), so
none inherits a warm fork server or imports from another; its time is the search alone
(`SearchDriver.run`: workers started, target read from the cache, 8 candidates). Ray is started
(and timed: `ray_start_seconds`) before its search; `ray_overhead_per_candidate_seconds` =
(ray2 - local2) / candidates; throughput ratios = local1 seconds / the run's seconds. The three
runs are repeated `--repeats` times (default 3) in rotation; the seconds are medians, each
round's are kept; `identical_fitness` compares every run of every round.

Writes benchmarks/results/executors.json and prints it as the last line:
  {"local1_seconds", "local2_seconds", "ray2_seconds", "ray_start_seconds",
   "ray_overhead_per_candidate_seconds", "ray2_throughput_vs_local1", "local2_throughput_vs_local1",
   "identical_fitness", "candidates", "env": {...}}
`identical_fitness`: every candidate (by code) got the same search-part fitness in every run.

    python benchmarks/executors.py
    python benchmarks/executors.py --budget 4 --repeats 1   # a shorter run of this script
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
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


def _one(name: str, overrides: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """One timed search (`--one NAME`, in its own process): {seconds, ray_start_seconds, fitness}."""
    ray_start = None
    if overrides["executor"] == "ray":
        import ray

        t0 = time.time()
        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=False)
        ray_start = time.time() - t0
    try:
        seconds, fitness = run_search(overrides, run_dir)
    finally:
        if ray_start is not None:
            ray.shutdown()
    return {"seconds": seconds, "ray_start_seconds": ray_start, "fitness": fitness}


RUNS = {"local1": {"workers": 1, "executor": "local"}, "local2": {"workers": 2, "executor": "local"},
        "ray2": {"workers": 2, "executor": "ray"}}


def run_fresh(name: str, args: argparse.Namespace, work: Path, cache: str) -> dict[str, Any]:
    """`name`'s search in a fresh interpreter, as one `evounlearn evolve` command would run it:
    every executor starts from the same state (no fork server or import left warm by an earlier
    run in this process)."""
    cmd = [sys.executable, __file__, "--one", name, "--work-dir", str(work), "--cache-dir", cache,
           "--budget", str(args.budget), "--seed", str(args.seed), "--benchmark", args.benchmark]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])))
    if out.returncode != 0:
        raise SystemExit(f"{name} failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=8, help="trained candidates (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--benchmark", default="generated", help="registered benchmark (default: generated)")
    ap.add_argument("--cache-dir", help="prepared-benchmark cache (default: a new temporary folder)")
    ap.add_argument("--work-dir", help="where the three runs go (default: a new temporary folder)")
    ap.add_argument("--out", default=str(RESULTS / "executors.json"), help="results JSON path")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the three runs; seconds are medians")
    ap.add_argument("--one", choices=sorted(RUNS), help=argparse.SUPPRESS)  # internal: one timed search
    args = ap.parse_args()

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="evounlearn-executors-"))
    cache = str(Path(args.cache_dir or work / "cache").resolve())
    base = search_overrides(args, cache)
    if args.one:
        print(json.dumps(_one(args.one, {**base, **RUNS[args.one]}, work / args.one)))
        return

    import ray

    prepare_cache(base)  # also fills the reference cache: every timed run starts from the same cache
    rounds: list[dict[str, Any]] = []
    for r in range(args.repeats):  # in rotation, so that a slow spell of the machine hits every executor
        rounds.append({name: run_fresh(name, args, work / f"round{r}", cache) for name in RUNS})
    fits = [rd[n]["fitness"] for rd in rounds for n in RUNS]
    secs = {n: [rd[n]["seconds"] for rd in rounds] for n in RUNS}
    local1, local2, ray2 = (statistics.median(secs[n]) for n in RUNS)
    fit_ray = rounds[0]["ray2"]["fitness"]
    n = max(1, len(fit_ray))
    out = {
        "local1_seconds": round(local1, 2),
        "local2_seconds": round(local2, 2),
        "ray2_seconds": round(ray2, 2),
        "seconds_each_round": {k: [round(x, 2) for x in v] for k, v in secs.items()},
        "repeats": args.repeats,
        "ray_start_seconds": round(statistics.median(rd["ray2"]["ray_start_seconds"] for rd in rounds), 2),
        "ray_overhead_per_candidate_seconds": round((ray2 - local2) / n, 3),
        "ray2_throughput_vs_local1": round(local1 / ray2, 3),
        "local2_throughput_vs_local1": round(local1 / local2, 3),
        "identical_fitness": bool(fit_ray) and all(f == fit_ray for f in fits),
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
