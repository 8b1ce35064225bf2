"""PMC vs NPO vs UnDIAL on the default generated benchmark (forget10), same compute budget.

    python benchmarks/pmc.py [--threads 1] [--out benchmarks/results] [--attack-samples 16]

- Models: the prepared target and retain oracle of `benchmarks.tofu.prepare` with the default config
  (cached under $EVOUNLEARN_CACHE; trained first when missing).
- Same compute budget: every method runs the same number of optimizer steps: `epochs` = PMC's
  registered default epochs, and the same `batch_size` / `grad_accum` (PMC's registered values,
  else the TrainConfig defaults); everything else (lr, schedule, warmup, loss params) is each
  method's registered default, read at run time. PMC also spends generation time inside those
  steps; `seconds` (unlearning wall-clock) shows it.
- Evaluation of every model (target, retain, each method): the full TOFU suite (the prepared
  results for target and retain), PMC's metrics (unlearn quality, utility) and both leakage
  attacks (sampling: k samples at temperature T, best ROUGE-L recall per question; prefilling).
- `gt_independent`: a short PMC run done twice from the target with the same seed, once on the
  real forget set and once on a copy whose forget answers are random strings; true when every
  weight is bit-identical (torch.equal).

Prints one JSON object as its LAST line and writes benchmarks/results/pmc.json and pmc.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from evounlearn.benchmarks.tofu import PrepareConfig, build_config, prepare, run_unlearning
from evounlearn.data import tofu
from evounlearn.data.prompting import PromptFormatter
from evounlearn.evaluation.attacks import AttackConfig, add_attacks
from evounlearn.evaluation.pmc_metrics import add_pmc_metrics
from evounlearn.evaluation.tofu_eval import EvalConfig, TofuEvaluator, load_results, save_results
from evounlearn.methods import get_method
from evounlearn.models.loading import load_model_and_tokenizer

log = logging.getLogger("benchmarks.pmc")
METHODS = ("pmc", "npo", "undial")
SPLIT = "forget10"
KEYS = ("unlearn_quality", "utility", "forget_rouge", "retain_rouge", "forget_quality", "model_utility",
        "sampling_attack_rouge", "prefill_attack_rouge", "seconds")


def budget() -> dict[str, int]:
    """The shared compute budget: PMC's registered epochs and batch size (optimizer steps alike)."""
    train = get_method("pmc").defaults.get("train") or {}
    return {"epochs": int(train.get("epochs", 5)), "batch_size": int(train.get("batch_size", 8)),
            "grad_accum": int(train.get("grad_accum", 1))}


def extra_metrics(res: dict[str, Any], model, tok, evaluator: TofuEvaluator, attack: AttackConfig) -> dict[str, Any]:
    """PMC's metrics + both attacks added to a TOFU result (in place)."""
    fmt = PromptFormatter(tok)
    add_pmc_metrics(res, model, fmt, evaluator.forget, evaluator.cfg.max_new_tokens, evaluator.cfg.batch_size)
    add_attacks(res, model, fmt, evaluator.forget, ("sampling", "prefill"), attack)
    return res


def entry(res: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    s = res["summary"]
    return {"unlearn_quality": s["unlearn_quality"], "utility": s["pmc_utility"], "forget_rouge": s["forget_rouge"],
            "retain_rouge": s["retain_rouge"], "forget_quality": s["forget_quality"],
            "model_utility": s["model_utility"], "sampling_attack_rouge": s["sampling_attack_rouge"],
            "prefill_attack_rouge": s["prefill_attack_rouge"], "seconds": seconds}


def garbage_copy(source: str, out: Path, seed: int = 12345) -> Path:
    """A copy of the benchmark whose forget answers (every answer column) are random strings."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source, out)
    rng = random.Random(seed)

    def junk() -> str:
        return " ".join("".join(rng.choices(string.ascii_letters, k=rng.randint(2, 9)))
                        for _ in range(rng.randint(1, 15)))

    for name in (SPLIT, f"{SPLIT}_perturbed"):
        rows = tofu.load_split(name, source)
        for r in rows:
            r["answer"] = junk()
            if "paraphrased_answer" in r:
                r["paraphrased_answer"] = junk()
                r["perturbed_answer"] = [junk() for _ in r["perturbed_answer"]]
        (out / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def gt_independence(target: Path, source: str, work: Path, epochs: int = 1) -> dict[str, Any]:
    """Run PMC twice (real answers / random strings) with the same seed; compare every weight."""
    from safetensors.torch import load_file

    garbage = garbage_copy(source, work / "garbage-data")
    weights = []
    for name, data in (("real", source), ("garbage", str(garbage))):
        run_dir = work / f"gt-{name}"
        cfg = build_config("pmc", None, [f"data={data}", f"forget_split={SPLIT}", f"model={target}",
                                         f"run_dir={run_dir}", f"train.epochs={epochs}"])
        run_unlearning(cfg, evaluate=False)
        weights.append(load_file(str(run_dir / "model" / "model.safetensors")))
    a, b = weights
    start = load_file(str(Path(target) / "model.safetensors"))
    identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    moved = any(not torch.equal(a[k], start[k]) for k in a if k in start)
    differ = sum(x["answer"] != y["answer"]
                 for x, y in zip(tofu.load_split(SPLIT, source), tofu.load_split(SPLIT, str(garbage))))
    return {"identical": bool(identical), "weights_moved": bool(moved), "answers_replaced": differ,
            "tensors": len(a)}


def markdown(obj: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    rows = [("target", obj["target"]), ("retain", obj["retain"])] + list(obj["methods"].items())
    lines = ["| model | " + " | ".join(KEYS) + " |", "|---|" + "---|" * len(KEYS)]
    lines += ["| " + name + " | " + " | ".join(fmt(e.get(k)) for k in KEYS) + " |" for name, e in rows]
    lines.append("")
    lines.append(f"gt_independent (bit-identical weights with random forget answers): {obj['gt_independent']}")
    return "\n".join(lines) + "\n"


def criteria(obj: dict[str, Any]) -> dict[str, bool]:
    t, p = obj["target"], obj["methods"]["pmc"]
    return {
        "forget_rouge_drop_ge_50pct": p["forget_rouge"] <= 0.5 * t["forget_rouge"],
        "retain_rouge_drop_le_10pct": p["retain_rouge"] >= 0.9 * t["retain_rouge"],
        "sampling_attack_below_target": p["sampling_attack_rouge"] < t["sampling_attack_rouge"],
        "prefill_attack_below_target": p["prefill_attack_rouge"] < t["prefill_attack_rouge"],
        "gt_independent": bool(obj["gt_independent"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--work", help="folder for the runs (default: a temporary folder, removed at the end)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for tiny models)")
    ap.add_argument("--attack-samples", type=int, default=16)
    ap.add_argument("--attack-temperature", type=float, default=1.0)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    t_all = time.time()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="evounlearn-pmc-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    prep_cfg = PrepareConfig(forget_split=SPLIT)
    prepared = prepare(prep_cfg)
    ev_cfg = EvalConfig()
    evaluator = TofuEvaluator(prepared.data, SPLIT, ev_cfg)
    attack = AttackConfig(samples=args.attack_samples, temperature=args.attack_temperature,
                          max_new_tokens=ev_cfg.max_new_tokens, batch_size=ev_cfg.batch_size)
    retain_results = load_results(prepared.retain_results)
    out: dict[str, Any] = {"methods": {}}
    for name, path, res_path in (("target", prepared.target, prepared.target_results),
                                 ("retain", prepared.retain, prepared.retain_results)):
        model, tok = load_model_and_tokenizer(path, dtype="float32")
        res = extra_metrics(load_results(res_path), model, tok, evaluator, attack)
        secs = (prepared.info.get(f"{name}_train") or {}).get("seconds")
        out[name] = entry(res, secs)
        log.info("%s: %s", name, out[name])

    b = budget()
    ov_budget = [f"train.{k}={v}" for k, v in b.items()]
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        run_dir = work / method
        cfg = build_config(method, None, [f"forget_split={SPLIT}", f"run_dir={run_dir}", *ov_budget])
        t0 = time.time()
        record = run_unlearning(cfg, evaluate=True)
        log.info("%s: trained in %.1fs, evaluated in %.1fs (total %.1fs)", method, record["seconds"],
                 record.get("eval_seconds", 0.0), time.time() - t0)
        model, tok = load_model_and_tokenizer(run_dir / "model", dtype="float32")
        res = extra_metrics(load_results(run_dir / "results.json"), model, tok, evaluator, attack)
        save_results(res, run_dir / "results.json")
        out["methods"][method] = entry(res, record["seconds"])
        out["methods"][method]["train"] = {k: getattr(cfg.train, k) for k in ("lr", "epochs", "batch_size")}
        out["methods"][method]["steps"] = record["steps"]
        log.info("%s: %s", method, out["methods"][method])

    gt = gt_independence(prepared.target, prepared.data, work)
    log.info("ground-truth independence: %s", gt)
    out["gt_independent"] = gt["identical"]
    line = {"target": out["target"], "retain": out["retain"], "methods": out["methods"],
            "gt_independent": out["gt_independent"]}
    total = time.time() - t_all
    crit = criteria(line) if "pmc" in line["methods"] else {}
    details = {"budget": b, "attack": {"samples": attack.samples, "temperature": attack.temperature,
                                       "top_p": attack.top_p, "prefix": attack.prefix},
               "gt_check": gt, "criteria": crit, "total_seconds": total, "threads": torch.get_num_threads(),
               "pmc_defaults": get_method("pmc").defaults, "retain_forget_quality_ref": retain_results["summary"].get(
                   "forget_quality")}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from evounlearn.models.device import runtime_info

    details["runtime"] = runtime_info()
    (out_dir / "pmc.json").write_text(json.dumps({**line, "details": details}, indent=1, default=str))
    md = markdown(line)
    md += f"\nBudget (every method): {b}; attacks: {details['attack']}; total {total:.0f}s.\n"
    if crit:
        md += "\nCriteria: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in crit.items()) + "\n"
    (out_dir / "pmc.md").write_text(md)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print(md, file=sys.stderr)
    print(json.dumps(line, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
