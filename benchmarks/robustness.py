"""Does the forgotten knowledge come back? Every method under the recovery attacks
(docs/METRICS.md "Recovery attacks"), and the `robust` fitness as a search objective.

Part 1 (per setting: the generated benchmark and its `partial` setting by default). Every method
(`METHODS`) at its registered defaults and tuned with `evounlearn tune --fitness robust` at one
budget (`--tune-budget`, tune seed 0), each run `--seeds` times on the report part with the four
reported attacks (`attacks.REPORTED`: quantize_8bit, quantize_4bit, relearn, finetune; their
defaults, attack seed 0: the protocol is fixed, the unlearning seed varies). The retain oracle under
the same attacks (attack seeds 0..seeds-1: its only randomness) gives the floor. Per attack:
`recovery` (mean over forget ROUGE and Prob of (after - unlearned) / (target - unlearned)),
`utility_after` (MU of the attacked model), `recovery_vs_oracle` ((after - oracle_after) /
(target - oracle_after)) and `oracle_floor`.

Part 2: `evolve --fitness robust` (mode ours, no baselines) against `tune --fitness robust` for
NPO and SimNPO at an equal budget (`--search-budget` trainings on the search part), `--search-seeds`
search seeds, the winners re-run on the report part (`--report-seeds` seeds; the report part runs
the full attack set, FITNESS.md `robust`). Same arms and readers as benchmarks/search_value.py.

Writes benchmarks/results/robustness.json and .md:
  {"settings": {name: {"methods": {method: {"attacks": {attack: {"recovery": [per seed],
       "utility_after": [...], "recovery_vs_oracle": [...], "oracle_floor": [...]}},
       "utility": [...], "fitness_robust": [...], "fitness_calibrated": [...],
       "tuned": {"attacks": {...}, "config": path, ...}}},
     "oracle": {"attacks": {attack: {"recovery": [per attack seed], "utility_after": [...]}}}}},
   "robust_search": {"setting": name, "budget": n, "arms": {"search" | "tuned_npo" | "tuned_simnpo":
       {"report_fitness": [per search seed], ...}}}, "seconds": s, "env": {...}}

    python benchmarks/robustness.py                 # the full benchmark (not run in CI)
    python benchmarks/robustness.py --quick --results /tmp/smoke --work /tmp/smoke/runs prepare.generated.authors=10 ...
                                                    # smoke: 1 setting, 2 methods, 1 seed, budget 2

Wall time, estimated from seconds measured per run (one thread per run, 2-core machine shared
with other sessions, generated benchmark): a report-part run with the four attacks 30 s (train
~2 s, evaluation ~4 s, attacks ~20 s), a search-part `robust` candidate 10-14 s, a CLI command's
start (target info) ~20 s, the oracle's attack set ~20 s. Part 1 per method and setting: 3 default
runs (90 s) + a tune of 12 trials (~165 s) + its 3 report runs (90 s) ~ 345 s, x 16 ~ 92 min;
part 2: 9 runs of (12 x 12 s + 20 s + 3 x 30 s) ~ 38 min; in all ~2.2 h with one worker (~1.3 h
with `--workers 2` on 2 quiet cores). The `--quick` smoke on the tiny test benchmark took 3.1 min.
Runs are kept under --work
(default runs/robustness) and reused when complete, so an interrupted benchmark continues.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

RESULTS = ROOT / "benchmarks" / "results"
SETTINGS = ("generated", "partial")
METHODS = ("grad_ascent", "grad_diff", "npo", "simnpo", "rmu", "undial", "idk_dpo", "pmc")
FITNESS = "robust"
SEARCH_ARMS = ("search", "tuned_npo", "tuned_simnpo")


def _mean(xs: list[Any]) -> float | None:
    vals = [float(x) for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return statistics.fmean(vals) if vals else None


def _fitness(setting: str, summary: dict[str, Any], target: dict[str, Any], name: str) -> float | None:
    from evounlearn.benchmarks import compute_fitness

    f = compute_fitness(setting, summary, target, fitness=name) if summary else -math.inf
    return f if math.isfinite(f) else None


def _options(extra: list[str]) -> dict[str, Any]:
    """The benchmark options every run gets (the report part's attacks come from the fitness)."""
    from evounlearn.config import nest, parse_overrides

    return nest(parse_overrides(extra))


# ------------------------------------------------------------------------------------------------
# part 1: methods under attack


def attack_entry(summaries: list[dict[str, Any]], attacks: tuple[str, ...]) -> dict[str, Any]:
    """Per attack, the per-seed lists of what the report shows (None where a run gave none)."""
    out: dict[str, Any] = {}
    for a in attacks:
        out[a] = {"recovery": [s.get(f"recovery@{a}") for s in summaries],
                  "utility_after": [s.get(f"model_utility@{a}") for s in summaries],
                  "recovery_vs_oracle": [s.get(f"recovery_vs_oracle@{a}") for s in summaries],
                  "oracle_floor": [s.get(f"oracle_floor@{a}") for s in summaries],
                  "forget_rouge_after": [s.get(f"forget_rouge@{a}") for s in summaries],
                  "forget_prob_after": [s.get(f"forget_prob@{a}") for s in summaries]}
    return out


def method_runs(ex: Any, setting: str, method: str, seeds: int, opts: dict[str, Any], info: dict[str, Any],
                work: Path) -> list[dict[str, Any]]:
    """The method at its defaults, `seeds` runs on the report part with the full attack set (the
    `robust` fitness's report-part options) and the oracle's floor; summaries, reused when done."""
    from evounlearn.files import atomic_write_json

    futs: dict[int, Any] = {}
    done: dict[int, dict[str, Any]] = {}
    for s in range(seeds):
        rd = work / setting / "defaults" / f"{method}-seed{s}"
        if (rd / "summary.json").is_file():
            done[s] = json.loads((rd / "summary.json").read_text())
            continue
        kw = {"run_dir": str(rd), "method": method, "seed": s, "forget_part": "report",
              "unlearn": {**opts, "attacks": {**(opts.get("attacks") or {}), "oracle": True}},
              "benchmark": setting, "fitness": FITNESS, "target_utility": info["target_utility"]}
        futs[s] = ex.submit("evounlearn.search.candidate:evaluate_candidate", kw)
    for s, fut in futs.items():
        res = fut.result()
        val = res.value if res.ok and isinstance(res.value, dict) else {}
        summary = dict(val.get("summary") or {})
        if not val.get("ok"):
            print(f"  {setting} {method} seed {s}: failed: {(res.error or val.get('error') or '')[:200]}", flush=True)
        summary["seconds"] = (val.get("timings") or {}).get("total")
        if val.get("ok"):  # a failed run is run again by the next invocation
            atomic_write_json(work / setting / "defaults" / f"{method}-seed{s}" / "summary.json", summary)
        done[s] = summary
    return [done[s] for s in range(seeds)]


def tuned_runs(setting: str, method: str, opts_args: list[str], args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`tune --fitness robust` at `--tune-budget`; its best trial re-run with `--seeds` seeds on the
    report part by tune itself (full attacks, the oracle's floor): the report runs' summaries."""
    rd = Path(args.work) / setting / "tuned" / f"tune-{method}"
    run_tune(method, setting, 0, args.tune_budget, rd, opts_args + ["unlearn.attacks.oracle=true"], args,
             report_seeds=args.seeds)
    data = json.loads((rd / "leaderboard.json").read_text())
    best = (data.get("best") or {}).get("trial")
    summaries = []
    if best is not None:
        for res in sorted((rd / "trials" / f"{best:05d}").glob("report-seed*/results.json")):
            summaries.append(json.loads(res.read_text()).get("summary") or {})
    return summaries, {"config": (data.get("best") or {}).get("config_path"), "trial": best,
                       "trained": data.get("trained")}


def oracle_attacks(setting: str, opts: dict[str, Any], seeds: int, attacks: tuple[str, ...]) -> dict[str, Any]:
    """The retain oracle attacked on the report part (attack seeds 0..seeds-1): its own recovery
    (the floor) and utility after each attack."""
    from evounlearn.attacks.config import AttacksConfig
    from evounlearn.benchmarks import get_benchmark
    from evounlearn.benchmarks.base import default_cache_dir
    from evounlearn.benchmarks.tofu.attacks import run_tofu_attacks
    from evounlearn.benchmarks.tofu.build import prepare
    from evounlearn.config import apply_overrides
    from evounlearn.data.prompting import PromptFormatter
    from evounlearn.evaluation.tofu_eval import load_results
    from evounlearn.models.loading import load_model_and_tokenizer

    bench = get_benchmark(setting)
    prepared = bench.prepare(opts)
    cfg = prepared.cfg
    p = prepare(cfg.prepare)
    model, tok = load_model_and_tokenizer(str(p.retain))
    fmt = PromptFormatter(tok, max_length=cfg.train.max_length)
    retain, target = load_results(p.retain_results), load_results(p.target_results)
    part = bench.part_indices(prepared, "report")
    runs = []
    for s in range(seeds):
        acfg = apply_overrides(AttacksConfig(), {**dict(opts.get("attacks") or {}), "relearn": {"seed": s},
                                                "finetune": {"seed": s}})
        acfg.names, acfg.oracle = "", False
        runs.append(run_tofu_attacks(model, tok, fmt, attacks, source=p.data, split=cfg.forget_split, part=part,
                                     eval_cfg=cfg.eval, clean=retain, retain_results=retain, target_results=target,
                                     cfg=acfg, cache_root=str(cfg.prepare.cache_dir or default_cache_dir())))
    return {a: {"recovery": [r[a]["recovery_agg"] for r in runs], "utility_after": [r[a]["utility_after"] for r in runs],
                "recovery_by_metric": [r[a]["recovery"] for r in runs]} for a in attacks}


# ------------------------------------------------------------------------------------------------
# running the CLI (tune, evolve)


def _cli(args: list[str], log: Path) -> None:
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        rc = subprocess.run([sys.executable, "-m", "evounlearn.cli.main", *args], stdout=fh, stderr=subprocess.STDOUT,
                            env=env, cwd=ROOT).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"command failed (rc {rc}): {' '.join(args)}\n{tail}")


def _fresh(rd: Path) -> bool:
    """True when `rd` must be run (no finished leaderboard); an interrupted run is removed."""
    if (rd / "leaderboard.json").is_file():
        return False
    if rd.exists():
        import shutil

        shutil.rmtree(rd)
    return True


def run_tune(method: str, setting: str, seed: int, budget: int, rd: Path, extra: list[str],
             args: argparse.Namespace, report_seeds: int) -> None:
    if not _fresh(rd):
        return
    t = time.time()
    _cli(["tune", "--method", method, "--benchmark", setting, "--budget", str(budget), "--seed", str(seed),
          "--workers", str(args.workers), "--fitness", FITNESS, "--run-dir", str(rd), "finalists=1",
          f"report_seeds={report_seeds}", *extra], rd.parent / f"{rd.name}.log")
    (rd.parent / f"{rd.name}.seconds").write_text(f"{time.time() - t:.1f}\n")


def run_evolve(setting: str, seed: int, budget: int, rd: Path, extra: list[str], args: argparse.Namespace) -> None:
    if not _fresh(rd):
        return
    t = time.time()
    _cli(["evolve", "--mode", "ours", "--benchmark", setting, "--budget", str(budget), "--seed", str(seed),
          "--workers", str(args.workers), "--fitness", FITNESS, "--run-dir", str(rd), "baselines=[]", "finalists=1",
          f"report_seeds={args.report_seeds}", *extra], rd.parent / f"{rd.name}.log")
    (rd.parent / f"{rd.name}.seconds").write_text(f"{time.time() - t:.1f}\n")


def robust_search(setting: str, extra: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Part 2: the arms at an equal budget, `--search-seeds` seeds, winners' report-part fitness."""
    import search_value as sv

    arms: dict[str, dict[str, list[Any]]] = {a: {"report_fitness": [], "winner_search_fitness": [], "model_utility": [],
                                                  "trainings": [], "seconds": []} for a in SEARCH_ARMS}
    for seed in range(args.search_seeds):
        for arm in SEARCH_ARMS:
            rd = Path(args.work) / "robust_search" / setting / f"{arm}-seed{seed}"
            if arm == "search":
                run_evolve(setting, seed, args.search_budget, rd, extra, args)
                r = sv.evolve_result(rd)
            else:
                run_tune(arm.removeprefix("tuned_"), setting, seed, args.search_budget, rd, extra, args,
                         report_seeds=args.report_seeds)
                r = sv.tune_result(rd)
            sec = rd.parent / f"{rd.name}.seconds"
            for k in ("report_fitness", "winner_search_fitness", "model_utility", "trainings"):
                arms[arm][k].append(r.get(k))
            arms[arm]["seconds"].append(float(sec.read_text()) if sec.is_file() else None)
            print(f"  robust search {arm} seed {seed}: report fitness {r.get('report_fitness')}", flush=True)
    return {"setting": setting, "budget": args.search_budget, "fitness": FITNESS, "arms": arms,
            "compare": {a: sv.compare(arms["search"]["report_fitness"], arms[a]["report_fitness"])
                        for a in ("tuned_npo", "tuned_simnpo")}}


# ------------------------------------------------------------------------------------------------
# outputs


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}"


def markdown(data: dict[str, Any]) -> str:
    from evounlearn.attacks import REPORTED

    lines = ["# Recovery under attack (benchmarks/robustness.py)", "",
             "recovery = mean over forget ROUGE and Prob of (after - unlearned) / (target - unlearned), "
             "mean over seeds (0 = nothing came back, 1 = all of it); U = model utility after the attack; "
             "the oracle row is the retain oracle's own recovery (the floor).", ""]
    for name, s in data["settings"].items():
        lines += [f"## {name}", "", "| method | " + " | ".join(f"{a} rec / U" for a in REPORTED) + " | robust |",
                  "|---|" + "---|" * (len(REPORTED) + 1)]
        rows = [(m, e) for m, e in s["methods"].items()]
        rows += [(f"{m} (tuned)", e["tuned"]) for m, e in s["methods"].items() if e.get("tuned")]
        for m, e in rows:
            cells = [f"{_f(_mean(e['attacks'][a]['recovery']))} / {_f(_mean(e['attacks'][a]['utility_after']))}"
                     for a in REPORTED]
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {_f(_mean(e.get('fitness_robust') or []))} |")
        o = s["oracle"]["attacks"]
        lines.append("| retain oracle (floor) | " + " | ".join(
            f"{_f(_mean(o[a]['recovery']))} / {_f(_mean(o[a]['utility_after']))}" for a in REPORTED) + " | |")
        lines.append("")
    rs = data.get("robust_search")
    if rs:
        lines += [f"## evolve vs tune, fitness robust ({rs['setting']}, budget {rs['budget']})", "",
                  "| arm | report fitness per seed | mean |", "|---|---|---|"]
        for arm, a in rs["arms"].items():
            lines.append(f"| {arm} | {', '.join(_f(x) for x in a['report_fitness'])} | {_f(_mean(a['report_fitness']))} |")
        lines.append("")
    lines.append(f"Wall time: {data['seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", type=int, default=3, help="unlearning seeds per method and variant")
    ap.add_argument("--tune-budget", type=int, default=12, help="tune trials per method and setting")
    ap.add_argument("--search-budget", type=int, default=12, help="trainings per arm (part 2)")
    ap.add_argument("--search-seeds", type=int, default=3)
    ap.add_argument("--report-seeds", type=int, default=3, help="report-part runs of each part-2 winner")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--work", default=str(ROOT / "runs" / "robustness"))
    ap.add_argument("--out-name", default="robustness", help="<results>/<name>.json / .md")
    ap.add_argument("--results", default=str(RESULTS), help="output folder (default benchmarks/results)")
    ap.add_argument("--no-search", action="store_true", help="part 1 only")
    ap.add_argument("--quick", action="store_true", help="smoke: the first setting, npo and simnpo, 1 seed, "
                    "budgets 2, 1 search seed")
    ap.add_argument("options", nargs="*", help="benchmark options for every run, e.g. prepare.generated.authors=10")
    args = ap.parse_args(argv)
    if args.quick:
        args.settings, args.methods = args.settings.split(",")[0], "npo,simnpo"
        args.seeds = args.search_seeds = args.report_seeds = 1
        args.tune_budget = args.search_budget = 2
    from evounlearn.attacks import REPORTED
    from evounlearn.files import atomic_write_json
    from evounlearn.files import atomic_write_text as write_text
    from evounlearn.search.candidate import target_info
    from evounlearn.search.executors import make_executor

    # the workers (fresh processes) import this checkout's sources, as this process does
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.time()
    opts = _options(args.options)
    unlearn_args = [f"unlearn.{o}" for o in args.options]
    data: dict[str, Any] = {"settings": {}, "fitness": FITNESS, "attacks": list(REPORTED),
                            "seeds": args.seeds, "tune_budget": args.tune_budget}
    ex = make_executor("local", args.workers)
    try:
        for setting in args.settings.split(","):
            info = target_info(unlearn=opts, benchmark=setting, fitness=FITNESS)
            entry: dict[str, Any] = {"methods": {}, "target_utility": info["target_utility"]}
            target = {"model_utility": info["target_utility"]}
            for method in args.methods.split(","):
                summaries = method_runs(ex, setting, method, args.seeds, opts, info, Path(args.work))
                m = {"attacks": attack_entry(summaries, REPORTED),
                     "utility": [s.get("model_utility") for s in summaries],
                     "fitness_robust": [_fitness(setting, s, target, "robust") for s in summaries],
                     "fitness_calibrated": [_fitness(setting, s, target, "calibrated") for s in summaries],
                     "seconds": [s.get("seconds") for s in summaries]}
                tuned, meta = tuned_runs(setting, method, unlearn_args, args)
                m["tuned"] = {"attacks": attack_entry(tuned, REPORTED), **meta,
                              "utility": [s.get("model_utility") for s in tuned],
                              "fitness_robust": [_fitness(setting, s, target, "robust") for s in tuned],
                              "fitness_calibrated": [_fitness(setting, s, target, "calibrated") for s in tuned]}
                entry["methods"][method] = m
                print(f"  {setting} {method}: recovery "
                      + ", ".join(f"{a} {_f(_mean(m['attacks'][a]['recovery']))}" for a in REPORTED), flush=True)
            entry["oracle"] = {"attacks": oracle_attacks(setting, opts, args.seeds, REPORTED)}
            data["settings"][setting] = entry
    finally:
        ex.close()
    if not args.no_search:
        data["robust_search"] = robust_search(args.settings.split(",")[0], unlearn_args, args)
    data["seconds"] = time.time() - t0
    import platform

    import torch

    data["env"] = {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
                   "workers": args.workers, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                   "device": "cuda" if torch.cuda.is_available() else "cpu", "options": args.options}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{args.out_name}.json", data, indent=1, default=str)
    write_text(out / f"{args.out_name}.md", markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
