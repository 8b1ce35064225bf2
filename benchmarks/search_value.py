"""Does the search add value? (issue 10) The search against its controls and tuned baselines, at
equal budget, on several settings of the generated benchmark, with the `calibrated` fitness.

Arms (each run through the CLI, as a user would):
- `search`:       evounlearn evolve --mode ours
- `random`:       evounlearn evolve --control random   (random trees, no selection)
- `tuned_npo`:    evounlearn tune --method npo         (TPE over constants, retain weight, lr, epochs)
- `tuned_simnpo`: evounlearn tune --method simnpo
Every arm trains `--budget` candidates / trials per search seed (>= 3 seeds), epochs searched or
tuned in 1-10 in every arm; its winner (chosen on the search part) is re-run with
`--report-seeds` seeds on the report part, which no arm sees while searching. The evolve
baselines are off (the tuned arms stand in for them). Settings: the benchmarks `generated`
(disjoint), `entangled`, `partial`. Transfer: the search winner found on one setting (search
seed 0) trained and scored on every other setting's report part.

Writes benchmarks/results/search_value.json and .md and prints a table:
  {"fitness": "calibrated", "budget": n, "seconds": s, "seconds_per_candidate": s, "quick": bool,
   "settings": {name: {"arms": {arm: {"report_fitness": [per search seed: mean over report seeds],
                                      "forget_quality": [...], "model_utility": [...],
                                      "winner_search_fitness": [...] (the winner's search-part
                                      fitness: evolve, mean over its finalist seeds; tune, its trial),
                                      "winner_search_sd": [...] (evolve arms: sd over those seeds),
                                      "gen0_best": [...], "final_best": [...] (search arm only: best
                                      floor-aware search score, as the search ranks)}}}},
   "transfer": {found on: {evaluated on: report fitness}}, "criteria": {...}, "env": {...}}

Criteria (means over search seeds; "2 sd" = 2 pooled sd of the two arms compared): the search
beats the better tuned baseline by > 2 sd on >= 2 settings and is never worse by > 2 sd; the
search >= random on every setting and > by 2 sd on at least one; the search's final best
(search-part fitness) > its generation-0 best on every setting; the winners' mean forget quality
>= half the better tuned baseline's; the whole benchmark <= 150 minutes.

    python benchmarks/search_value.py               # the full benchmark (about 1 hour on 2 cores)
    python benchmarks/search_value.py --quick       # smoke test: 1 setting, budget 4, 1 seed
Not run in CI. Runs are kept under --work (default runs/search_value) and reused when complete,
so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SETTINGS = ("generated", "entangled", "partial")
ARMS = ("search", "random", "tuned_npo", "tuned_simnpo")
FITNESS = "calibrated"


# ------------------------------------------------------------------------------------------------
# running the arms through the CLI


def _cli(args: list[str], log: Path) -> None:
    """One `evounlearn ...` command (this checkout's sources first on the path); its output goes
    to `log`; a failure stops the benchmark with the command and the log's tail."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "evounlearn.cli.main", *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        hint = ""
        if args[0] == "tune" and "invalid choice" in tail:
            hint = "\n`evounlearn tune` is not in this checkout: the tuned baselines need it (issue 10)."
        raise SystemExit(f"command failed (rc {rc}): {' '.join(args)}\n{tail}{hint}")


def _common(setting: str, budget: int, seed: int, opts: argparse.Namespace) -> list[str]:
    return ["--benchmark", setting, "--budget", str(budget), "--seed", str(seed), "--workers", str(opts.workers)]


def run_arm(arm: str, setting: str, seed: int, budget: int, opts: argparse.Namespace) -> Path:
    """The arm's run directory (run now unless a finished one is there)."""
    rd = Path(opts.work) / setting / f"{arm}-seed{seed}"
    if (rd / "leaderboard.json").is_file():
        return rd  # finished by an earlier invocation: its wall time is in ARM-seedK.seconds
    if rd.exists():  # an interrupted run: start it again (both commands refuse a used folder)
        import shutil

        shutil.rmtree(rd)
    keys = [f"finalists={opts.finalists}", f"report_seeds={opts.report_seeds}"]
    if arm in ("search", "random"):
        args = ["evolve", *_common(setting, budget, seed, opts), "--run-dir", str(rd),
                *(["--mode", "ours"] if arm == "search" else ["--control", "random"]),
                f"fitness={FITNESS}", "baselines=[]", *keys]
    else:
        method = arm.removeprefix("tuned_")
        args = ["tune", "--method", method, *_common(setting, budget, seed, opts), "--run-dir", str(rd),
                f"job_options.fitness={FITNESS}", *keys]
    t = time.time()
    _cli(args, rd.parent / f"{arm}-seed{seed}.log")
    took = time.time() - t
    (rd.parent / f"{arm}-seed{seed}.seconds").write_text(f"{took:.1f}\n")
    print(f"  {setting:10s} {arm:13s} seed {seed}: {took:6.0f} s", flush=True)
    return rd


def run_seconds(setting: str, arm: str, seed: int, opts: argparse.Namespace) -> float | None:
    """The wall seconds of one arm run (the CLI command, preparation included), as recorded when it ran."""
    f = Path(opts.work) / setting / f"{arm}-seed{seed}.seconds"
    return float(f.read_text()) if f.is_file() else None


# ------------------------------------------------------------------------------------------------
# reading the results


def _mean(xs: list[float | None]) -> float | None:
    vals = [float(x) for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return statistics.fmean(vals) if vals else None


def evolve_result(rd: Path) -> dict[str, Any]:
    """Winner's report-part fitness / FQ / MU (means over report seeds), the best search-part
    score of generation 0 and of the whole run, the run's seconds and trained candidates. "Best"
    ranks as the search itself ranks (`score_search`: the fitness, minus 2 below the utility
    floor), so a generation-0 candidate the search would never pick cannot stand for its best; the
    plain best search-part fitness is kept beside it."""
    from evounlearn.search.archive import eligible, score_of
    from evounlearn.search.store import Store

    data = json.loads((rd / "leaderboard.json").read_text())
    win = data.get("winner") or {}
    store = Store.open_run(rd)
    try:
        done = [c for c in store.candidates(kind="candidate") if eligible(c)]
    finally:
        store.close()
    best = [score_of(c) for c in done]
    gen0 = [score_of(c) for c in done if c.generation == 0]
    raw = [float(c.fitness_search) for c in done]
    raw0 = [float(c.fitness_search) for c in done if c.generation == 0]
    return {"report_fitness": win.get("fitness_report"), "forget_quality": win.get("forget_quality"),
            "model_utility": win.get("model_utility"), "gen0_best": max(gen0, default=None),
            "final_best": max(best, default=None), "gen0_best_fitness": max(raw0, default=None),
            "final_best_fitness": max(raw, default=None), "seconds": data.get("seconds"),
            "winner_search_fitness": win.get("fitness_search"), "winner_search_sd": win.get("fitness_search_std"),
            "trained": (data.get("counts") or {}).get("candidates"), "code": win.get("code"),
            "target_utility": data.get("target_utility")}


def tune_result(rd: Path) -> dict[str, Any]:
    """The tune winner's report-part fitness, and FQ / MU from its report runs' results.json."""
    data = json.loads((rd / "leaderboard.json").read_text())
    best = (data.get("best") or {}).get("trial")
    row = next((f for f in data.get("finalists") or [] if f.get("trial") == best), {})
    summaries = []
    for res in sorted((rd / "trials" / f"{best:05d}").glob("report-seed*/results.json")) if best is not None else []:
        summaries.append(json.loads(res.read_text()).get("summary") or {})
    return {"report_fitness": row.get("report_fitness_mean"), "winner_search_fitness": row.get("search_fitness"),
            "forget_quality": _mean([s.get("forget_quality") for s in summaries]),
            "model_utility": _mean([s.get("model_utility") for s in summaries]),
            "trained": data.get("trained")}


def _winner_job(rd: Path) -> dict[str, Any] | None:
    """The candidate-job keyword arguments of a search run's winner (its checked program, function,
    interface and epochs), the run's own `unlearn` options and target utility; None without a winner."""
    from evounlearn.search.store import Store

    win = (json.loads((rd / "leaderboard.json").read_text()).get("winner") or {}).get("id")
    if win is None:
        return None
    store = Store.open_run(rd)
    try:
        c = store.candidate(int(win))
        cfg = store.get_meta("config") or {}
        target = store.get_meta("target") or {}
    finally:
        store.close()
    if c is None:
        return None
    return {"code": c.program or c.code, "function": c.function or "", "interface": c.interface or "faithful",
            "epochs": c.epochs, "unlearn": dict(cfg.get("unlearn") or {}),
            "target_utility": target.get("target_utility"), "utility_floor": cfg.get("utility_floor", 0.9)}


def transfer(settings: list[str], opts: argparse.Namespace) -> dict[str, dict[str, float | None]]:
    """The search winner of each setting (search seed 0) trained and scored on every setting's
    report part: the same candidate job as the search, in the same isolated workers
    (`LocalExecutor`: loss code never runs in this process), `report_seeds` seeds, the calibrated
    fitness against that setting's own target model and options."""
    from evounlearn.search.executors import make_executor

    runs = {s: Path(opts.work) / s / "search-seed0" for s in settings}
    found = {s: _winner_job(rd) for s, rd in runs.items()}  # also each setting's options and target
    jobs: dict[tuple[str, str], list[Any]] = {}
    ex = make_executor("local", opts.workers)
    try:
        for src, job in found.items():
            for dst in settings:
                if src == dst or job is None or found[dst] is None:
                    continue
                dinfo = found[dst]
                for s in range(opts.report_seeds):
                    kw = {"run_dir": str(Path(opts.work) / "transfer" / f"{src}-on-{dst}" / f"seed{s}"),
                          "code": job["code"], "function": job["function"], "interface": job["interface"],
                          "epochs": job["epochs"], "seed": s, "forget_part": "report", "unlearn": dinfo["unlearn"],
                          "benchmark": dst, "fitness": FITNESS, "target_utility": dinfo["target_utility"],
                          "utility_floor": dinfo["utility_floor"]}
                    jobs.setdefault((src, dst), []).append(
                        ex.submit("evounlearn.search.candidate:evaluate_candidate", kw))
        out: dict[str, dict[str, float | None]] = {}
        for src in settings:
            out[src] = {}
            for dst in settings:
                if src == dst:
                    out[src][dst] = evolve_result(runs[src]).get("report_fitness")
                    continue
                fits = []
                for fut in jobs.get((src, dst), []):
                    res = fut.result()
                    val = res.value if res.ok and isinstance(res.value, dict) else {}
                    if not val.get("ok"):
                        print(f"  transfer {src} -> {dst}: run failed: {(res.error or val.get('error') or '')[:200]}")
                    fits.append(val.get("fitness") if val.get("ok") else None)
                out[src][dst] = _mean(fits)
                print(f"  transfer {src} -> {dst}: {out[src][dst]}", flush=True)
    finally:
        ex.close()
    return out


# ------------------------------------------------------------------------------------------------
# criteria and outputs


def _pooled_sd(a: list[float], b: list[float]) -> float:
    va = statistics.variance(a) if len(a) >= 2 else 0.0
    vb = statistics.variance(b) if len(b) >= 2 else 0.0
    return math.sqrt((va + vb) / 2.0)


def _margin(a: list[float | None], b: list[float | None]) -> float | None:
    """(mean a - mean b) in pooled sd (+-inf when the sd is 0), None without values."""
    xa = [float(x) for x in a if x is not None]
    xb = [float(x) for x in b if x is not None]
    if not xa or not xb:
        return None
    diff, sd = statistics.fmean(xa) - statistics.fmean(xb), _pooled_sd(xa, xb)
    if sd > 0:
        return diff / sd
    return 0.0 if diff == 0 else math.copysign(math.inf, diff)


def criteria(settings: dict[str, Any], seconds: float) -> dict[str, Any]:
    vs_tuned, vs_random, improves, fq_ok = {}, {}, {}, {}
    for name, s in settings.items():
        arms = s["arms"]
        search = arms["search"]["report_fitness"]
        tuned = max((a for a in ("tuned_npo", "tuned_simnpo") if a in arms),
                    key=lambda a: _mean(arms[a]["report_fitness"]) or -math.inf)
        vs_tuned[name] = {"better_tuned": tuned, "margin_sd": _margin(search, arms[tuned]["report_fitness"])}
        vs_random[name] = _margin(search, arms["random"]["report_fitness"])
        g0, fin = _mean(arms["search"]["gen0_best"]), _mean(arms["search"]["final_best"])
        improves[name] = g0 is not None and fin is not None and fin > g0
        fq_s, fq_t = _mean(arms["search"]["forget_quality"]), _mean(arms[tuned]["forget_quality"])
        fq_ok[name] = fq_s is not None and fq_t is not None and fq_s >= 0.5 * fq_t
    m = [v["margin_sd"] for v in vs_tuned.values()]
    r = list(vs_random.values())
    return {
        "margin_vs_better_tuned_sd": vs_tuned, "margin_vs_random_sd": vs_random,
        "beats_tuned_by_2sd_on_2_settings": sum(1 for x in m if x is not None and x > 2) >= 2,
        "never_worse_than_tuned_by_2sd": all(x is not None and x >= -2 for x in m),
        "search_ge_random_everywhere": all(x is not None and x >= 0 for x in r),
        "beats_random_by_2sd_somewhere": any(x is not None and x > 2 for x in r),
        "final_best_above_gen0_best": improves, "final_best_above_gen0_best_everywhere": all(improves.values()),
        "forget_quality_at_least_half_tuned": fq_ok, "forget_quality_ok_everywhere": all(fq_ok.values()),
        "total_minutes": seconds / 60.0, "total_time_ok": seconds <= 150 * 60,
    }


def env_info(workers: int) -> dict[str, Any]:
    import torch

    return {"torch": torch.__version__, "python": platform.python_version(), "threads_per_run": 1,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(), "workers": workers,
            "device": "cuda" if torch.cuda.is_available() else "cpu", "machine": platform.machine()}


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "inf" if math.isinf(x) else f"{x:.4f}"
    return "-" if x is None else str(x)


def table(data: dict[str, Any]) -> str:
    lines = ["| setting | arm | report fitness (mean over seeds) | per seed | FQ | MU | gen-0 best | final best |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in data["settings"].items():
        for arm, a in s["arms"].items():
            per = ", ".join(_fmt(x) for x in a["report_fitness"])
            lines.append(f"| {name} | {arm} | {_fmt(_mean(a['report_fitness']))} | {per} | "
                         f"{_fmt(_mean(a['forget_quality']))} | {_fmt(_mean(a['model_utility']))} | "
                         f"{_fmt(_mean(a.get('gen0_best', [])))} | {_fmt(_mean(a.get('final_best', [])))} |")
    return "\n".join(lines)


def markdown(data: dict[str, Any]) -> str:
    out = [f"# Search value (issue 10){' - QUICK smoke test' if data['quick'] else ''}", "",
           f"fitness `{data['fitness']}`, budget {data['budget']} per arm and search seed, "
           f"{data['search_seeds']} search seed(s), {data['report_seeds']} report seed(s); "
           f"{data['seconds'] / 60:.1f} min, {_fmt(data['seconds_per_candidate'])} s per trained candidate; "
           f"env {json.dumps(data['env'])}", "", table(data), ""]
    if data.get("transfer"):
        names = list(data["transfer"])
        out += ["Transfer (search winner found on the row's setting, report fitness on the column's):", "",
                "| found on | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        out += [f"| {src} | " + " | ".join(_fmt(row.get(d)) for d in names) + " |"
                for src, row in data["transfer"].items()]
        out.append("")
    out += ["Criteria:", "", "```", json.dumps(data["criteria"], indent=1, default=str), "```", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 setting, budget 4, 1 seed, no criteria")
    ap.add_argument("--budget", type=int, default=24, help="trained candidates / trials per arm and seed")
    ap.add_argument("--seeds", type=int, default=3, help="search seeds per arm")
    ap.add_argument("--report-seeds", type=int, default=3, help="seeds of the winner's re-run on the report part")
    ap.add_argument("--finalists", type=int, default=2, help="top candidates re-run before picking the winner")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--work", default=str(ROOT / "runs" / "search_value"), help="where the runs are kept")
    ap.add_argument("--out", default=str(RESULTS / "search_value"), help="output path without extension")
    opts = ap.parse_args(argv)
    settings, arms = opts.settings.split(","), opts.arms.split(",")
    if opts.quick:
        settings, opts.budget, opts.seeds, opts.report_seeds, opts.finalists = settings[:1], 4, 1, 1, 1
        opts.work = str(Path(opts.work).with_name(Path(opts.work).name + "_quick"))
    t0 = time.time()
    results: dict[str, Any] = {}
    trained, earlier, unknown = 0, 0.0, 0  # earlier: wall seconds of runs finished by an earlier invocation
    for setting in settings:
        results[setting] = {"arms": {}}
        for arm in arms:
            per = []
            for seed in range(opts.seeds):
                if (Path(opts.work) / setting / f"{arm}-seed{seed}" / "leaderboard.json").is_file():
                    took = run_seconds(setting, arm, seed, opts)
                    earlier += took or 0.0
                    unknown += took is None
                rd = run_arm(arm, setting, seed, opts.budget, opts)
                per.append(evolve_result(rd) if arm in ("search", "random") else tune_result(rd))
            keys = ["report_fitness", "forget_quality", "model_utility", "winner_search_fitness"]
            keys += ["winner_search_sd"] if arm in ("search", "random") else []
            keys += ["gen0_best", "final_best", "gen0_best_fitness", "final_best_fitness"] if arm == "search" else []
            results[setting]["arms"][arm] = {k: [p.get(k) for p in per] for k in keys}
            trained += sum(int(p.get("trained") or 0) for p in per)
    xfer = transfer(settings, opts) if "search" in arms and len(settings) > 1 else {}
    now = time.time() - t0
    seconds = now + earlier  # the whole benchmark: runs of earlier invocations count with their own wall time
    data: dict[str, Any] = {
        "fitness": FITNESS, "budget": opts.budget, "quick": opts.quick, "search_seeds": opts.seeds,
        "report_seeds": opts.report_seeds, "finalists": opts.finalists, "seconds": seconds,
        "seconds_this_invocation": now, "seconds_earlier_runs": earlier, "runs_without_recorded_time": unknown,
        "seconds_per_candidate": seconds / trained if trained else None,
        "settings": results, "transfer": xfer, "env": env_info(opts.workers),
        "criteria": ({"evaluated": False, "why": "--quick is a smoke test"} if opts.quick or len(arms) < len(ARMS)
                     else criteria(results, seconds)),
    }
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown(data))
    print(table(data))
    print(json.dumps(data["criteria"], default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
