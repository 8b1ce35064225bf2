"""Every method tuned alike: each of the 13 registered methods (all but `evolved`) tuned with
`evounlearn tune` at the same budget and fitness (`calibrated`) on each generated setting at the
resolving size, its winner (the best search-part trial) re-run with `--report-seeds` seeds on the
report part, which the tuning never sees. The untuned table (`methods.json`: registered defaults,
default size) says how the defaults do; this one how each method does when tuned as fairly as
`evolve` is run.

Per setting and method, from the tune run (`RUN_DIR/tune.sqlite` and its finalist run folders):
- `report_fitness`: the winner's calibrated fitness on the report part, one value per report seed;
- `forget_quality`, `model_utility`: the same runs' values, per report seed;
- `seconds_per_step`: the mean training seconds per optimizer step of those runs (`train.json`);
- `budget` (trials per tune), `trained` (trials trained), `best_params` (the winner's sampled
  loss params, lr and epochs), `seconds` (the tune's wall time, preparation included).

    {"fitness": "calibrated", "budget": n, "report_seeds": k, "size": "large",
     "settings": {name: {"methods": {method: {"report_fitness": [...], "forget_quality": [...],
                                             "model_utility": [...], "seconds_per_step": x,
                                             "budget": n, ...}}}},
     "seconds": s, "env": {...}}

Budget: the default (4 trials per method and setting, 1 finalist, 3 report seeds: 7 trainings per
method and setting, 273 in all) is chosen to finish within 90 minutes on 2 quiet cores (2 workers
of one thread): noise.json measured 47.8 / 25.7 / 14.9 s per candidate (train + lean evaluation)
on generated-large / entangled-large / partial-large, so 13 x 7 x (47.8 + 25.7 + 14.9) / 2 = 67
minutes, before the report runs' full evaluation and PMC's / AltPO's sampling (tune samples
epochs in [1, 10], below the 8 epochs those timings trained: some of it back). Budget 4 is random
search (TPE starts after 10 trials): the same for every method, which is the point.

    python benchmarks/methods_tuned.py            # the benchmark (~70-85 min on 2 quiet cores)
    python benchmarks/methods_tuned.py --smoke    # generated (default size), npo, budget 2
Writes benchmarks/results/methods_tuned.json and .md. Every tune run is kept under --work (default
runs/methods_tuned) and reused when finished, continued with `tune --resume` when interrupted, so
an interrupted benchmark continues where it stopped. Not run in CI.
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
SETTINGS = ("generated-large", "entangled-large", "partial-large")
METHODS = ("grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo", "rmu", "undial", "pmc",
           "wga", "satimp", "ceu", "pdu", "altpo")
FITNESS = "calibrated"
KEYS = ("report_fitness", "forget_quality", "model_utility")


# ------------------------------------------------------------------------------------------------
# running: one `evounlearn tune` per (setting, method), through the CLI as a user would


def _cli(args: list[str], log: Path) -> None:
    """One `evounlearn ...` command (this checkout's sources first on the path), output to `log`;
    a failure stops the benchmark with the command and the log's tail."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        rc = subprocess.run([sys.executable, "-m", "evounlearn.cli.main", *args], stdout=fh,
                            stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"command failed (rc {rc}): evounlearn {' '.join(args)}\n{tail}")


def run_dir(work: str | Path, setting: str, method: str) -> Path:
    return Path(work) / setting.replace(":", "_").replace("/", "_") / method


def run_tune(setting: str, method: str, opts: argparse.Namespace) -> tuple[Path, float]:
    """The tune run of `method` on `setting` (run now unless finished; continued with --resume when
    an earlier invocation was interrupted); returns its folder and the seconds this call spent."""
    rd = run_dir(opts.work, setting, method)
    if (rd / "leaderboard.json").is_file():
        return rd, 0.0
    log = rd.parent / f"{method}.log"
    t = time.time()
    if (rd / "tune.sqlite").is_file():
        _cli(["tune", "--resume", str(rd)], log)
    else:
        if rd.exists():  # made but never started its study: nothing to keep
            import shutil

            shutil.rmtree(rd)
        _cli(["tune", "--method", method, "--benchmark", setting, "--budget", str(opts.budget), "--seed",
              str(opts.seed), "--workers", str(opts.workers), "--fitness", opts.fitness, "--run-dir", str(rd),
              "finalists=1", f"report_seeds={opts.report_seeds}", *opts.tune_option], log)
    took = time.time() - t
    seconds = rd.parent / f"{method}.seconds"  # summed over the invocations that ran it
    before = float(seconds.read_text()) if seconds.is_file() else 0.0
    seconds.write_text(f"{before + took:.1f}\n")
    print(f"  {setting:16s} {method:12s} {took:7.0f} s", flush=True)
    return rd, took


# ------------------------------------------------------------------------------------------------
# reading a finished tune run


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _agg(summary: dict[str, Any] | None, key: str) -> float | None:
    v = (summary or {}).get(key)
    return _num(v.get("agg") if isinstance(v, dict) else v)


def winner_runs(leaderboard: dict[str, Any], finalist_runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The report-part runs (RunOutcome dicts) of the tune's winner, by seed."""
    best = (leaderboard.get("best") or {}).get("trial")
    if best is None:
        return []
    prefix = f"{int(best):05d}/"
    return sorted((v for k, v in finalist_runs.items() if k.startswith(prefix)), key=lambda r: int(r.get("seed", 0)))


def method_result(leaderboard: dict[str, Any], runs: list[dict[str, Any]],
                  seconds_per_step: list[float | None], seconds: float | None) -> dict[str, Any]:
    """One method's entry: per report seed fitness / FQ / MU (None where a run failed), the mean
    seconds per step, the budget and what the tune trained, the winner's params."""
    best = leaderboard.get("best") or {}
    params = next((t.get("params") for t in leaderboard.get("trials") or [] if t.get("trial") == best.get("trial")),
                  None)
    steps = [s for s in seconds_per_step if s is not None]
    return {
        "report_fitness": [_num(r.get("fitness")) if r.get("ok") else None for r in runs],
        "forget_quality": [_agg(r.get("summary"), "forget_quality") for r in runs],
        "model_utility": [_agg(r.get("summary"), "model_utility") for r in runs],
        "seconds_per_step": statistics.fmean(steps) if steps else None,
        "budget": leaderboard.get("budget"), "trained": leaderboard.get("trained"),
        "best_trial": best.get("trial"), "best_params": params, "seconds": seconds,
    }


def read_tune(rd: Path) -> dict[str, Any]:
    """`method_result` of a finished tune run folder."""
    import optuna

    from evounlearn.search.tune import STUDY_NAME, storage_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    leaderboard = json.loads((rd / "leaderboard.json").read_text())
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(rd))
    runs = winner_runs(leaderboard, dict(study.user_attrs.get("finalist_runs") or {}))
    per_step = []
    for r in runs:
        train = Path(str(r.get("run_dir") or "")) / "train.json"
        per_step.append(_num(json.loads(train.read_text()).get("seconds_per_step")) if train.is_file() else None)
    took = rd.parent / f"{rd.name}.seconds"
    return method_result(leaderboard, runs, per_step, float(took.read_text()) if took.is_file() else None)


# ------------------------------------------------------------------------------------------------
# outputs


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None


def _sd(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.stdev(vals) if len(vals) > 1 else None


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.2e}" if x != 0 and abs(x) < 1e-3 else f"{x:.{digits}f}"
    return str(x)


def table(data: dict[str, Any]) -> str:
    """One row per (setting, method), best report fitness first within a setting."""
    lines = ["| setting | method | report fitness mean ± sd (n) | forget quality | model utility | s/step | trained |",
             "|---|---|---|---|---|---|---|"]
    for name, s in data["settings"].items():
        rows = sorted(s["methods"].items(), key=lambda kv: -(_mean(kv[1]["report_fitness"]) or -math.inf))
        for method, m in rows:
            n = sum(v is not None for v in m["report_fitness"])
            lines.append(f"| {name} | {method} | {_fmt(_mean(m['report_fitness']))} ± {_fmt(_sd(m['report_fitness']))} "
                         f"({n}) | {_fmt(_mean(m['forget_quality']))} | {_fmt(_mean(m['model_utility']))} | "
                         f"{_fmt(m['seconds_per_step'])} | {m.get('trained')}/{m.get('budget')} |")
    return "\n".join(lines)


def resolved(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per setting: the best method (by mean report fitness) and every other method's difference
    from it with its standard error over the report seeds (`reports.stats`): which methods the
    benchmark cannot tell from the best (within 2 SE)."""
    from evounlearn.reports.stats import difference_of_values

    out: dict[str, dict[str, Any]] = {}
    for name, s in data["settings"].items():
        ranked = sorted(s["methods"].items(), key=lambda kv: -(_mean(kv[1]["report_fitness"]) or -math.inf))
        if not ranked:
            continue
        best, bm = ranked[0]
        diffs = {}
        for method, m in ranked[1:]:
            d = difference_of_values(bm["report_fitness"], m["report_fitness"])
            if d is not None:
                diffs[method] = {"delta": d.delta, "se": d.se, "resolved": d.above}
        out[name] = {"best": best, "vs_best": diffs,
                     "within_2se_of_best": [m for m, d in diffs.items() if not d["resolved"]]}
    return out


def markdown(data: dict[str, Any]) -> str:
    head = "# Methods, each tuned alike" + (" - SMOKE test" if data.get("smoke") else "")
    lines = [
        head, "",
        f"`evounlearn tune`, fitness `{data['fitness']}`, budget {data['budget']} trials per method and setting, "
        f"the winner re-run with {data['report_seeds']} report seed(s); settings at the {data['size']} size; "
        f"{data['seconds'] / 60:.1f} min in all; env {json.dumps(data['env'])}.",
        "Means over the report seeds; the untuned defaults are in `methods.md`.", "", table(data), "",
        "The best method of each setting against the others: difference of the mean report fitness ± its "
        "standard error over the report seeds; a method is told apart from the best only when the "
        "difference exceeds 2 SE.", ""]
    for name, r in resolved(data).items():
        cells = [f"{m} {d['delta']:+.3f} ± {_fmt(d['se'])}" for m, d in r["vs_best"].items()]
        lines.append(f"- {name}: best `{r['best']}`; within 2 SE of it: "
                     f"{', '.join(r['within_2se_of_best']) or 'none'}. Differences: " + "; ".join(cells))
    return "\n".join(lines + [""])


def env_info(workers: int) -> dict[str, Any]:
    import torch

    return {"torch": torch.__version__, "python": platform.python_version(), "threads_per_run": 1,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(), "workers": workers,
            "device": "cuda" if torch.cuda.is_available() else "cpu", "machine": platform.machine()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="generated (default size), npo, budget 2, 3 report seeds")
    ap.add_argument("--budget", type=int, default=4, help="trials per method and setting (default 4)")
    ap.add_argument("--report-seeds", type=int, default=3, help="seeds of the winner's report-part re-run (>= 3)")
    ap.add_argument("--seed", type=int, default=0, help="tune's sampler and training seed")
    ap.add_argument("--fitness", default=FITNESS, help=f"the fitness tuned and reported (default {FITNESS})")
    ap.add_argument("--workers", type=int, default=2, help="trials in parallel (one thread each)")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--tune-option", action="append", default=[], help="extra key=value for every tune run")
    ap.add_argument("--work", default=str(ROOT / "runs" / "methods_tuned"), help="where the tune runs are kept")
    ap.add_argument("--out", default=str(RESULTS / "methods_tuned"), help="output path without extension")
    opts = ap.parse_args(argv)
    settings, methods = opts.settings.split(","), opts.methods.split(",")
    if opts.smoke:
        settings, methods, opts.budget = ["generated"], ["npo"], 2
        opts.work = str(Path(opts.work).with_name(Path(opts.work).name + "_smoke"))
        opts.out = str(Path(opts.out).with_name(Path(opts.out).name + "_smoke"))
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)} (known: {', '.join(METHODS)})")
    if opts.budget < 1 or opts.report_seeds < 1:
        ap.error("--budget and --report-seeds must be >= 1")
    t0 = time.time()
    results: dict[str, Any] = {}
    for setting in settings:
        results[setting] = {"methods": {}}
        for method in methods:
            rd, _ = run_tune(setting, method, opts)
            results[setting]["methods"][method] = read_tune(rd)
    took = [m.get("seconds") for s in results.values() for m in s["methods"].values()]
    data: dict[str, Any] = {
        "fitness": opts.fitness, "budget": opts.budget, "report_seeds": opts.report_seeds, "finalists": 1,
        "seed": opts.seed, "smoke": opts.smoke,
        "size": "large" if all(s.endswith("-large") for s in settings) else "default",
        "seconds": sum(t for t in took if t is not None),  # every tune's own wall time, over invocations
        "seconds_this_invocation": time.time() - t0,
        "settings": results, "env": env_info(opts.workers),
    }
    data["resolved"] = resolved(data)
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown(data))
    print(table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
