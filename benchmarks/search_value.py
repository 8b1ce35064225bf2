"""Does the search add value? The search against its random control and tuned baselines, at an
equal number of trainings, on the resolving size of the generated benchmark (noise.json), with the
`calibrated` fitness (version 2). Criteria fixed before any run (the instrument issue):

Arms (each run through the CLI, as a user would):
- `search`:       evounlearn evolve --mode ours        (races elites on more seeds, ranks on a lower bound)
- `random`:       evounlearn evolve --control random   (random trees, no selection)
- `tuned_npo`:    evounlearn tune --method npo         (TPE over constants, retain weight, lr, epochs)
- `tuned_simnpo`: evounlearn tune --method simnpo
- `search_extended` (only with --arms, not in the criteria): `search` in the extended (token-level)
  interface, `interface=extended`: what the token-level terms add, under the same protocol
Every arm trains `--budget` times on the search part per search seed (the search's races count;
one finalist, so the finalist's re-runs select nothing: its search seeds are already raced), >= 5
search seeds per arm; its winner (chosen on the search part) is re-run with `--report-seeds`
seeds on the report part, which no arm sees while searching.

The instrument (noise.json, `--noise`): a candidate run is k trainings on shared seeds scored by
their mean (`train_seeds=k`), k the smallest <= 3 whose run meets the datasheet's targets (one
run's sd <= 0.035, a paired difference's <= 0.04); `--budget` and `--report-seeds` count
trainings, so every arm gets budget // k runs and its winner ceil(report_seeds / k) report runs.
The search races its best candidates to 3 trainings (`ours.race_seeds` counts trainings), so with
k = 3 it does not race: a run is already the resolving mean.

Settings: each benchmark is used when (1) the datasheet says the instrument resolves there (some
k <= 3 meets the sd targets and the retain oracle's search-vs-report gap is <= 0.03: the data's
own, no k moves it) and (2) its headroom, the retain oracle's report fitness minus the better
tuned baseline's mean, is >= 0.05: rules that look only at the datasheet's fixed losses, the
oracle and the baselines. They are tried in the order of SETTINGS (fixed before any arm ran),
one whole setting at a time (rule 1 costs nothing; then its tuned baselines, its headroom, then
its search and random arms), until `--needed` (2) settings qualify; the rest are not run (a
setting that fails rule 2 costs only its tuned baselines).

Each finished arm run is also kept as a small record, `benchmarks/results/search_value_runs/
SETTING/ARM-seedK.json` (its results, wall seconds, winner job and the code version: a hash of
src/ and the library versions), so a run interrupted on one machine continues on another from the
committed records; a record from other code is not reused (the run is done again).
Statistic per setting: delta = difference of the arms' means over search seeds, SE = sqrt(var_a /
n_a + var_b / n_b); "beats" = delta > 2 SE and delta > 0.01; "worse" = delta < -2 SE. The search
passes when, over the qualifying settings (>= 2 needed), it beats the better tuned baseline on
>= 2 and is worse on none, beats random on >= 1 and is worse on none, its final best's multi-seed
mean exceeds generation 0's best multi-seed mean on every setting, and the whole benchmark takes
<= 150 minutes on 2 quiet cores.

Writes benchmarks/results/search_value.json and .md and prints a table:
  {"fitness": "calibrated", "fitness_version": 2, "budget": n, "seconds": s, ...,
   "settings": {name: {"oracle_report_fitness": x, "headroom": x, "qualifies": bool,
                       "arms": {arm: {"report_fitness": [per search seed: mean over report seeds],
                                      "forget_quality": [...], "model_utility": [...],
                                      "trainings": [...] (search-part trainings per search seed),
                                      "winner_search_fitness": [...], "winner_search_sd": [...],
                                      "gen0_best_mean": [...], "final_best_mean": [...] (search arm:
                                      the best-ranked candidate of generation 0 / of the run, the
                                      mean of its search-part seeds)}}}},
   "transfer": {found on: {evaluated on: report fitness}}, "criteria": {...}, "env": {...}}

    python benchmarks/search_value.py               # the full benchmark
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
SETTINGS = ("partial-large", "entangled-large", "paraphrase-large", "generated-large")  # noise.json's order
NOISE = RESULTS / "noise.json"
RECORDS = RESULTS / "search_value_runs"
ARMS = ("search", "random", "tuned_npo", "tuned_simnpo")
# Arms that may be added with --arms (not in the criteria): the search in the extended (token-level)
# interface, so that what the token-level terms add is measured under the same protocol.
EXTRA_ARMS = ("search_extended",)
EVOLVE_ARMS = ("search", "random", "search_extended")
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


def instrument(setting: str, opts: argparse.Namespace) -> dict[str, Any]:
    """The setting's instrument from the noise datasheet (`--noise`): trainings per candidate run
    k (`train_seeds`), one run's sd, the paired-difference sd, the oracle's part gap and whether
    they meet the instrument's targets (noise.py `instrument`). A setting without a datasheet
    entry does not meet them."""
    sheets = json.loads(Path(opts.noise).read_text()).get("settings", {}) if Path(opts.noise).is_file() else {}
    sheet = sheets.get(setting)
    if sheet is None or "meets_targets" not in sheet:
        return {"trainings_per_candidate": None, "meets_targets": False,
                "why_not": f"no datasheet entry in {opts.noise} (benchmarks/noise.py --benchmarks {setting} --merge)"}
    keys = ("trainings_per_candidate", "single_run_sd", "paired_diff_sd", "single_training_sd",
            "paired_diff_sd_one_training", "oracle_part_gap", "seconds_per_training", "seconds_per_candidate",
            "meets_targets", "why_not", "models_sha256")
    return {k: sheet.get(k) for k in keys}


def prepared_models(setting: str, opts: argparse.Namespace) -> str | None:
    """Install the setting's artifact (`--artifacts`/<setting>.tar.gz; nothing is written
    when the cache already holds it; without one the cache's own preparation, trained if absent)
    and return the sha256 of the models every arm is scored against."""
    from evounlearn.benchmarks import get_benchmark
    from evounlearn.benchmarks.tofu.artifact import import_for_benchmark

    artifact = Path(opts.artifacts) / f"{setting}.tar.gz" if opts.artifacts else None
    if artifact is not None and artifact.is_file():
        return import_for_benchmark(setting, artifact)[0]
    bench = get_benchmark(setting)
    return bench.models_sha256(bench.prepare({}))


def same_models(inst: dict[str, Any], sha: str | None) -> str | None:
    """Why the datasheet does not describe these models (None when it does): its entry names the
    models it measured, and the instrument's verdict holds for those only (another machine's
    preparation moved the verdicts: reproduce_avx512_*.json)."""
    measured = inst.get("models_sha256")
    if not measured:
        return "the datasheet's entry does not name the models it measured (measure it again with noise.py)"
    if measured != sha:
        return (f"the datasheet measured models {str(measured)[:12]}, the cache holds {str(sha)[:12]} "
                "(import the setting's artifact, or measure these with noise.py)")
    return None


def runs_of(trainings: int, k: int) -> int:
    """Candidate runs of k trainings each that `trainings` trainings pay for (at least 1)."""
    return max(1, int(trainings) // max(1, int(k)))


def run_arm(arm: str, setting: str, seed: int, budget: int, opts: argparse.Namespace, k: int = 1) -> Path:
    """The arm's run directory (run now unless a finished one is there). `budget` counts
    trainings: the arm gets budget // k runs of k trainings (`train_seeds=k`) and its winner
    ceil(report_seeds / k) runs on the report part (the search races to `ours.race_seeds` = 3
    trainings, so with k = 3 it does not race)."""
    rd = setting_dir(setting, opts) / f"{arm}-seed{seed}"
    if (rd / "leaderboard.json").is_file():
        return rd  # finished by an earlier invocation: its wall time is in ARM-seedK.seconds
    if rd.exists():  # an interrupted run: start it again (both commands refuse a used folder)
        import shutil

        shutil.rmtree(rd)
    keys = [f"finalists={opts.finalists}", f"report_seeds={-(-opts.report_seeds // k)}", f"train_seeds={k}"]
    runs = runs_of(budget, k)
    if arm in EVOLVE_ARMS:
        args = ["evolve", *_common(setting, runs, seed, opts), "--run-dir", str(rd),
                *(["--control", "random"] if arm == "random" else ["--mode", "ours"]),
                *(["interface=extended"] if arm == "search_extended" else []),
                f"fitness={FITNESS}", "baselines=[]", *keys]
    else:
        method = arm.removeprefix("tuned_")
        args = ["tune", "--method", method, *_common(setting, runs, seed, opts), "--run-dir", str(rd),
                f"fitness={FITNESS}", *keys]
    t = time.time()
    _cli(args, rd.parent / f"{arm}-seed{seed}.log")
    took = time.time() - t
    (rd.parent / f"{arm}-seed{seed}.seconds").write_text(f"{took:.1f}\n")
    print(f"  {setting:10s} {arm:13s} seed {seed}: {took:6.0f} s", flush=True)
    return rd


def run_seconds(setting: str, arm: str, seed: int, opts: argparse.Namespace) -> float | None:
    """The wall seconds of one arm run (the CLI command, preparation included), as recorded when it ran."""
    f = setting_dir(setting, opts) / f"{arm}-seed{seed}.seconds"
    return float(f.read_text()) if f.is_file() else None


def setting_dir(setting: str, opts: argparse.Namespace) -> Path:
    """Where a setting's arm runs are kept: per set of prepared models (`opts.models`), so that a
    run against another preparation is never taken for a finished one."""
    sha = (getattr(opts, "models", None) or {}).get(setting)
    return Path(opts.work) / setting / (str(sha)[:12] if sha else "")


def code_version() -> dict[str, Any]:
    """What an arm run's numbers depend on: a hash of every source file under src/ and the
    installed torch / transformers / tokenizers versions."""
    import hashlib

    from evounlearn.versions import library_versions

    h = hashlib.sha256()
    for f in sorted((ROOT / "src").rglob("*")):
        if f.is_file() and f.suffix in (".py", ".yaml") and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return {"src": h.hexdigest()[:16], "libraries": library_versions()}


def record_path(setting: str, arm: str, seed: int, opts: argparse.Namespace) -> Path:
    return Path(opts.records) / setting / f"{arm}-seed{seed}.json"


def read_record(setting: str, arm: str, seed: int, version: dict[str, Any],
                opts: argparse.Namespace) -> dict[str, Any] | None:
    """The kept record of one finished arm run, if it was made by this code (else None, said once)."""
    p = record_path(setting, arm, seed, opts)
    if not p.is_file():
        return None
    rec = json.loads(p.read_text())
    if rec.get("code_version") != version:
        print(f"  {setting:10s} {arm:13s} seed {seed}: record made by other code "
              f"({rec.get('code_version')} vs {version}): run again", flush=True)
        return None
    return rec


def _portable(job: dict[str, Any] | None) -> dict[str, Any] | None:
    """A winner job without this machine's cache folder (`prepare.cache_dir`, set from
    $EVOUNLEARN_CACHE): on another machine the job prepares in that machine's own cache."""
    if job is None:
        return None
    unlearn = dict(job.get("unlearn") or {})
    if isinstance(unlearn.get("prepare"), dict):
        unlearn["prepare"] = {k: v for k, v in unlearn["prepare"].items() if k != "cache_dir"}
    return {**job, "unlearn": unlearn}


def write_record(setting: str, arm: str, seed: int, rd: Path, seconds: float | None,
                 version: dict[str, Any], opts: argparse.Namespace, k: int = 1) -> dict[str, Any]:
    """Extract and keep one finished arm run's record (see the module's docstring)."""
    from evounlearn.files import atomic_write_json

    rec = {"setting": setting, "arm": arm, "seed": seed, "budget": opts.budget, "report_seeds": opts.report_seeds,
           "train_seeds": k, "finalists": opts.finalists, "workers": opts.workers, "seconds": seconds,
           "code_version": version, "env": env_info(opts.workers),
           "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "result": evolve_result(rd, k) if arm in EVOLVE_ARMS else tune_result(rd, k),
           "winner_job": _portable(_winner_job(rd)) if arm in EVOLVE_ARMS else None}
    atomic_write_json(record_path(setting, arm, seed, opts), rec, indent=1, default=str)
    return rec


# ------------------------------------------------------------------------------------------------
# reading the results


def _mean(xs: list[float | None]) -> float | None:
    vals = [float(x) for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return statistics.fmean(vals) if vals else None


def evolve_result(rd: Path, k: int = 1) -> dict[str, Any]:
    """Winner's report-part fitness / FQ / MU (means over report seeds), the best search-part
    score of generation 0 and of the whole run, the run's seconds and trained candidates. "Best"
    ranks as the search itself ranks (`score_search`: the fitness, minus 2 below the utility
    floor), so a generation-0 candidate the search would never pick cannot stand for its best; the
    plain best search-part fitness is kept beside it. `trainings` = search-part runs x k (each run
    trains k times, `train_seeds`)."""
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
    # the best-ranked candidate (as the search ranks: lower bound, floor) of generation 0 and of the
    # run, each by the mean of all its search-part seeds (raced elites have several)
    top0 = max((c for c in done if c.generation == 0), key=score_of, default=None)
    top = max(done, key=score_of, default=None)
    counts = data.get("counts") or {}
    return {"report_fitness": win.get("fitness_report"), "forget_quality": win.get("forget_quality"),
            "model_utility": win.get("model_utility"), "gen0_best": max(gen0, default=None),
            "final_best": max(best, default=None), "gen0_best_fitness": max(raw0, default=None),
            "final_best_fitness": max(raw, default=None), "seconds": data.get("seconds"),
            "gen0_best_mean": None if top0 is None else float(top0.fitness_search),
            "gen0_best_seeds": None if top0 is None else top0.n_search,
            "final_best_mean": None if top is None else float(top.fitness_search),
            "final_best_seeds": None if top is None else top.n_search,
            "trainings": (int(counts.get("candidates") or 0) + int(counts.get("search_reruns") or 0)) * k,
            "winner_search_fitness": win.get("fitness_search"), "winner_search_sd": win.get("fitness_search_std"),
            "trained": (data.get("counts") or {}).get("candidates"), "code": win.get("code"),
            "target_utility": data.get("target_utility")}


def oracle_report_fitness(setting: str) -> float | None:
    """The retain oracle's fitness on the report part (against the target's utility there), from
    the benchmark's cached references (prepared once; the same numbers a search run records)."""
    from evounlearn.benchmarks import compute_fitness, get_benchmark
    from evounlearn.benchmarks.references import cached_reference

    bench = get_benchmark(setting)
    prepared = bench.prepare({})
    ref = cached_reference(bench, prepared, "report", {})
    if ref.retain is None:
        return None
    f = compute_fitness(setting, ref.retain, {"model_utility": ref.target["model_utility"]}, fitness=FITNESS)
    return float(f) if math.isfinite(f) else None


def tune_result(rd: Path, k: int = 1) -> dict[str, Any]:
    """The tune winner's report-part fitness, and FQ / MU from its report runs' results.json (with
    k trainings per run: each training's, under RUN/train-seedS/)."""
    data = json.loads((rd / "leaderboard.json").read_text())
    best = (data.get("best") or {}).get("trial")
    row = next((f for f in data.get("finalists") or [] if f.get("trial") == best), {})
    summaries = []
    for res in sorted((rd / "trials" / f"{best:05d}").glob("report-seed*/**/results.json")) if best is not None else []:
        summaries.append(json.loads(res.read_text()).get("summary") or {})
    return {"report_fitness": row.get("report_fitness_mean"), "winner_search_fitness": row.get("search_fitness"),
            "forget_quality": _mean([s.get("forget_quality") for s in summaries]),
            "model_utility": _mean([s.get("model_utility") for s in summaries]),
            "trained": data.get("trained"), "trainings": int(data.get("trained") or 0) * k}


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


def transfer(found: dict[str, dict[str, Any] | None], own: dict[str, float | None],
             opts: argparse.Namespace) -> dict[str, dict[str, float | None]]:
    """The search winner of each setting (search seed 0; `found`: its candidate job, also the
    setting's options and target) trained and scored on every other setting's report part: the
    same candidate job as the search, in the same isolated workers (`LocalExecutor`: loss code
    never runs in this process), `report_seeds` seeds, the calibrated fitness against that
    setting's own target model and options. `own`: each winner's report fitness on its own setting."""
    from evounlearn.search.executors import make_executor

    settings = list(found)
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
                    out[src][dst] = own.get(src)
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


def compare(a: list[float | None], b: list[float | None]) -> dict[str, Any]:
    """delta = mean(a) - mean(b), SE = sqrt(var_a / n_a + var_b / n_b) over the search seeds;
    beats = delta > 2 SE and delta > 0.01, worse = delta < -2 SE (`evounlearn.reports.stats`)."""
    from evounlearn.reports.stats import difference_of_values

    d = difference_of_values(a, b, min_delta=0.01)
    if d is None or d.se is None:
        return {"delta": None if d is None else d.delta, "se": None, "beats": False, "worse": False,
                "n": [0, 0] if d is None else [d.n_a, d.n_b]}
    return {"delta": d.delta, "se": d.se, "beats": d.above, "worse": d.below, "n": [d.n_a, d.n_b]}


def qualify(s: dict[str, Any]) -> None:
    """A setting's headroom (oracle report fitness - the better tuned baseline's mean) and whether
    it is >= 0.05, in place."""
    arms = s["arms"]
    tuned = [m for m in (_mean(arms[a]["report_fitness"]) for a in ("tuned_npo", "tuned_simnpo") if a in arms)
             if m is not None]
    oracle = s.get("oracle_report_fitness")
    s["headroom"] = None if oracle is None or not tuned else oracle - max(tuned)
    s["qualifies"] = s["headroom"] is not None and s["headroom"] >= 0.05


def criteria(settings: dict[str, Any], seconds: float) -> dict[str, Any]:
    used = {n: s for n, s in settings.items() if s.get("qualifies")}
    vs_tuned, vs_random, improves = {}, {}, {}
    for name, s in used.items():
        arms = s["arms"]
        search = arms["search"]["report_fitness"]
        tuned = max((a for a in ("tuned_npo", "tuned_simnpo") if a in arms),
                    key=lambda a: _mean(arms[a]["report_fitness"]) or -math.inf)
        vs_tuned[name] = {"better_tuned": tuned, **compare(search, arms[tuned]["report_fitness"])}
        vs_random[name] = compare(search, arms["random"]["report_fitness"])
        g0, fin = arms["search"]["gen0_best_mean"], arms["search"]["final_best_mean"]
        improves[name] = compare(fin, g0) | {"final_mean_above_gen0_mean": (_mean(fin) or -math.inf) > (_mean(g0) or math.inf)}
    return {
        "qualifying_settings": sorted(used), "enough_settings": len(used) >= 2,
        "vs_better_tuned": vs_tuned, "vs_random": vs_random, "final_vs_gen0": improves,
        "beats_tuned_on_2_settings": sum(v["beats"] for v in vs_tuned.values()) >= 2,
        "never_worse_than_tuned": not any(v["worse"] for v in vs_tuned.values()),
        "beats_random_somewhere": any(v["beats"] for v in vs_random.values()),
        "never_worse_than_random": not any(v["worse"] for v in vs_random.values()),
        "final_best_above_gen0_best_everywhere": bool(improves) and all(
            v["final_mean_above_gen0_mean"] for v in improves.values()),
        "instrument_meets_targets_everywhere": bool(used) and all(
            (s.get("instrument") or {}).get("meets_targets") for s in used.values()),
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
    lines = ["| setting (oracle, headroom, trainings per run) | arm | report fitness mean ± sd (n) | per search seed | FQ | MU "
             "| trainings | gen-0 best mean | final best mean |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in data["settings"].items():
        if not s["arms"]:
            lines.append(f"| {name} | - | not run: {s.get('not_run')} | | | | | | |")
            continue
        k = (s.get("instrument") or {}).get("trainings_per_candidate")
        where = f"{name} ({_fmt(s.get('oracle_report_fitness'))}, {_fmt(s.get('headroom'))}, k={k}" + (
            ")" if s.get("qualifies") else ", not used)")
        for arm, a in s["arms"].items():
            vals = [float(x) for x in a["report_fitness"] if isinstance(x, (int, float))]
            sd = statistics.stdev(vals) if len(vals) > 1 else None
            per = ", ".join(_fmt(x) for x in a["report_fitness"])
            lines.append(f"| {where} | {arm} | {_fmt(_mean(vals))} ± {_fmt(sd)} ({len(vals)}) | {per} | "
                         f"{_fmt(_mean(a['forget_quality']))} | {_fmt(_mean(a['model_utility']))} | "
                         f"{_fmt(_mean(a.get('trainings', [])))} | {_fmt(_mean(a.get('gen0_best_mean', [])))} | "
                         f"{_fmt(_mean(a.get('final_best_mean', [])))} |")
    return "\n".join(lines)


def markdown(data: dict[str, Any]) -> str:
    out = [f"# Search value{' - QUICK smoke test' if data['quick'] else ''}", "",
           f"fitness `{data['fitness']}` (version {data.get('fitness_version')}), budget {data['budget']} per arm and search seed, "
           f"{data['search_seeds']} search seed(s), {data['report_seeds']} report seed(s); "
           f"{data['seconds'] / 60:.1f} min, {_fmt(data['seconds_per_training'])} s of wall time per training; "
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
    ap.add_argument("--budget", type=int, default=24,
                    help="trainings per arm and search seed (runs of k trainings: budget // k runs)")
    ap.add_argument("--noise", default=str(NOISE), help="the noise datasheet (k and whether a setting resolves)")
    ap.add_argument("--seeds", type=int, default=5, help="search seeds per arm")
    ap.add_argument("--report-seeds", type=int, default=3,
                    help="trainings of the winner's re-run on the report part (ceil(n / k) runs of k)")
    ap.add_argument("--finalists", type=int, default=1,
                    help="top candidates re-run before picking the winner (1: its re-runs select nothing)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--settings", default=",".join(SETTINGS),
                    help="benchmarks to try, in order, until --needed qualify")
    ap.add_argument("--needed", type=int, default=2, help="qualifying settings to stop at (criteria need 2)")
    ap.add_argument("--arms", default=",".join(ARMS),
                    help=f"arms to run (default: the criteria's four; extra: {', '.join(EXTRA_ARMS)})")
    ap.add_argument("--work", default=str(ROOT / "runs" / "search_value"), help="where the runs are kept")
    ap.add_argument("--out", default=str(RESULTS / "search_value"), help="output path without extension")
    ap.add_argument("--records", default=str(RECORDS), help="where each finished arm run's record is kept")
    ap.add_argument("--artifacts", default=str(ROOT / "benchmarks" / "artifacts"),
                    help="prepared artifacts (<setting>.tar.gz) installed before a setting runs ('' = none)")
    opts = ap.parse_args(argv)
    settings, arms = opts.settings.split(","), opts.arms.split(",")
    unknown_arms = sorted(set(arms) - set(ARMS) - set(EXTRA_ARMS))
    if unknown_arms:
        ap.error(f"unknown arm(s) {', '.join(unknown_arms)}; known: {', '.join(ARMS + EXTRA_ARMS)}")
    if opts.quick:
        settings, opts.budget, opts.seeds, opts.report_seeds, opts.finalists = settings[:1], 4, 1, 1, 1
        opts.work = str(Path(opts.work).with_name(Path(opts.work).name + "_quick"))
        opts.records = str(Path(opts.work) / "records")
    t0 = time.time()
    opts.models = {}  # {setting: sha256 of its prepared models}, set as each setting starts
    version = code_version()
    results: dict[str, Any] = {s: {"arms": {}} for s in settings}
    records: dict[tuple[str, str], list[dict[str, Any]]] = {}
    trained, earlier, unknown = 0, 0.0, 0  # earlier: wall seconds of runs finished by an earlier invocation
    tuned_arms = [a for a in arms if a.startswith("tuned_")]
    qualified: list[str] = []
    for setting in settings:
        res = results[setting]
        if len(qualified) >= opts.needed and not opts.quick:
            res["not_run"] = "enough settings qualified before this one"
            print(f"  {setting:10s} not run: {opts.needed} settings already qualify", flush=True)
            continue
        inst = res["instrument"] = instrument(setting, opts)
        if not inst["meets_targets"] and not opts.quick:
            # the instrument's rule, before any arm runs: looks only at the datasheet (fixed losses, the oracle)
            res["not_run"] = f"the instrument does not resolve here: {inst['why_not']}"
            print(f"  {setting:10s} not run: {res['not_run']}", flush=True)
            continue
        sha = res["models_sha256"] = opts.models[setting] = prepared_models(setting, opts)
        why = same_models(inst, sha)
        if why and not opts.quick:
            res["not_run"] = why
            print(f"  {setting:10s} not run: {why}", flush=True)
            continue
        k = int(inst["trainings_per_candidate"] or 1)
        res["oracle_report_fitness"] = oracle_report_fitness(setting)
        # The tuned baselines first: whether the setting qualifies looks only at them and at the
        # oracle, so the search and its random control run only where there is headroom.
        for arm in tuned_arms + [a for a in arms if a not in tuned_arms]:
            if arm not in tuned_arms and tuned_arms and "headroom" not in res:
                qualify(res)
                print(f"  {setting:10s} headroom {res['headroom']} -> "
                      f"{'qualifies' if res['qualifies'] else 'not used'}", flush=True)
            if arm not in tuned_arms and tuned_arms and not res["qualifies"] and not opts.quick:
                res.setdefault("not_run", []).append(arm)
                continue
            per = []
            for seed in range(opts.seeds):
                # a record is reused only for the same code and the same prepared models
                rec = read_record(setting, arm, seed, {**version, "models_sha256": sha}, opts)
                if rec is not None:
                    earlier += rec.get("seconds") or 0.0
                    unknown += rec.get("seconds") is None
                else:
                    rd = setting_dir(setting, opts) / f"{arm}-seed{seed}"
                    if (rd / "leaderboard.json").is_file():  # finished here by an earlier invocation
                        took = run_seconds(setting, arm, seed, opts)
                        earlier += took or 0.0
                        unknown += took is None
                    else:
                        run_arm(arm, setting, seed, opts.budget, opts, k)  # this invocation's wall time
                        print(f"    ({(time.time() - t0) / 60:.1f} min into this invocation)", flush=True)
                    rec = write_record(setting, arm, seed, rd, run_seconds(setting, arm, seed, opts),
                                       {**version, "models_sha256": sha}, opts, k)
                per.append(rec)
            records[(setting, arm)] = per
            keys = ["report_fitness", "forget_quality", "model_utility", "winner_search_fitness", "trainings"]
            keys += ["winner_search_sd"] if arm in EVOLVE_ARMS else []
            keys += ["gen0_best", "final_best", "gen0_best_fitness", "final_best_fitness", "gen0_best_mean",
                     "gen0_best_seeds", "final_best_mean", "final_best_seeds"] if arm.startswith("search") else []
            res["arms"][arm] = {k: [r["result"].get(k) for r in per] for k in keys}
            trained += sum(int(r["result"].get("trainings") or 0) for r in per)
        qualify(res)
        if res["qualifies"]:
            qualified.append(setting)
    searched = [s for s in settings if ("search" in results[s]["arms"]) and records.get((s, "search"))]
    xfer = transfer({s: records[(s, "search")][0].get("winner_job") for s in searched},
                    {s: records[(s, "search")][0]["result"].get("report_fitness") for s in searched},
                    opts) if len(searched) > 1 else {}
    now = time.time() - t0
    seconds = now + earlier  # the whole benchmark: runs of earlier invocations count with their own wall time
    from evounlearn.benchmarks import get_fitness

    data: dict[str, Any] = {
        "fitness": FITNESS, "fitness_version": get_fitness(settings[0], FITNESS).version, "budget": opts.budget, "quick": opts.quick, "search_seeds": opts.seeds,
        "report_seeds": opts.report_seeds, "finalists": opts.finalists, "seconds": seconds,
        "seconds_this_invocation": now, "seconds_earlier_runs": earlier, "runs_without_recorded_time": unknown,
        "seconds_per_training": seconds / trained if trained else None, "trainings": trained,
        "settings": results, "transfer": xfer, "env": env_info(opts.workers), "code_version": version,
        "criteria": ({"evaluated": False, "why": "--quick is a smoke test"} if opts.quick or not set(ARMS) <= set(arms)
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
