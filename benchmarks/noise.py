"""The instrument's datasheet: how much one candidate's fitness moves between training seeds and
between samples of scored rows, per benchmark (setting and size), and so which differences between
two losses one run, or n seeds, can resolve.

For every benchmark (default: `generated` at the default size and `generated-large`,
`entangled-large`, `partial-large`, `paraphrase-large` at the resolving size) and every fixed loss (default: NPO and
SimNPO at their registered defaults and a gentler NPO, `npo@lr=3e-4`, near the holdout level; a
loss is `method` or `method@key=value,...`, see `loss_run`), `--seeds` training seeds are run on the search part, exactly
as a search candidate is (same options, the lean search evaluation). From those runs:

- `single_training_sd`: the sd of the searched fitness (`calibrated`) over training seeds, pooled
  over the losses (sqrt of the mean variance; per loss in `losses.<loss>.sd`);
- `item_sd`: the sd from which rows are scored: forget and holdout rows resampled with replacement
  (`--bootstrap` draws) and the fitness recomputed from the per-row values, averaged over runs;
- `paired_diff_sd_one_training`: the sd over seeds of the difference between two losses trained
  with the same seed (what a search compares: its candidates share seeds), pooled over every pair
  of losses (each pair's in `paired_diff_sd_per_pair`);
- `oracle_part_gap`: the retain oracle's fitness on the search part minus on the report part (a
  model that never saw the forget rows should score the same on both);
- `resolves_at_2se_n_seeds` for n = 3 and 8 trainings (2 * the one-training paired sd / sqrt(n));
- `seconds_per_training`: the mean wall time of one training (train + evaluation), with the
  threads; `seconds_per_candidate`: k times that (a candidate run of k trainings, below);
- `terms`: per loss, each factor of the searched fitness (the three gaps, the relative utility),
  mean and sd over seeds: where the noise sits;
- the instrument (`instrument`): a candidate run = k trainings on shared seeds scored by their
  mean (`evolve` / `tune` `train_seeds=k`); `trainings_per_candidate` k = the smallest k <= 3
  that meets TARGETS (`by_trainings`: both sds for k = 1..3), `single_run_sd` / `paired_diff_sd` /
  `resolves_at_2sd` those of one such run
  (`single_training_sd`, `paired_diff_sd_one_training`: of one training), `meets_targets` whether
  the instrument resolves on this benchmark (the oracle's part gap included);
- the target's forget ROUGE and model utility (the target must still memorise at a larger size)
  and the same statistics for `calibrated_v1` (the formula before version 2), for comparison.

    python benchmarks/noise.py                     # the datasheet (~60-90 min on 2 quiet cores from empty caches)
    python benchmarks/noise.py --quick             # smoke test: generated, 2 seeds, 1 loss
    python benchmarks/noise.py --benchmarks paraphrase-large --merge   # add / replace one benchmark
    python benchmarks/noise.py --rederive          # the instrument's fields again, no training
Writes benchmarks/results/noise.json and noise.md; runs are kept under --work and reused, so an
interrupted datasheet continues where it stopped. Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BENCHMARKS = ("generated", "generated-large", "entangled-large", "partial-large", "paraphrase-large")
LOSSES = ("npo", "simnpo", "npo@lr=3e-4")  # the last: a gentler NPO, near the holdout level
FITNESS = "calibrated"
COMPARED = ("calibrated", "calibrated_v1", "oracle", "evomu")
# The instrument's targets (the instrument issue): one candidate run's sd, the sd of a paired
# difference between two candidates under shared seeds, and the oracle's search-vs-report gap
TARGETS = {"single_run_sd": 0.035, "paired_diff_sd": 0.04, "oracle_part_gap": 0.03}
MAX_TRAININGS = 3  # at most this many trainings per candidate run (the cost grows with it)


# ------------------------------------------------------------------------------------------------
# one run (in a worker process: one torch thread, as a search worker has)


TRAIN_KEYS = ("lr", "epochs", "batch_size")


def loss_run(spec: str) -> Any:
    """A fixed loss from its spec: a registered method name, optionally with settings over its
    defaults, `method@key=value,key=value` (`lr`, `epochs`, `batch_size` go to the training loop,
    any other key to the loss), e.g. `npo@lr=3e-4`."""
    from evounlearn.training.resolve import MethodRun

    name, _, rest = spec.partition("@")
    loss: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, raw = item.partition("=")
        if not eq:
            raise SystemExit(f"noise.py: loss setting {item!r} in {spec!r} is not key=value")
        value: Any = json.loads(raw) if raw[:1].isdigit() or raw[:1] in "-[{" else raw
        (train if key in TRAIN_KEYS else loss)[key] = value
    return MethodRun(name, loss, train)


def run_one(bench_name: str, loss: str, seed: int, run_dir: str) -> dict[str, Any]:
    """Train the loss `loss` (a spec, `loss_run`) with `seed` on the search part and evaluate it,
    as a search candidate is; returns the summary, the per-row values the fitness reads and the
    wall time. Reused when RUN_DIR/noise_run.json exists."""
    done = Path(run_dir) / "noise_run.json"
    if done.is_file():
        return json.loads(done.read_text())
    import torch

    torch.set_num_threads(int(os.environ.get("NOISE_THREADS", "1")))
    from evounlearn.benchmarks import get_benchmark

    bench = get_benchmark(bench_name)
    prepared = bench.prepare({})
    t0 = time.time()
    res = bench.run(prepared, loss_run(loss), part="search", seed=seed, run_dir=run_dir)
    seconds = time.time() - t0
    results = json.loads((Path(run_dir) / "results.json").read_text())
    m = results["metrics"]
    rows = {
        "forget_rouge": m["forget_rouge"]["values"], "forget_prob": m["forget_prob"]["values"],
        "holdout_rouge": m["holdout_rouge"]["values"], "holdout_prob": m["holdout_prob"]["values"],
        "loss_forget": m["mia_loss"]["values"]["forget"], "loss_holdout": m["mia_loss"]["values"]["holdout"],
    }
    out = {"benchmark": bench_name, "loss": loss, "seed": seed, "seconds": seconds,
           "train_seconds": (res.train or {}).get("seconds"), "eval_seconds": res.eval_seconds,
           "summary": res.summary, "rows": rows, "threads": torch.get_num_threads()}
    done.write_text(json.dumps(out))
    return out


# ------------------------------------------------------------------------------------------------
# statistics


def _sd(xs: list[float]) -> float:
    # a failed fitness (-inf) has no sd
    return statistics.stdev(xs) if len(xs) > 1 and all(map(math.isfinite, xs)) else float("nan")


def _fit(bench_name: str, summary: dict[str, Any], target_mu: float, fitness: str) -> float:
    from evounlearn.benchmarks import compute_fitness

    target = {"model_utility": target_mu}
    if fitness == "calibrated_v1":  # the formula before version 2 (not registered)
        from evounlearn.benchmarks.tofu.fitness import tofu_calibrated_v1_fitness

        try:
            return float(tofu_calibrated_v1_fitness(summary, target))
        except (KeyError, ValueError):
            return float("-inf")
    return compute_fitness(bench_name, summary, target, fitness=fitness)


def resampled_summary(run: dict[str, Any], fi: list[int], hi: list[int]) -> dict[str, Any]:
    """The run's summary with the forget rows `fi` and holdout rows `hi` (indices into each list of
    per-row values, repeats allowed): what the evaluator would report on that sample of rows."""
    import numpy as np

    from evounlearn.evaluation.metrics import mia_auc, se_difference, standardized_difference

    r = run["rows"]
    f_keys, h_keys = list(r["forget_rouge"]), list(r["holdout_rouge"])

    def pick(values: dict[str, float], keys: list[str], idx: list[int]) -> np.ndarray:
        return np.array([values[keys[i]] for i in idx], dtype=float)

    lf_keys, lh_keys = list(r["loss_forget"]), list(r["loss_holdout"])
    lf, lh = pick(r["loss_forget"], lf_keys, fi), pick(r["loss_holdout"], lh_keys, hi)
    d, se = standardized_difference(lf, lh)
    out = {**run["summary"], "mia_loss": mia_auc(lf, lh), "mia_loss_smd": max(-1e6, min(1e6, d)),
           "mia_loss_smd_se": se}
    for key in ("rouge", "prob"):
        f = pick(r[f"forget_{key}"], f_keys, fi)
        h = pick(r[f"holdout_{key}"], h_keys, hi)
        out.update({f"forget_{key}": float(f.mean()), f"holdout_{key}": float(h.mean()),
                    f"forget_{key}_gap_se": se_difference(f, h)})
    return out


def summary_of(run: dict[str, Any]) -> dict[str, Any]:
    """The run's summary recomputed from its per-row values (every key the current fitness reads,
    also for runs saved before a key existed)."""
    nf, nh = len(run["rows"]["forget_rouge"]), len(run["rows"]["holdout_rouge"])
    return resampled_summary(run, list(range(nf)), list(range(nh)))


def item_sd(bench_name: str, run: dict[str, Any], target_mu: float, fitness: str, draws: int, seed: int) -> float:
    """The fitness's sd over `draws` bootstrap samples of the forget and the holdout rows."""
    import numpy as np

    rng = np.random.default_rng(seed)
    nf, nh = len(run["rows"]["forget_rouge"]), len(run["rows"]["holdout_rouge"])
    vals = [_fit(bench_name, resampled_summary(run, list(rng.integers(0, nf, nf)), list(rng.integers(0, nh, nh))),
                 target_mu, fitness) for _ in range(draws)]
    return _sd(vals)


def main_per_loss(sheet: dict[str, Any]) -> dict[str, Any]:
    return sheet["fitnesses"][FITNESS]["per_loss"]


def calibrated_terms(runs: list[dict[str, Any]], target_mu: float) -> dict[str, dict[str, float]]:
    """Where the searched fitness's seed noise comes from: for each of its factors (the three
    gaps and the relative utility), the mean and the sd over the loss's training seeds."""
    from evounlearn.benchmarks.fitness import relative_utility
    from evounlearn.benchmarks.tofu.fitness import calibrated_gaps

    cols: dict[str, list[float]] = {"rouge_gap": [], "prob_gap": [], "membership_gap": [], "relative_utility": []}
    for r in runs:
        s = summary_of(r)
        for key, value in calibrated_gaps(s).items():
            cols[key].append(value)
        cols["relative_utility"].append(relative_utility(s, {"model_utility": target_mu}, "model_utility"))
    return {k: {"mean": statistics.fmean(v), "sd": _sd(v)} for k, v in cols.items()}


def datasheet(bench_name: str, runs: list[dict[str, Any]], target: dict[str, Any], oracle: dict[str, Any],
              losses: list[str], draws: int) -> dict[str, Any]:
    """One benchmark's row of the datasheet from its runs and the target / oracle references."""
    mu_t = float(target["search"]["model_utility"])
    by_loss = {loss: sorted((r for r in runs if r["loss"] == loss), key=lambda r: r["seed"]) for loss in losses}
    out: dict[str, Any] = {"losses": {}, "fitnesses": {}}
    for fitness in COMPARED:
        per_loss: dict[str, Any] = {}
        for loss, rs in by_loss.items():
            vals = [_fit(bench_name, summary_of(r), mu_t, fitness) for r in rs]
            per_loss[loss] = {"values": vals, "mean": statistics.fmean(vals), "sd": _sd(vals), "n": len(vals)}
        variances = [v["sd"] ** 2 for v in per_loss.values() if v["n"] > 1]
        single = math.sqrt(statistics.fmean(variances)) if variances else float("nan")
        # every pair of losses under shared seeds; pooled as the sqrt of the mean variance
        by_seed = {loss: {r["seed"]: v for r, v in zip(rs, per_loss[loss]["values"])} for loss, rs in by_loss.items()}
        pairs: dict[str, float] = {}
        for i, a in enumerate(losses):
            for b in losses[i + 1:]:
                common = sorted(set(by_seed[a]) & set(by_seed[b]))
                pairs[f"{a} - {b}"] = _sd([by_seed[a][s] - by_seed[b][s] for s in common])
        pair_vars = [v ** 2 for v in pairs.values() if not math.isnan(v)]
        paired = math.sqrt(statistics.fmean(pair_vars)) if pair_vars else float("nan")
        items = [item_sd(bench_name, r, mu_t, fitness, draws, seed=i) for i, r in enumerate(runs)]
        o_s = _fit(bench_name, oracle["search"], mu_t, fitness)
        o_r = _fit(bench_name, oracle["report"], float(target["report"]["model_utility"]), fitness)
        out["fitnesses"][fitness] = {
            # degrees of freedom of the pooled sds (the standard error of an sd is sd / sqrt(2 df)):
            # n - 1 per loss; L - 1 independent contrasts among L losses, n - 1 each
            "single_run_sd_df": sum(v["n"] - 1 for v in per_loss.values()),
            "paired_diff_sd_df": (min(v["n"] for v in per_loss.values()) - 1) * (len(losses) - 1),
            "single_run_sd": single, "item_sd": statistics.fmean(items) if items else float("nan"),
            "paired_diff_sd": paired, "oracle_search": o_s, "oracle_report": o_r, "oracle_part_gap": o_s - o_r,
            "resolves_at_2sd": 2 * paired, "per_loss": per_loss, "paired_diff_sd_per_pair": pairs,
            "resolves_at_2se_n_seeds": {str(n): 2 * paired / math.sqrt(n) for n in (3, 8)},
        }
        if fitness == FITNESS:
            out["losses"] = per_loss
    main = out["fitnesses"][FITNESS]
    first = runs[0]
    # the metrics a directed mutation reads: their sd over training seeds (pooled over the losses),
    # the margin below which a gap to the holdout level is noise (proposers/offline/diagnosis.py)
    metric_sd = {}
    for key in ("forget_rouge", "forget_prob", "model_utility", "mia_loss"):
        variances = [_sd([float(r["summary"][key]) for r in rs]) ** 2 for rs in by_loss.values() if len(rs) > 1]
        metric_sd[key] = math.sqrt(statistics.fmean(variances)) if variances else float("nan")
    out["metric_seed_sd"] = metric_sd
    out["terms"] = {loss: calibrated_terms(rs, mu_t) for loss, rs in by_loss.items()}
    out.update({
        "fitness": FITNESS, "rows_per_part": len(first["rows"]["forget_rouge"]),
        "holdout_rows": len(first["rows"]["holdout_rouge"]), "seeds": len(by_loss[losses[0]]),
        "single_run_sd": main["single_run_sd"], "item_sd": main["item_sd"],
        "paired_diff_sd": main["paired_diff_sd"], "oracle_part_gap": main["oracle_part_gap"],
        "single_run_sd_df": main["single_run_sd_df"], "paired_diff_sd_df": main["paired_diff_sd_df"],
        "resolves_at_2sd": main["resolves_at_2sd"],
        "seconds_per_training": statistics.fmean(r["seconds"] for r in runs),
        "train_seconds_per_candidate": statistics.fmean(float(r.get("train_seconds") or 0) for r in runs),
        "eval_seconds_per_candidate": statistics.fmean(float(r.get("eval_seconds") or 0) for r in runs),
        "threads_per_candidate": first.get("threads"),
        "target": {p: {k: target[p].get(k) for k in ("forget_rouge", "forget_prob", "model_utility",
                                                      "holdout_rouge", "holdout_prob")} for p in ("search", "report")},
        "oracle": {p: {k: oracle[p].get(k) for k in ("forget_rouge", "forget_prob", "model_utility")}
                   for p in ("search", "report")},
    })
    return out


def instrument(sheet: dict[str, Any]) -> dict[str, Any]:
    """The run a setting needs, in place: a candidate run = k trainings on shared seeds scored by
    their mean (`evolve train_seeds=k`), so one run's sd is the one-training sd / sqrt(k) and a
    paired difference's sd the one-training paired sd / sqrt(k) (the seeds are independent).
    `trainings_per_candidate` = the smallest k <= MAX_TRAININGS that meets both sd targets (None:
    none does); `single_run_sd`, `paired_diff_sd` and `resolves_at_2sd` are then those of one
    run of k trainings (k = 1 where none does), `single_training_sd` and
    `paired_diff_sd_one_training` those of one training (and `seconds_per_candidate` k x
    `seconds_per_training`); `meets_targets` adds the oracle's gap
    (no k moves it: a property of the data's two parts). Works on entries written before these
    fields existed (their `single_run_sd` was one training's)."""
    one = float(sheet.get("single_training_sd", sheet["single_run_sd"]))
    per_training = sheet.get("seconds_per_training", sheet.get("seconds_per_candidate"))
    paired = float(sheet.get("paired_diff_sd_one_training", sheet["paired_diff_sd"]))
    # the standard error of each sd (sd / sqrt(2 df)); None for an entry without its df
    rel = {key: (1 / math.sqrt(2 * sheet[f"{key}_df"]) if sheet.get(f"{key}_df") else None)
           for key in ("single_run_sd", "paired_diff_sd")}
    by_k = {str(k): {"single_run_sd": one / math.sqrt(k), "paired_diff_sd": paired / math.sqrt(k),
                     **{f"{key}_se": None if r is None else v / math.sqrt(k) * r
                        for key, v, r in (("single_run_sd", one, rel["single_run_sd"]),
                                          ("paired_diff_sd", paired, rel["paired_diff_sd"]))}}
            for k in range(1, MAX_TRAININGS + 1)}
    k = next((int(k) for k, v in by_k.items() if v["single_run_sd"] <= TARGETS["single_run_sd"]
              and v["paired_diff_sd"] <= TARGETS["paired_diff_sd"]), None)
    at = by_k[str(k or 1)]
    gap_ok = abs(float(sheet["oracle_part_gap"])) <= TARGETS["oracle_part_gap"]
    sheet.pop("sd_of_mean_of_k_seeds", None)  # an older datasheet's name for by_trainings' single-run sds
    sheet.update({
        "single_training_sd": one, "paired_diff_sd_one_training": paired, "by_trainings": by_k,
        "trainings_per_candidate": k, "single_run_sd": at["single_run_sd"], "paired_diff_sd": at["paired_diff_sd"],
        "single_run_sd_se": at["single_run_sd_se"], "paired_diff_sd_se": at["paired_diff_sd_se"],
        "resolves_at_2sd": 2 * at["paired_diff_sd"], "targets": dict(TARGETS),
        "seconds_per_training": per_training,
        "seconds_per_candidate": None if per_training is None else float(per_training) * (k or 1),
        "meets_targets": k is not None and gap_ok,
        "why_not": None if k is not None and gap_ok else "; ".join(
            ([] if k is not None else [f"no k <= {MAX_TRAININGS} trainings brings the sds to the targets"])
            + ([] if gap_ok else [f"oracle part gap {float(sheet['oracle_part_gap']):+.3f} beyond "
                                  f"{TARGETS['oracle_part_gap']}"])),
    })
    return sheet


# ------------------------------------------------------------------------------------------------
# the driver


def artifact_of(bench_name: str, artifacts: str) -> Path | None:
    """The prepared artifact of a benchmark (`ARTIFACTS/<name>.tar.gz`), if there is one."""
    p = Path(artifacts) / f"{bench_name}.tar.gz"
    return p if artifacts and p.is_file() else None


def references(bench_name: str, artifacts: str = "") -> tuple[dict[str, Any], dict[str, Any], float, dict[str, Any]]:
    """Prepare the benchmark (install its artifact when `artifacts` has one, else train its target
    and oracle once, cached) and evaluate both on each part; returns ({part: target summary},
    {part: oracle summary}, prepare seconds, {"models_sha256", "artifact"}): which models every
    number of the datasheet is measured against."""
    from evounlearn.benchmarks import get_benchmark
    from evounlearn.benchmarks.references import cached_reference
    from evounlearn.benchmarks.tofu.artifact import import_for_benchmark

    bench = get_benchmark(bench_name)
    t0 = time.time()
    artifact = artifact_of(bench_name, artifacts)
    if artifact is not None:
        import_for_benchmark(bench_name, artifact)  # nothing written when the cache already holds it
    prepared = bench.prepare({})
    bench.paths(prepared)
    seconds = time.time() - t0
    target, oracle = {}, {}
    for part in ("search", "report"):
        ref = cached_reference(bench, prepared, part, {})
        target[part], oracle[part] = ref.target, ref.retain
    models = {"models_sha256": bench.models_sha256(prepared),
              "artifact": str(artifact.relative_to(ROOT)) if artifact is not None and artifact.is_relative_to(ROOT)
              else (str(artifact) if artifact else None)}
    return target, oracle, seconds, models


def _with_se(s: dict[str, Any], key: str) -> str:
    se = s.get(f"{key}_se")
    return f"{s[key]:.4f}" + (f" ± {se:.4f}" if se is not None else "")


def _seeds_text(seeds: Any) -> str:
    return str(seeds) if not isinstance(seeds, dict) else "; ".join(f"{b}: {n}" for b, n in seeds.items()) + ":"


def markdown(data: dict[str, Any]) -> str:
    lines = ["# The instrument's datasheet (`benchmarks/noise.py`)", "",
             f"Fitness `{data['fitness']}` (version {data['fitness_version']}); {_seeds_text(data['seeds'])} training "
             f"seeds of {', '.join(data['losses'])} per benchmark, search part, one torch thread per run; "
             f"item sd from {data['bootstrap']} bootstrap draws of the scored rows. "
             f"torch {data['env']['torch']}, transformers {data['env']['transformers']}, {data['env']['device']}.", "",
             "One candidate run = k trainings on shared seeds, scored by their mean (`train_seeds=k`); k = the "
             f"smallest k <= {MAX_TRAININGS} whose run meets the targets (single-run sd <= {TARGETS['single_run_sd']}, "
             f"paired-diff sd <= {TARGETS['paired_diff_sd']}; the oracle's |search - report| <= "
             f"{TARGETS['oracle_part_gap']} is the data's own): a run's sds are one training's / sqrt(k).", "",
             "| benchmark | rows/part | holdout rows | one training: sd / paired-diff sd | k | run of k: sd / paired-diff sd (± SE of the sd) "
             "| resolves (1 paired run, 2 sd) | item sd | oracle search - report | meets targets | s/training "
             "| target forget ROUGE | target MU |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in data["settings"].items():
        s = instrument(s)
        t = s["target"]["search"]
        k = s["trainings_per_candidate"]
        lines.append(f"| {name} | {s['rows_per_part']} | {s['holdout_rows']} | {s['single_training_sd']:.4f} / "
                     f"{s['paired_diff_sd_one_training']:.4f} | {k if k else f'none <= {MAX_TRAININGS}'} | "
                     f"{_with_se(s, 'single_run_sd')} / {_with_se(s, 'paired_diff_sd')} | {s['resolves_at_2sd']:.4f} | "
                     f"{s['item_sd']:.4f} | {s['oracle_part_gap']:+.4f} | "
                     f"{'yes' if s['meets_targets'] else 'no: ' + str(s['why_not'])} | {s['seconds_per_training']:.1f} | "
                     f"{t['forget_rouge']:.3f} | {t['model_utility']:.3f} |")
    lines += ["", "Per loss (searched fitness, mean ± sd over seeds, n):", ""]
    for name, s in data["settings"].items():
        cells = [f"{loss} {v['mean']:.3f} ± {v['sd']:.3f} (n={v['n']})" for loss, v in s["losses"].items()]
        lines.append(f"- {name}: " + "; ".join(cells))
    lines += ["", "Where the seed noise comes from: each factor of the searched fitness, mean ± sd over seeds "
              "(the three gaps enter as 1 - their mean, times the relative utility):", "",
              "| benchmark | loss | ROUGE gap | Prob gap | membership gap | relative utility |", "|---|---|---|---|---|---|"]
    for name, s in data["settings"].items():
        for loss, t in s.get("terms", {}).items():
            cells = " | ".join(f"{t[k]['mean']:.3f} ± {t[k]['sd']:.3f}"
                               for k in ("rouge_gap", "prob_gap", "membership_gap", "relative_utility"))
            lines.append(f"| {name} | {loss} | {cells} |")
    lines += ["", "Every pair of losses under shared seeds (sd of the paired difference, one training), and a run "
              "of k trainings' sd / paired-diff sd (pooled over the losses):", ""]
    for name, s in data["settings"].items():
        pairs = s["fitnesses"][data["fitness"]].get("paired_diff_sd_per_pair", {})
        ks = s.get("by_trainings", {})
        lines.append(f"- {name}: " + "; ".join(f"{p} {v:.4f}" for p, v in pairs.items()) + " | runs of k: "
                     + ", ".join(f"k={k} {v['single_run_sd']:.4f} / {v['paired_diff_sd']:.4f}" for k, v in ks.items()))
    lines += ["", "The same runs under the other fitnesses (one training: sd / paired-diff sd; oracle part gap):", ""]
    for name, s in data["settings"].items():
        cells = [f"`{f}` {v['single_run_sd']:.4f} / {v['paired_diff_sd']:.4f} / {v['oracle_part_gap']:+.4f}"
                 for f, v in s["fitnesses"].items()]
        lines.append(f"- {name}: " + "; ".join(cells))
    return "\n".join(lines) + "\n"


def cpu_info() -> dict[str, Any]:
    """The CPU's name and the kernels torch dispatches to (`ATEN_CPU_CAPABILITY`): two machines
    with different ones prepare different models from the same data and seeds
    (reproduce_avx512_*.json), so a datasheet says which it was measured on."""
    from evounlearn.benchmarks.tofu.artifact import cpu_info as info

    return info()


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new`'s benchmarks added to (or replacing theirs in) `old`, which must have been made with
    the same fitness version, losses and bootstrap draws (each entry keeps its own `seeds`); each
    benchmark keeps its own measurement's `env` and wall `seconds` (`measured`: an older entry's
    are its whole datasheet's), every entry gets the instrument's fields, and `seconds` is the sum
    of both datasheets'. The top-level `seeds` becomes {benchmark: seeds} when they differ."""
    for key in ("fitness", "fitness_version", "losses", "bootstrap"):
        if old.get(key) != new.get(key):
            raise SystemExit(f"noise.py --merge: the existing datasheet has {key}={old.get(key)!r}, this run "
                             f"{new.get(key)!r}; run every benchmark again instead")
    settings = {}
    for name, sheet in old["settings"].items():
        settings[name] = instrument({"measured": {"env": old.get("env"), "seconds": old.get("seconds")}, **sheet})
    for name, sheet in new["settings"].items():
        settings[name] = {"measured": {"env": new["env"], "seconds": new["seconds"]}, **sheet}
    seeds = {name: s.get("seeds") for name, s in settings.items()}
    return {**new, "settings": settings, "seconds": float(old.get("seconds") or 0) + float(new["seconds"]),
            "seeds": new["seeds"] if len(set(seeds.values())) == 1 else seeds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmarks", default=",".join(BENCHMARKS))
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bootstrap", type=int, default=300)
    ap.add_argument("--work", default=str(ROOT / "runs" / "noise"))
    ap.add_argument("--artifacts", default=str(ROOT / "benchmarks" / "artifacts"),
                    help="where prepared artifacts are (<benchmark>.tar.gz, imported before measuring; '' = prepare here)")
    ap.add_argument("--out", default=str(RESULTS / "noise.json"))
    ap.add_argument("--quick", action="store_true", help="generated only, 2 seeds, NPO only (smoke test)")
    ap.add_argument("--rederive", action="store_true",
                    help="no training: recompute the instrument's fields of the existing --out (json and md) and stop")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other benchmarks of an existing --out (same losses and seeds) and add or replace these")
    args = ap.parse_args()
    if args.rederive:
        data = json.loads(Path(args.out).read_text())
        for sheet in data["settings"].values():
            instrument(sheet)
        Path(args.out).write_text(json.dumps(data, indent=1, default=float) + "\n")
        Path(args.out).with_suffix(".md").write_text(markdown(data))
        print(markdown(data))
        return
    benches = args.benchmarks.split(",")
    losses = args.losses.split(",")
    seeds = args.seeds
    if args.quick:
        benches, losses, seeds = ["generated"], ["npo"], 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from evounlearn.benchmarks import get_fitness
    from evounlearn.models.device import runtime_info

    t_start = time.time()
    data: dict[str, Any] = {"fitness": FITNESS, "fitness_version": get_fitness("generated", FITNESS).version,
                            "losses": losses, "seeds": seeds, "bootstrap": args.bootstrap, "settings": {}}
    refs: dict[str, Any] = {}
    for b in benches:  # prepare serially: each builds two models with every thread this process has
        print(f"[noise] preparing {b} ...", flush=True)
        refs[b] = references(b, args.artifacts)
    for loss in losses:
        loss_run(loss)  # a malformed spec fails here, before any training
    # runs are kept per set of prepared models: another preparation's runs are not reused
    jobs = [(b, loss, s, str(Path(args.work) / b / str(refs[b][3]["models_sha256"])[:12]
                             / loss.replace("@", "__").replace(",", "_") / f"seed{s}"))
            for b in benches for loss in losses for s in range(seeds)]
    runs: dict[str, list[dict[str, Any]]] = {b: [] for b in benches}
    t0 = time.time()
    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
        futs = {pool.submit(run_one, *j): j for j in jobs}
        for i, fut in enumerate(as_completed(futs), 1):
            r = fut.result()
            runs[r["benchmark"]].append(r)
            el = time.time() - t0
            print(f"[noise] {i}/{len(jobs)} {r['benchmark']} {r['loss']} seed {r['seed']}: "
                  f"{r['seconds']:.1f} s; elapsed {el / 60:.1f} min, ETA {el / i * (len(jobs) - i) / 60:.1f} min",
                  flush=True)
    for b in benches:
        target, oracle, prep_s, models = refs[b]
        data["settings"][b] = instrument(datasheet(b, runs[b], target, oracle, losses, args.bootstrap))
        data["settings"][b].update(prepare_seconds=prep_s, **models)
        data["settings"][b]["seconds"] = sum(r["seconds"] for r in runs[b])
    data["seconds"] = time.time() - t_start
    data["env"] = {**runtime_info(), "parent_threads": torch.get_num_threads(), "workers": args.workers,
                   "load_at_end": os.getloadavg(), **cpu_info()}
    out = Path(args.out)
    if args.merge and out.is_file():
        data = merged(json.loads(out.read_text()), data)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, default=float)
    out.write_text(text + "\n")
    out.with_suffix(".md").write_text(markdown(data))
    print(markdown(data))
    print(json.dumps({b: {k: s[k] for k in ("rows_per_part", "single_run_sd", "item_sd", "paired_diff_sd",
                                              "oracle_part_gap", "seconds_per_candidate")}
                      for b, s in data["settings"].items()}))


if __name__ == "__main__":
    main()
