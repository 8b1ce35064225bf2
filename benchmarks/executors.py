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
(ray2 - local2) / candidates, compared with `candidate_seconds` (the median candidate job's wall
time in the one-worker runs); throughput ratios = local1 seconds / the run's seconds. The three
runs are repeated `--repeats` times (default 3); each round starts with the next executor, so that
a machine slowing down within a round does not always penalise the same one; the seconds are
medians, each round's are kept; `identical_fitness` compares every run of every round. The
criteria of issue 13 are `ray2_throughput_ok` (>= 1.5x local1) and `ray_overhead_ok` (<= 10% of
a candidate). `phases_seconds` splits each run into its start (until the first candidate job
starts), jobs and end; `jobs_phase_throughput_vs_local1` is the jobs phase alone (a diagnostic:
the criteria are on the whole search).

Writes benchmarks/results/executors.json and prints it as the last line:
  {"local1_seconds", "local2_seconds", "ray2_seconds", "ray_start_seconds",
   "ray_overhead_per_candidate_seconds", "candidate_seconds", "ray_overhead_fraction_of_candidate",
   "ray2_throughput_vs_local1", "local2_throughput_vs_local1", "ray2_throughput_ok",
   "ray_overhead_ok", "phases_seconds", "jobs_phase_throughput_vs_local1", "identical_fitness",
   "candidates", "env": {...}}
`identical_fitness`: every candidate (by code) got the same search-part fitness in every run.

    python benchmarks/executors.py
    python benchmarks/executors.py --budget 4 --repeats 1   # a shorter run of this script
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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


def run_search(overrides: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """One search: its wall seconds, their phases, and the search-part fitness by candidate code.
    Phases (from the store's start / finish times of the jobs): `start_seconds` until the first
    candidate job starts (workers and their fork servers up, target read from the cache,
    validation), `jobs_seconds` from then until the last job ends, `end_seconds` the rest
    (executor closed, outputs written); `job_seconds`: each candidate job's own wall time."""
    from evounlearn.search.config import load_search_config
    from evounlearn.search.driver import SearchDriver
    from evounlearn.search.store import Store

    cfg = load_search_config(None, overrides)
    t0 = time.time()
    SearchDriver(cfg, run_dir).run()
    t1 = time.time()
    st = Store(run_dir / "search.sqlite")
    fitness = {c.code: c.fitness_search for c in st.candidates(kind="candidate") if c.n_search}
    evals = [e for e in st.evaluations(status="done") if e.started and e.finished]
    st.close()
    first, last = min(e.started for e in evals), max(e.finished for e in evals)
    return {"seconds": t1 - t0, "start_seconds": first - t0, "jobs_seconds": last - first, "end_seconds": t1 - last,
            "job_seconds": sorted(e.job_wall for e in evals), "fitness": fitness}


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
    """One timed search (`--one NAME`, in its own process): `run_search`'s dict + ray_start_seconds."""
    ray_start = None
    if overrides["executor"] == "ray":
        import ray

        t0 = time.time()
        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=False)
        ray_start = time.time() - t0
    try:
        out = run_search(overrides, run_dir)
    finally:
        if ray_start is not None:
            ray.shutdown()
    return {**out, "ray_start_seconds": ray_start}


RUNS = {"local1": {"workers": 1, "executor": "local"}, "local2": {"workers": 2, "executor": "local"},
        "ray2": {"workers": 2, "executor": "ray"}}


def run_fresh(name: str, args: argparse.Namespace, work: Path, cache: str) -> dict[str, Any]:
    """`name`'s search in a fresh interpreter, as one `evounlearn evolve` command would run it:
    every executor starts from the same state (no fork server or import left warm by an earlier
    run in this process)."""
    shutil.rmtree(work / name, ignore_errors=True)  # this benchmark's own run dir, from an earlier invocation
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
    names = list(RUNS)
    for r in range(args.repeats):
        # each round starts with the next executor (local1 first, then local2, then ray2, ...), so
        # that a machine slowing down within a round does not always hit the same one
        order = names[r % len(names):] + names[:r % len(names)]
        rounds.append({name: run_fresh(name, args, work / f"round{r}", cache) for name in order})
    fits = [rd[n]["fitness"] for rd in rounds for n in RUNS]

    def med(name: str, key: str) -> float:
        return statistics.median(rd[name][key] for rd in rounds)

    local1, local2, ray2 = (med(n, "seconds") for n in RUNS)
    fit_ray = rounds[0]["ray2"]["fitness"]
    n = max(1, len(fit_ray))
    # a candidate's time: the median candidate job's wall time in the one-worker runs
    candidate_s = statistics.median(x for rd in rounds for x in rd["local1"]["job_seconds"])
    overhead = (ray2 - local2) / n
    out = {
        "local1_seconds": round(local1, 2),
        "local2_seconds": round(local2, 2),
        "ray2_seconds": round(ray2, 2),
        "seconds_each_round": {k: [round(rd[k]["seconds"], 2) for rd in rounds] for k in RUNS},
        "order_each_round": [list(rd) for rd in rounds],
        "repeats": args.repeats,
        "ray_start_seconds": round(med("ray2", "ray_start_seconds"), 2),
        "ray_overhead_per_candidate_seconds": round(overhead, 3),
        "candidate_seconds": round(candidate_s, 3),
        "ray_overhead_fraction_of_candidate": round(overhead / candidate_s, 3),
        "ray2_throughput_vs_local1": round(local1 / ray2, 3),
        "local2_throughput_vs_local1": round(local1 / local2, 3),
        "ray2_throughput_ok": local1 / ray2 >= 1.5,
        "ray_overhead_ok": overhead <= 0.1 * candidate_s,
        # where the time goes (medians): the start (fork servers importing torch and the
        # benchmark's modules, target from the cache) is serial whatever the slots; the jobs phase
        # alone shows how the slots scale
        "phases_seconds": {k: {p: round(med(k, f"{p}_seconds"), 2) for p in ("start", "jobs", "end")} for k in RUNS},
        "jobs_phase_throughput_vs_local1": {k: round(med("local1", "jobs_seconds") / med(k, "jobs_seconds"), 3)
                                            for k in ("local2", "ray2")},
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
