"""Does a fresh install reproduce the README's numbers? Re-runs the noise datasheet
(`benchmarks/noise.py`: the same fixed losses, seeds and options) on the given benchmarks and
compares with the committed `benchmarks/results/noise.json`. The target and oracle come from the
given artifact (`--artifacts`, installed by noise.py: the models the datasheet measured, on any
CPU) or, with `--artifacts ''` and an empty cache, are trained again here (what showed that CPUs
with other kernels prepare other models: reproduce_avx512_*.json). It reports:

- whether the models are the datasheet's (`models_sha256`, new and committed);

- the prepared target's and retain oracle's numbers (forget ROUGE / Prob, model utility; search and
  report parts): the largest absolute difference;
- per fixed loss, each training seed's fitness (the largest absolute difference, and whether every
  seed is bit-identical), and the mean over seeds: delta = new - committed, SE = sqrt(sd_new^2 / n +
  sd_old^2 / n); "reproduced" = |delta| <= 2 SE (the README states each number as mean ± sd over
  seeds, so "within the stated sd" is this test on the mean);
- the datasheet's summary (single-run sd, paired-difference sd, oracle gap) side by side.

    python benchmarks/reproduce.py                         # partial-large (~5 min on 2 quiet cores, prepared)
    python benchmarks/reproduce.py --benchmarks generated  # any benchmarks the datasheet has
Writes benchmarks/results/reproduce.json and .md (with the library versions of both). Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SUMMARY = ("single_training_sd", "item_sd", "paired_diff_sd_one_training", "oracle_part_gap",
           "trainings_per_candidate", "meets_targets")
#: a datasheet written before the instrument's fields: its one-training numbers under their old names
OLD_NAMES = {"single_training_sd": "single_run_sd", "paired_diff_sd_one_training": "paired_diff_sd"}


def summary_value(sheet: dict[str, Any], key: str) -> Any:
    """One summary number of a datasheet entry (one training's sds, under either name; the
    instrument's k and verdict where the entry has them)."""
    return sheet.get(key, sheet.get(OLD_NAMES.get(key, key)))


def _max_abs_diff(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """The largest |a - b| over the numeric leaves both nested dicts have (None: none in common)."""
    diffs: list[float] = []

    def walk(x: Any, y: Any) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in x.keys() & y.keys():
                walk(x[k], y[k])
        elif isinstance(x, (int, float)) and isinstance(y, (int, float)):
            diffs.append(abs(float(x) - float(y)))

    walk(a, b)
    return max(diffs) if diffs else None


def compare_loss(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """One loss's runs on a fresh install against the committed ones (see the module's docstring)."""
    nv, ov = [float(v) for v in new["values"]], [float(v) for v in old["values"]]
    n = min(len(nv), len(ov))
    per_seed = [abs(a - b) for a, b in zip(nv[:n], ov[:n])]
    se = math.sqrt(float(new["sd"]) ** 2 / len(nv) + float(old["sd"]) ** 2 / len(ov))
    delta = float(new["mean"]) - float(old["mean"])
    return {"new": {"mean": new["mean"], "sd": new["sd"], "n": len(nv)},
            "committed": {"mean": old["mean"], "sd": old["sd"], "n": len(ov)},
            "delta": delta, "se": se, "reproduced": abs(delta) <= 2 * se,
            "max_seed_abs_diff": max(per_seed) if per_seed else None,
            "bit_identical_seeds": sum(a == b for a, b in zip(nv[:n], ov[:n])), "seeds_compared": n}


def compare(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """Every benchmark of `new` (a noise.json) against the same benchmark of `old`."""
    out: dict[str, Any] = {}
    for name, s in new["settings"].items():
        ref = old["settings"].get(name)
        if ref is None:
            out[name] = {"error": f"the committed datasheet has no {name}"}
            continue
        losses = {loss: compare_loss(v, ref["losses"][loss]) for loss, v in s["losses"].items() if loss in ref["losses"]}
        out[name] = {
            "models_sha256": {"new": s.get("models_sha256"), "committed": ref.get("models_sha256")},
            "target_max_abs_diff": _max_abs_diff(s.get("target") or {}, ref.get("target") or {}),
            "oracle_max_abs_diff": _max_abs_diff(s.get("oracle") or {}, ref.get("oracle") or {}),
            "losses": losses,
            "summary": {k: {"new": summary_value(s, k), "committed": summary_value(ref, k)} for k in SUMMARY},
            "all_reproduced": bool(losses) and all(v["reproduced"] for v in losses.values()),
        }
    return out


def markdown(data: dict[str, Any]) -> str:
    lines = ["# Reproduction of the noise datasheet on a fresh install", "",
             f"this install: {json.dumps(data['env'])}; committed: {json.dumps(data['committed_env'])}; "
             f"{data['seconds'] / 60:.1f} min", "",
             "| benchmark | loss | committed mean ± sd (n) | new mean ± sd (n) | delta ± SE | within 2 SE | "
             "seeds bit-identical | max per-seed diff |", "|---|---|---|---|---|---|---|---|"]
    for name, b in data["benchmarks"].items():
        for loss, v in (b.get("losses") or {}).items():
            c, n = v["committed"], v["new"]
            lines.append(f"| {name} | {loss} | {c['mean']:.4f} ± {c['sd']:.4f} ({c['n']}) | {n['mean']:.4f} ± "
                         f"{n['sd']:.4f} ({n['n']}) | {v['delta']:+.4f} ± {v['se']:.4f} | {v['reproduced']} | "
                         f"{v['bit_identical_seeds']}/{v['seeds_compared']} | {v['max_seed_abs_diff']:.2e} |")
    lines.append("")
    for name, b in data["benchmarks"].items():
        if "error" in b:
            lines.append(f"- {name}: {b['error']}")
            continue
        sha = b.get("models_sha256") or {}
        same = ("the datasheet's models" if sha.get("new") and sha.get("new") == sha.get("committed")
                else f"models {str(sha.get('new'))[:12]} (datasheet: {str(sha.get('committed'))[:12]})")
        lines.append(f"- {name}: {same}; target's numbers differ by at most {b['target_max_abs_diff']}, the oracle's by "
                     f"{b['oracle_max_abs_diff']}; " + "; ".join(
                         f"{k} {v['new']:.4f} (committed {v['committed']:.4f})" if isinstance(v["new"], float)
                         and isinstance(v["committed"], float) else f"{k} {v['new']} (committed {v['committed']})"
                         for k, v in b["summary"].items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmarks", default="partial-large")
    ap.add_argument("--reference", default=str(RESULTS / "noise.json"), help="the committed datasheet")
    ap.add_argument("--work", default=str(ROOT / "runs" / "reproduce"))
    ap.add_argument("--out", default=str(RESULTS / "reproduce"), help="output path without extension")
    ap.add_argument("--seeds", type=int, default=0, help="training seeds per loss (default: the datasheet's)")
    ap.add_argument("--artifacts", default=str(ROOT / "benchmarks" / "artifacts"),
                    help="install these prepared artifacts first (noise.py --artifacts; '' = prepare here)")
    opts = ap.parse_args(argv)
    old = json.loads(Path(opts.reference).read_text())
    benches = opts.benchmarks.split(",")
    unknown = [b for b in benches if b not in old["settings"]]
    if unknown:
        ap.error(f"the committed datasheet has no {', '.join(unknown)} (it has {', '.join(old['settings'])})")
    counts = {old["settings"][b].get("seeds") or old["seeds"] for b in benches}
    if not opts.seeds and len(counts) > 1:
        ap.error(f"the datasheet measured these benchmarks with different seed counts ({sorted(counts)}): pass --seeds")
    work = Path(opts.work)
    fresh = work / "noise.json"
    t0 = time.time()
    cmd = [sys.executable, str(ROOT / "benchmarks" / "noise.py"), "--benchmarks", opts.benchmarks,
           "--losses", ",".join(old["losses"]), "--seeds", str(opts.seeds or counts.pop()),
           "--bootstrap", str(old["bootstrap"]), "--work", str(work / "runs"), "--out", str(fresh),
           "--artifacts", opts.artifacts]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    rc = subprocess.run(cmd, env=env, cwd=ROOT).returncode
    if rc != 0:
        raise SystemExit(f"benchmarks/noise.py failed (rc {rc}): {' '.join(cmd)}")
    new = json.loads(fresh.read_text())
    data = {"benchmarks": compare(new, old), "seconds": time.time() - t0, "env": new.get("env"),
            "committed_env": old.get("env")}
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(data))
    print(markdown(data))
    print(json.dumps({b: v.get("all_reproduced") for b, v in data["benchmarks"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
