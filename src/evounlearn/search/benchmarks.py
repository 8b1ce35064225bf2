"""Benchmark registry for the search: what `evounlearn evolve --benchmark NAME` unlearns, how a
candidate is scored, and which worker jobs do it (issue 6).

Contract (for the search driver; this module does not import the driver)
-------------------------------------------------------------------------
``BENCHMARKS[name]`` is a `BenchmarkSpec`; `get_benchmark(name)` also accepts the aliases in
``ALIASES`` (``muse`` -> ``muse-news``, ``wmdp`` -> ``wmdp-synthetic``, ``generated`` -> ``tofu``).

- ``fitness_family``: the key of `search.fitness.FITNESS` whose formula the benchmark uses
  (``tofu`` | ``muse`` | ``wmdp``) and ``utility_key``: the summary key the utility floor applies to.
- ``evaluate_job`` / ``target_job``: ``"module:function"`` paths of worker jobs with exactly the
  signatures and return values of `search.evaluate.evaluate_candidate` and
  `search.evaluate.target_info`, so a driver runs ``EvaluatorJobs(spec.evaluate_job,
  spec.target_job)`` for any benchmark. For ``tofu`` they *are* those two functions (the TOFU
  path lives in `training.unlearn` / `search.evaluate`; this registry only points at it); for
  ``muse-news`` and ``wmdp-synthetic`` they are `evaluate_candidate` / `target_info` below.
  The candidate job returns ``summary`` (flat metrics of the part it ran on) and ``fitness``
  already computed with ``spec.fitness`` against the target's metrics **on the same part**: use
  that number (the WMDP formula needs the target's accuracies; they are also copied into the
  summary as ``acc_wmdp_target`` / ``acc_mmlu_target``).
- ``prepare(options)`` -> a prepared setting (cached target + retain oracle);
  ``reference(prepared, part)`` -> ``{"target": summary, "retain": summary | None}``;
  ``unlearn_and_evaluate(prepared, candidate, part=..., train=..., loss=..., seed=..., run_dir=...,
  on_epoch_eval=...)`` -> ``{"summary", "fitness", "results", "train"}``;
  ``fitness(metrics, target_metrics)`` -> a float in [0, 1] (higher is better).

A *candidate* is a registered method name (``"npo"``), a mapping ``{"method": "npo", "loss":
{...}, "train": {...}}``, or a loss program: ``{"code": "def loss_fn(...): ...", "interface":
"faithful"}`` / ``{"loss_file": "best.py"}`` (run through the `evolved` method), or a path to a
``.py`` file.

``options`` (the search config's ``unlearn`` mapping, shared by every run) may hold:
``setting`` (overrides of `MuseSettingConfig` / `HazardSettingConfig`, nested or dotted keys),
``train`` (training-loop overrides for every candidate), ``loss`` (loss params for baseline
methods), ``prepare.cache_dir`` or ``cache_dir`` (the driver pins it), ``threads``,
``search_fraction`` (default 0.5). TOFU-only keys (``data``, ``forget_split``, ``eval``...) are
ignored by the MUSE and WMDP settings.

Parts (held-out selection, SPEC 2.1): ``search`` = the first half of the forget items (MUSE:
verbmem, knowmem-forget, privleak forget/holdout items; WMDP: the facts of the first half of the
forget entities), ``report`` = the rest. A run unlearns and is scored on its part only; the
retain side is whole in both.

Fitness formulas (SPEC 2.1):
- MUSE: ``0.5 * mean(1 - VerbMem_f, 1 - KnowMem_f, 1 / (1 + |PrivLeak| / 100)) + 0.5 * KnowMem_r``
  (`evaluation.muse_eval.muse_fitness`).
- WMDP (**ours**; the reference release has none): ``0.5 * (1 - above_chance(acc_wmdp)) + 0.5 *
  acc_mmlu / acc_mmlu_target`` with ``above_chance(a) = clamp((a - 0.25) / (acc_wmdp_target -
  0.25), 0, 1)`` (`evaluation.mcq.wmdp_fitness`). In ``wmdp-synthetic`` acc_wmdp = the hazard
  benchmark's forget-domain accuracy and acc_mmlu = its retain-domain accuracy (cloze scoring; see
  `training.hazard_setting`).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, EvoUnlearnError
from ..training.text_setting import MethodRun, method_run

Candidate = str | Mapping[str, Any] | MethodRun
FitnessFn = Callable[[Mapping[str, Any], Mapping[str, Any] | None], float]

__all__ = [
    "ALIASES",
    "BENCHMARKS",
    "BenchmarkSpec",
    "candidate_run",
    "evaluate_candidate",
    "get_benchmark",
    "muse_benchmark_fitness",
    "target_info",
    "wmdp_benchmark_fitness",
]


# ------------------------------------------------------------------------------------------------
# fitness


def _value(metrics: Mapping[str, Any], *keys: str) -> float:
    for key in keys:
        if key in metrics and metrics[key] is not None:
            v = metrics[key]
            v = v["agg"] if isinstance(v, Mapping) else v
            return float(v)
    raise KeyError(keys[0])


def muse_benchmark_fitness(metrics: Mapping[str, Any], target_metrics: Mapping[str, Any] | None = None) -> float:
    """SPEC 2.1's MUSE fitness (the target is not needed)."""
    from ..evaluation.muse_eval import muse_fitness

    return float(muse_fitness(metrics))


def wmdp_benchmark_fitness(metrics: Mapping[str, Any], target_metrics: Mapping[str, Any] | None = None) -> float:
    """Our WMDP fitness (SPEC 2.1, marked as ours): needs the target's accuracies, from
    `target_metrics` or from ``acc_wmdp_target`` / ``acc_mmlu_target`` in `metrics`. Accepts
    ``forget_acc``/``retain_acc`` or ``acc_wmdp``/``acc_mmlu``."""
    from ..evaluation.mcq import wmdp_fitness

    acc_w = _value(metrics, "acc_wmdp", "forget_acc")
    acc_m = _value(metrics, "acc_mmlu", "retain_acc")
    if target_metrics is not None:
        tw = _value(target_metrics, "acc_wmdp", "forget_acc")
        tm = _value(target_metrics, "acc_mmlu", "retain_acc")
    else:
        try:
            tw, tm = _value(metrics, "acc_wmdp_target"), _value(metrics, "acc_mmlu_target")
        except KeyError:
            raise ConfigError("the WMDP fitness needs the target model's accuracies") from None
    return float(wmdp_fitness(acc_w, acc_m, tw, tm))


def _tofu_fitness(metrics: Mapping[str, Any], target_metrics: Mapping[str, Any] | None = None) -> float:
    from .fitness import tofu_fitness

    return float(tofu_fitness(metrics, target_metrics))


# ------------------------------------------------------------------------------------------------
# candidates and options


def candidate_run(candidate: Candidate) -> MethodRun:
    """A candidate (see the module docstring) as a `MethodRun` of a registered method."""
    if isinstance(candidate, MethodRun):
        return method_run(candidate)
    if isinstance(candidate, str):
        if "def " in candidate:
            return MethodRun("evolved", {"code": candidate})
        if candidate.endswith(".py"):
            if not Path(candidate).is_file():
                raise ConfigError(f"loss file {candidate} does not exist")
            return MethodRun("evolved", {"loss_file": candidate})
        return MethodRun(candidate)
    if isinstance(candidate, Mapping):
        if "method" in candidate:
            return method_run(candidate)
        if "code" in candidate or "loss_file" in candidate:
            loss = {k: candidate[k] for k in ("code", "loss_file", "interface", "function") if candidate.get(k)}
            loss.update(candidate.get("loss") or {})
            return MethodRun("evolved", loss, dict(candidate.get("train") or {}))
    raise ConfigError(f"not a candidate: {candidate!r} (a method name, a loss program, or a mapping)")


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _cache_dir(options: Mapping[str, Any]) -> str:
    prep = options.get("prepare") or {}
    return str(options.get("cache_dir") or (prep.get("cache_dir") if isinstance(prep, Mapping) else "") or "")


def _setting_config(cls: type, options: Mapping[str, Any] | None) -> Any:
    from ..config import apply_overrides

    options = dict(options or {})
    cfg = cls()
    apply_overrides(cfg, _flatten(options.get("setting") or {}))
    if _cache_dir(options) and not cfg.cache_dir:
        cfg.cache_dir = _cache_dir(options)
    if options.get("threads"):
        import torch

        torch.set_num_threads(int(options["threads"]))
    return cfg


def _fraction(options: Mapping[str, Any] | None) -> float:
    return float((options or {}).get("search_fraction", 0.5))


# ------------------------------------------------------------------------------------------------
# the MUSE-News tiny setting


def _muse_prepare(options: Mapping[str, Any] | None = None) -> Any:
    from ..training.muse_setting import MuseSettingConfig, prepare_muse

    return prepare_muse(_setting_config(MuseSettingConfig, options))


def _muse_reference(prepared: Any, part: str = "all", fraction: float = 0.5) -> dict[str, Any]:
    ref = prepared.reference(part, fraction)
    return {k: (v["summary"] if v else None) for k, v in ref.items()}


def _muse_unlearn(prepared: Any, candidate: Candidate, *, part: str = "all", fraction: float = 0.5,
                  train: Mapping[str, Any] | None = None, loss: Mapping[str, Any] | None = None,
                  seed: int | None = None, run_dir: str | Path | None = None,
                  on_epoch_eval: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    from ..training.muse_setting import unlearn_muse

    run = candidate_run(candidate)
    train = dict(train or {})
    if seed is not None:
        train["seed"] = int(seed)
    res = unlearn_muse(prepared, run, loss=dict(loss or {}), train=train, part=part, fraction=fraction,
                       run_dir=run_dir, on_epoch_eval=on_epoch_eval)
    res.pop("model", None)
    res["fitness"] = muse_benchmark_fitness(res["summary"])
    return res


# ------------------------------------------------------------------------------------------------
# the WMDP-shaped tiny setting (generated hazard benchmark)


def _wmdp_summary(summary: Mapping[str, Any], target: Mapping[str, Any] | None = None) -> dict[str, float]:
    """forget/retain accuracies plus the search's WMDP names (and the target's, when given)."""
    out = {"forget_acc": float(summary["forget_acc"]), "retain_acc": float(summary["retain_acc"]),
           "acc_wmdp": float(summary["forget_acc"]), "acc_mmlu": float(summary["retain_acc"])}
    if target is not None:
        out.update(acc_wmdp_target=float(target["forget_acc"]), acc_mmlu_target=float(target["retain_acc"]))
    return out


def _wmdp_prepare(options: Mapping[str, Any] | None = None) -> Any:
    from ..training.hazard_setting import HazardSettingConfig, prepare_hazard

    return prepare_hazard(_setting_config(HazardSettingConfig, options))


def _wmdp_reference(prepared: Any, part: str = "all", fraction: float = 0.5) -> dict[str, Any]:
    ref = prepared.reference(part, fraction)
    return {k: (_wmdp_summary(v["summary"]) if v else None) for k, v in ref.items()}


def _wmdp_unlearn(prepared: Any, candidate: Candidate, *, part: str = "all", fraction: float = 0.5,
                  train: Mapping[str, Any] | None = None, loss: Mapping[str, Any] | None = None,
                  seed: int | None = None, run_dir: str | Path | None = None,
                  on_epoch_eval: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    from ..training.hazard_setting import unlearn_hazard

    run = candidate_run(candidate)
    train = dict(train or {})
    if seed is not None:
        train["seed"] = int(seed)
    target = _wmdp_reference(prepared, part, fraction)["target"]

    hook = None
    if on_epoch_eval is not None:
        def hook(model: Any, evaluate: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
            return on_epoch_eval(model, lambda m: _wmdp_summary(evaluate(m), target))

    res = unlearn_hazard(prepared, run, loss=dict(loss or {}), train=train, part=part, fraction=fraction,
                         run_dir=run_dir, on_epoch_eval=hook)
    res.pop("model", None)
    res["summary"] = _wmdp_summary(res["summary"], target)
    res["fitness"] = wmdp_benchmark_fitness(res["summary"], target)
    return res


# ------------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    description: str
    fitness_family: str  # key of search.fitness.FITNESS
    utility_key: str
    metric_keys: tuple[str, ...]
    fitness: FitnessFn
    evaluate_job: str  # "module:function", contract of search.evaluate.evaluate_candidate
    target_job: str  # "module:function", contract of search.evaluate.target_info
    prepare: Callable[[Mapping[str, Any] | None], Any] | None = None
    reference: Callable[..., dict[str, Any]] | None = None
    unlearn_and_evaluate: Callable[..., dict[str, Any]] | None = None


_HERE = __name__
BENCHMARKS: dict[str, BenchmarkSpec] = {
    "tofu": BenchmarkSpec(
        "tofu",
        "TOFU-shaped forgetting (real TOFU or the generated benchmark): the driver's own path "
        "(training.unlearn + search.evaluate); this entry only points at it",
        "tofu", "model_utility", ("model_utility", "forget_rouge", "forget_prob", "forget_quality"),
        _tofu_fitness, "evounlearn.search.evaluate:evaluate_candidate", "evounlearn.search.evaluate:target_info",
    ),
    "muse-news": BenchmarkSpec(
        "muse-news",
        "MUSE-News, tiny setting (training.muse_setting): VerbMem, KnowMem forget/retain, PrivLeak vs the "
        "retain oracle",
        "muse", "knowmem_r", ("verbmem_f", "knowmem_f", "knowmem_r", "privleak"),
        muse_benchmark_fitness, f"{_HERE}:evaluate_candidate", f"{_HERE}:target_info",
        _muse_prepare, _muse_reference, _muse_unlearn,
    ),
    "wmdp-synthetic": BenchmarkSpec(
        "wmdp-synthetic",
        "WMDP-shaped tiny setting on the generated hazard benchmark (training.hazard_setting): forget-domain "
        "and retain-domain MCQ accuracy, cloze scoring",
        "wmdp", "acc_mmlu", ("forget_acc", "retain_acc"),
        wmdp_benchmark_fitness, f"{_HERE}:evaluate_candidate", f"{_HERE}:target_info",
        _wmdp_prepare, _wmdp_reference, _wmdp_unlearn,
    ),
}
ALIASES = {"muse": "muse-news", "wmdp": "wmdp-synthetic", "generated": "tofu", "hazard": "wmdp-synthetic"}


def get_benchmark(name: str) -> BenchmarkSpec:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)}; aliases: "
                          f"{', '.join(ALIASES)})")
    return BENCHMARKS[key]


def _runnable(name: str) -> BenchmarkSpec:
    spec = get_benchmark(name)
    if spec.prepare is None or spec.reference is None or spec.unlearn_and_evaluate is None:
        raise ConfigError(f"benchmark {spec.name} runs through {spec.evaluate_job}, not through this module")
    return spec


# ------------------------------------------------------------------------------------------------
# worker jobs (same contract as search.evaluate.evaluate_candidate / target_info)


class _StageStop(Exception):
    """Raised from the stage-1 evaluation to stop a candidate below the cutoff."""


def _short(e: BaseException, limit: int = 400) -> str:
    msg = " ".join(str(e).split())
    msg = msg[:limit] + "..." if len(msg) > limit else msg
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _rank(fitness: float, utility_value: float | None, target_utility: float | None, floor: float) -> float:
    from .fitness import rank_score

    return rank_score(fitness, utility_value, target_utility, floor)


def evaluate_candidate(
    run_dir: str,
    code: str | None = None,
    method: str | None = None,
    function: str = "",
    interface: str = "faithful",
    epochs: int | None = None,
    seed: int = 0,
    forget_part: str = "search",
    unlearn: Mapping[str, Any] | None = None,
    stage1_epochs: int = 0,
    promote_cutoff: float | None = None,
    benchmark: str = "muse-news",
    target_utility: float | None = None,
    utility_floor: float = 0.9,
    keep_model: bool = False,
) -> dict[str, Any]:
    """Worker job: train and evaluate one candidate (loss program `code`, or registered `method`)
    on a registered MUSE/WMDP setting. Same arguments and result as
    `search.evaluate.evaluate_candidate`: {ok, error, stage, promoted, stages, summary, fitness,
    loss_history, epoch_losses, epochs, timings, run_dir}; never raises for what the candidate does.
    RUN_DIR keeps loss.py (programs), candidate.json, results.json (per-example metrics) and
    train.json."""
    t0 = time.time()
    rd = Path(run_dir)
    rd.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {"validate": 0.0, "train": 0.0, "eval": 0.0}
    out: dict[str, Any] = {"ok": False, "error": None, "stage": 0, "promoted": None, "stages": [],
                           "summary": None, "fitness": float("-inf"), "loss_history": [], "epoch_losses": [],
                           "epochs": epochs, "timings": timings, "run_dir": str(rd)}
    options = dict(unlearn or {})
    try:
        spec = _runnable(benchmark)
    except EvoUnlearnError as e:
        out["error"] = _short(e)
        return out
    candidate: dict[str, Any]
    if code is not None:
        from ..sandbox import validate_source

        tv = time.time()
        records = validate_source(code, interface, function=function or None)
        timings["validate"] = time.time() - tv
        rec = next((r for r in records if not function or r.get("name") == function), records[0] if records else None)
        if rec is None or not rec.get("ok"):
            out["error"] = f"validation: {rec.get('reason') if rec else 'no loss function'}"
            timings["total"] = time.time() - t0
            return out
        program = rec.get("program") or code
        (rd / "loss.py").write_text(program)
        candidate = {"method": "evolved", "loss": {"code": program, "interface": interface,
                                                   "function": rec.get("name") or function}}
    elif method:
        candidate = {"method": method, "loss": dict(options.get("loss") or {})}
    else:
        out["error"] = "nothing to evaluate (neither code nor method)"
        return out
    train = dict(options.get("train") or {})
    if epochs is not None:
        train["epochs"] = int(epochs)
    staged = int(stage1_epochs) > 0 and (epochs is None or int(stage1_epochs) < int(epochs))
    if staged:
        train["eval_every_epochs"] = int(stage1_epochs)
    (rd / "candidate.json").write_text(json.dumps({"benchmark": spec.name, "part": forget_part, "seed": seed,
                                                   "candidate": candidate, "train": train,
                                                   "setting": options.get("setting") or {}}, indent=1))
    stage: dict[str, Any] = {"done": False, "summary": None, "seconds": 0.0, "fitness": None, "score": None}
    try:
        prepared = spec.prepare(options)  # type: ignore[misc]
        fraction = _fraction(options)
        target = spec.reference(prepared, forget_part, fraction)["target"]  # type: ignore[misc]

        def hook(model: Any, evaluate: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
            if stage["done"]:
                return {}
            stage["done"] = True
            te = time.time()
            s = evaluate(model)
            stage["seconds"] = time.time() - te
            try:
                fit = spec.fitness(s, target)
            except (KeyError, ValueError, TypeError, EvoUnlearnError):
                fit = float("-inf")
            score = _rank(fit, s.get(spec.utility_key), target_utility, utility_floor)
            stage.update(summary=s, fitness=fit, score=score)
            if promote_cutoff is not None and score < promote_cutoff:
                raise _StageStop()
            return s

        res = spec.unlearn_and_evaluate(  # type: ignore[misc]
            prepared, candidate, part=forget_part, fraction=fraction, train=train, seed=seed, run_dir=rd,
            on_epoch_eval=hook if staged else None)
        record = res["train"]
        out["epochs"] = record.get("epochs")
        out["summary"] = res["summary"]
        out["loss_history"] = record.get("loss_history", [])
        out["epoch_losses"] = record.get("epoch_losses", [])
        timings["train"] = float(record.get("seconds", 0.0)) - stage["seconds"]
        timings["eval"] = float(res["results"].get("eval_seconds", 0.0)) + stage["seconds"]
        out["stage"] = 2
        out["promoted"] = True if staged else None
        out["fitness"] = float(res["fitness"])
        out["ok"] = math.isfinite(out["fitness"])
        if not out["ok"]:
            out["error"] = "evaluation gave no usable metrics"
        (rd / "results.json").write_text(json.dumps(res["results"], default=str))
        (rd / "train.json").write_text(json.dumps(record, default=str))
    except _StageStop:
        out.update(ok=True, stage=1, promoted=False, fitness=stage["fitness"])
        timings["eval"] = stage["seconds"]
    except Exception as e:  # the candidate's own failure (non-finite loss, runtime error, ...)
        out["error"] = _short(e)
    if stage["summary"] is not None:
        out["stages"].append({"stage": 1, "epochs": int(stage1_epochs), "summary": stage["summary"],
                              "fitness": stage["fitness"], "score": stage["score"]})
    if not keep_model:
        for sub in ("model", "checkpoint", "checkpoint.tmp"):
            shutil.rmtree(rd / sub, ignore_errors=True)
    timings["total"] = time.time() - t0
    return out


def target_info(unlearn: Mapping[str, Any] | None = None, benchmark: str = "muse-news") -> dict[str, Any]:
    """Worker job: prepare (cached) a MUSE/WMDP setting and report the target's and the retain
    oracle's metrics and fitness on the search and report parts; same shape as
    `search.evaluate.target_info`: {data, paths, parts, target: {part: {summary, fitness}},
    retain: {...}, target_utility, seconds}."""
    t0 = time.time()
    spec = _runnable(benchmark)
    options = dict(unlearn or {})
    prepared = spec.prepare(options)  # type: ignore[misc]
    fraction = _fraction(options)
    out: dict[str, Any] = {"data": spec.name, "paths": {"target": str(prepared.target),
                                                        "retain": str(prepared.retain) if prepared.retain else None},
                           "parts": {}, "target": {}, "retain": {}}
    for part in ("search", "report"):
        ref = spec.reference(prepared, part, fraction)  # type: ignore[misc]
        out["parts"][part] = {"fraction": fraction}
        for name in ("target", "retain"):
            s = ref.get(name)
            if s is None:
                continue
            if spec.name == "wmdp-synthetic":
                s = {**s, "acc_wmdp_target": ref["target"]["acc_wmdp"], "acc_mmlu_target": ref["target"]["acc_mmlu"]}
            out[name][part] = {"summary": s, "fitness": spec.fitness(s, ref["target"])}
    if not out["retain"]:
        del out["retain"]
    out["target_utility"] = out["target"]["search"]["summary"][spec.utility_key]
    out["seconds"] = time.time() - t0
    return out


def unlearn_and_evaluate(benchmark: str, candidate: Candidate, *, options: Mapping[str, Any] | None = None,
                         part: str = "all", seed: int | None = None, train: Mapping[str, Any] | None = None,
                         loss: Mapping[str, Any] | None = None, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Convenience: prepare `benchmark` (cached) and run one candidate on it in this process;
    returns ``{"summary", "fitness", "results", "train", "target", "retain"}`` (target/retain =
    the reference summaries on the same part)."""
    spec = _runnable(benchmark)
    prepared = spec.prepare(options)  # type: ignore[misc]
    fraction = _fraction(options)
    res = spec.unlearn_and_evaluate(prepared, candidate, part=part, fraction=fraction,  # type: ignore[misc]
                                    train={**dict((options or {}).get("train") or {}), **dict(train or {})},
                                    loss=loss, seed=seed, run_dir=run_dir)
    res.update(spec.reference(prepared, part, fraction))  # type: ignore[misc]
    return res
