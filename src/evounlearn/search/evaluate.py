"""Trusted job functions that evaluate one candidate inside an isolated worker (SPEC 2.4 item 6).

The driver submits `evaluate_candidate(...)` through an `executor.Executor`; generated code is only
checked, compiled and run here, in the worker process. One job = one training run:

1. the loss program is validated again (`validate.validate_source`: whitelist, probe tensors);
2. its self-contained text is written to `RUN_DIR/loss.py` and the run's settings to
   `RUN_DIR/unlearn_config.yaml`; the run is `training.unlearn.run_unlearning` with method
   `evolved` built from exactly these two files, so
   `evounlearn unlearn --method evolved --loss-file RUN_DIR/loss.py --config RUN_DIR/unlearn_config.yaml`
   reproduces it (same seed, same config, same numbers);
3. staged evaluation (multi-fidelity, successive-halving style): with `stage1_epochs` k smaller
   than the run's epochs, the model is evaluated after epoch k of its own schedule; the stage-1
   fitness is ranked against `promote_cutoff` (the driver's quantile of the stage-1 scores of the
   candidates evaluated so far) and a candidate below it stops there (not trained to full length);
   the others continue and are evaluated again at the end. The evaluation in between does not
   change the training (no randomness, no state), so the full-length result equals a plain run;
4. metrics, the loss history and timings come back as a plain dict; the model and checkpoint
   folders are deleted unless `keep_model` (the run folder keeps config, loss, train.json,
   results.json).

Baselines go through the same job with `method` (a registered method) instead of `code`.

`target_info` prepares (or fetches from cache) the benchmark and evaluates the target model and
the retain oracle on both parts of the forget split with the search's evaluation settings.

`fake_evaluate_candidate` / `fake_target_info` are cheap stand-ins with the same contract for
tests: the "metrics" are a deterministic function of the loss's probe values (no training).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .fitness import compute_fitness, rank_score, utility

__all__ = [
    "EVALUATORS",
    "EvaluatorJobs",
    "evaluate_candidate",
    "fake_evaluate_candidate",
    "fake_target_info",
    "target_info",
]


@dataclass(frozen=True)
class EvaluatorJobs:
    """The job paths of one evaluator: candidate evaluation and target information."""

    evaluate: str
    target: str


EVALUATORS: dict[str, EvaluatorJobs] = {
    "tofu": EvaluatorJobs("evounlearn.search.evaluate:evaluate_candidate", "evounlearn.search.evaluate:target_info"),
    "fake": EvaluatorJobs(
        "evounlearn.search.evaluate:fake_evaluate_candidate", "evounlearn.search.evaluate:fake_target_info"
    ),
}


STAGE_SHORT = 1  # stopped after the first stage (not promoted)
STAGE_FULL = 2  # trained to full length


class _StageStop(Exception):
    """Raised from the stage-1 evaluation hook to stop a candidate below the cutoff."""


def _short(e: BaseException, limit: int = 400) -> str:
    msg = " ".join(str(e).split())
    if len(msg) > limit:
        msg = msg[:limit] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def run_settings(unlearn: Mapping[str, Any] | None, *, seed: int, forget_part: str,
                 epochs: int | None) -> dict[str, Any]:
    """The UnlearnConfig fields of one run (written as unlearn_config.yaml)."""
    extra: dict[str, Any] = {"forget_part": forget_part, "train": {"seed": int(seed)}}
    if epochs is not None:
        extra["train"]["epochs"] = int(epochs)
    data = _deep_merge(dict(unlearn or {}), extra)
    data.pop("run_dir", None)
    data.pop("method", None)
    return data


def _pick_record(records: list[dict[str, Any]], function: str) -> dict[str, Any] | None:
    for r in records:
        if not function or r.get("name") == function:
            return r
    return records[0] if records else None


def _loss_history_from_checkpoint(run_dir: Path) -> tuple[list[float], list[float]]:
    p = run_dir / "checkpoint" / "state.pt"
    if not p.exists():
        return [], []
    try:
        import torch

        state = torch.load(p, map_location="cpu", weights_only=False).get("state", {})
        return list(state.get("loss_history", [])), list(state.get("epoch_losses", []))
    except Exception:  # a damaged checkpoint only loses the curve
        return [], []


@contextlib.contextmanager
def _captured_output(path: Path | None) -> Iterator[None]:
    """Progress bars, warnings and logs of a job go to its own log file, not the driver's terminal."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh, contextlib.redirect_stderr(fh), contextlib.redirect_stdout(fh):
        yield


def _logged_in_run_dir(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Run a job with its output (progress bars, warnings) sent to RUN_DIR/job.log."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> dict[str, Any]:
        run_dir = kwargs.get("run_dir", args[0] if args else None)
        with _captured_output(Path(run_dir) / "job.log" if run_dir else None):
            return fn(*args, **kwargs)

    return wrapper


@_logged_in_run_dir
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
    benchmark: str = "generated",
    target_utility: float | None = None,
    utility_floor: float = 0.9,
    keep_model: bool = False,
) -> dict[str, Any]:
    """Train and evaluate one candidate (loss program `code`, or registered `method`); see the
    module docstring. Returns {ok, error, stage, promoted, stages, summary, fitness, loss_history,
    epoch_losses, epochs, timings, run_dir}; never raises for what the candidate does."""
    from ..errors import EvoUnlearnError
    from ..training.unlearn import build_config, run_unlearning

    t0 = time.time()
    rd = Path(run_dir)
    rd.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"ok": False, "error": None, "stage": 0, "promoted": None, "stages": [],
                           "summary": None, "fitness": float("-inf"), "loss_history": [], "epoch_losses": [],
                           "epochs": epochs, "timings": {}, "run_dir": str(rd)}
    timings: dict[str, float] = {"validate": 0.0, "train": 0.0, "eval": 0.0}
    out["timings"] = timings
    overrides = [f"run_dir={rd}"]
    if code is not None:
        from ..sandbox import validate_source

        tv = time.time()
        records = validate_source(code, interface, function=function or None)
        timings["validate"] = time.time() - tv
        rec = _pick_record(records, function)
        if rec is None or not rec.get("ok"):
            out["error"] = f"validation: {rec.get('reason') if rec else 'no loss function'}"
            timings["total"] = time.time() - t0
            return out
        (rd / "loss.py").write_text(rec.get("program") or code)
        method = "evolved"
        # exactly what `evounlearn unlearn --method evolved --loss-file ... --config ...` does:
        # the program holds one candidate, whose signature gives the interface
        overrides.append(f"loss.loss_file={rd / 'loss.py'}")
    if not method:
        out["error"] = "nothing to evaluate (neither code nor method)"
        return out
    settings = run_settings(unlearn, seed=seed, forget_part=forget_part, epochs=epochs)
    (rd / "unlearn_config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    stage: dict[str, Any] = {"done": False, "summary": None, "seconds": 0.0, "fitness": None, "score": None}

    def hook(model: Any, evaluate: Any) -> dict[str, Any]:
        if stage["done"]:
            return {}
        stage["done"] = True
        te = time.time()
        s = evaluate(model)
        stage["seconds"] = time.time() - te
        fit = compute_fitness(benchmark, s)
        stage.update(summary=s, fitness=fit,
                     score=rank_score(fit, utility(benchmark, s), target_utility, utility_floor))
        if promote_cutoff is not None and stage["score"] < promote_cutoff:
            raise _StageStop()
        return s

    try:
        cfg = build_config(method, str(rd / "unlearn_config.yaml"), overrides)
        out["epochs"] = cfg.train.epochs
        staged = 0 < int(stage1_epochs) < cfg.train.epochs
        if staged:
            cfg.train.eval_every_epochs = int(stage1_epochs)
        record = run_unlearning(cfg, on_epoch_eval=hook if staged else None)
        out["summary"] = record.get("summary")
        out["loss_history"] = record.get("loss_history", [])
        out["epoch_losses"] = record.get("epoch_losses", [])
        timings["train"] = float(record.get("seconds", 0.0)) - stage["seconds"]
        timings["eval"] = float(record.get("eval_seconds", 0.0)) + stage["seconds"]
        out["stage"] = STAGE_FULL
        out["promoted"] = True if staged else None
        out["fitness"] = compute_fitness(benchmark, out["summary"])
        out["ok"] = math.isfinite(out["fitness"])
        if not out["ok"]:
            out["error"] = "evaluation gave no usable metrics"
    except _StageStop:
        out.update(ok=True, stage=STAGE_SHORT, promoted=False)
        out["loss_history"], out["epoch_losses"] = _loss_history_from_checkpoint(rd)
        timings["eval"] = stage["seconds"]
    except EvoUnlearnError as e:
        out["error"] = _short(e)
    except Exception as e:  # the candidate's own failure (runtime error in the loss, ...)
        out["error"] = _short(e)
    if stage["summary"] is not None:
        out["stages"].append({"stage": 1, "epochs": int(stage1_epochs), "summary": stage["summary"],
                              "fitness": stage["fitness"], "score": stage["score"]})
    if not keep_model:
        for sub in ("model", "adapter", "checkpoint", "checkpoint.tmp"):
            shutil.rmtree(rd / sub, ignore_errors=True)
    timings["total"] = time.time() - t0
    return out


def target_info(unlearn: Mapping[str, Any] | None = None, benchmark: str = "generated",
                log_file: str | None = None) -> dict[str, Any]:
    """Prepare (cached) the benchmark; evaluate the target and the retain oracle on the search
    and report parts with the search's evaluation settings. Runs in a worker."""
    with _captured_output(Path(log_file) if log_file else None):
        return _target_info(unlearn, benchmark)


def _target_info(unlearn: Mapping[str, Any] | None, benchmark: str) -> dict[str, Any]:
    from ..config import apply_overrides
    from ..data import tofu
    from ..data.prompting import PromptFormatter
    from ..evaluation.tofu_eval import TofuEvaluator, load_results
    from ..models.loading import load_model_and_tokenizer
    from ..training.prepare import prepare, resolve_data
    from ..training.unlearn import UnlearnConfig, _group, forget_part_indices

    t0 = time.time()
    cfg = UnlearnConfig()
    apply_overrides(cfg, dict(unlearn or {}))
    cfg.prepare.data, cfg.prepare.forget_split = cfg.data, cfg.forget_split
    import torch

    # Training the target and the retain oracle (first use only) gets every core, as in
    # `evounlearn prepare`; the evaluations then use the runs' thread count.
    torch.set_num_threads(cfg.prepare.threads or os.cpu_count() or 1)
    if cfg.model:
        source, target_path = resolve_data(cfg.prepare), cfg.model
        retain_path = None
        retain_results = load_results(cfg.retain_results) if cfg.retain_results else None
    else:
        p = prepare(cfg.prepare)
        source, target_path, retain_path = p.data, str(p.target), str(p.retain)
        retain_results = load_results(cfg.retain_results or p.retain_results)
    torch.set_num_threads(cfg.threads or 1)
    split = tofu.check_forget_split(cfg.forget_split)
    n = len(tofu.load_split(split, source))
    models = {"target": target_path}
    if retain_path:
        models["retain"] = retain_path
    out: dict[str, Any] = {"data": source, "paths": dict(models), "parts": {}}
    for name, path in models.items():
        model, tok = load_model_and_tokenizer(path, dtype="float32")
        model.eval()
        fmt = PromptFormatter(tok, max_length=cfg.train.max_length)
        out[name] = {}
        for part in ("search", "report"):
            idx = forget_part_indices(n, part, cfg.search_fraction, group=_group(source, split))
            out["parts"][part] = idx
            ev = TofuEvaluator(source, split, cfg.eval, forget_indices=idx)
            summary = ev.evaluate(model, tok, retain_results=retain_results, fmt=fmt)["summary"]
            out[name][part] = {"summary": summary, "fitness": compute_fitness(benchmark, summary)}
    out["target_utility"] = utility(benchmark, out["target"]["search"]["summary"])
    out["seconds"] = time.time() - t0
    return out


# ----------------------------------------------------------------------------------------------
# fake evaluator (tests): same contract, no training


def _unit(*parts: Any) -> float:
    h = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


FAKE_FAIL_MARKER = "0.777"  # a loss containing this constant "fails during training"


def fake_metrics(probe_values: list[float], seed: int, part: str, key: str, stage: int = 2) -> dict[str, float]:
    """Deterministic stand-in metrics from a loss's probe values (its behaviour)."""
    v = [float(x) for x in probe_values] + [0.0, 0.0, 0.0]
    base = math.tanh(abs(v[0]) / 10.0)
    mu = 0.6 + 0.3 * _sig(2.0 * math.sin(v[1] + v[2])) + 0.01 * (_unit(key, seed, part, "mu") - 0.5)
    rouge = 0.6 * (1.0 - base) * _sig(math.cos(v[1])) + 0.01 * _unit(key, seed, part, "r")
    prob = 0.5 * _sig(v[2] / 3.0 - base) + 0.01 * _unit(key, seed, part, "p")
    if stage == 1:  # less trained: forgets less
        rouge, prob = min(1.0, rouge + 0.1), min(1.0, prob + 0.1)
    return {"model_utility": mu, "forget_rouge": rouge, "forget_prob": prob,
            "forget_quality": _unit(key, seed, part, "fq") * 0.1}


def fake_evaluate_candidate(
    run_dir: str,
    code: str | None = None,
    method: str | None = None,
    function: str = "",
    interface: str = "faithful",
    epochs: int | None = None,
    seed: int = 0,
    forget_part: str = "search",
    stage1_epochs: int = 0,
    promote_cutoff: float | None = None,
    benchmark: str = "generated",
    target_utility: float | None = None,
    utility_floor: float = 0.9,
    sleep_s: float = 0.0,
    **_: Any,
) -> dict[str, Any]:
    """Same contract as `evaluate_candidate`; fitness is a function of the loss's probe values."""
    t0 = time.time()
    rd = Path(run_dir)
    rd.mkdir(parents=True, exist_ok=True)
    epochs = int(epochs or 5)
    if code is not None:
        from ..sandbox import validate_source

        rec = _pick_record(validate_source(code, interface, function=function or None), function)
        if rec is None or not rec.get("ok"):
            return {"ok": False, "error": f"validation: {rec.get('reason') if rec else 'no loss'}", "stage": 0,
                    "stages": [], "summary": None, "fitness": float("-inf"), "timings": {"total": 0.0},
                    "loss_history": [], "epoch_losses": [], "epochs": epochs, "run_dir": str(rd)}
        if FAKE_FAIL_MARKER in code:
            time.sleep(sleep_s)
            raise RuntimeError("fake training failure (loss contains the failure marker)")
        probe, key = list(rec.get("probe_values") or []), rec.get("fingerprint") or code
        (rd / "loss.py").write_text(rec.get("program") or code)
    else:
        u = _unit("method", method)
        probe, key = [10 * u - 5, 3 * u, -2 * u], f"method:{method}"
    if sleep_s:
        time.sleep(sleep_s)
    stages: list[dict[str, Any]] = []
    staged = 0 < int(stage1_epochs) < epochs
    if staged:
        s1 = fake_metrics(probe, seed, forget_part, key, stage=1)
        f1 = compute_fitness(benchmark, s1)
        score = rank_score(f1, s1["model_utility"], target_utility, utility_floor)
        stages.append({"stage": 1, "epochs": int(stage1_epochs), "summary": s1, "fitness": f1, "score": score})
        if promote_cutoff is not None and score < promote_cutoff:
            return {"ok": True, "error": None, "stage": STAGE_SHORT, "promoted": False, "stages": stages, "summary": None,
                    "fitness": f1, "loss_history": [1.0], "epoch_losses": [1.0], "epochs": epochs,
                    "timings": {"total": time.time() - t0}, "run_dir": str(rd)}
    summary = fake_metrics(probe, seed, forget_part, key)
    fit = compute_fitness(benchmark, summary)
    return {"ok": True, "error": None, "stage": STAGE_FULL, "promoted": True if staged else None,
            "stages": stages, "summary": summary, "fitness": fit,
            "loss_history": [1.0, 0.5], "epoch_losses": [1.0, 0.5], "epochs": epochs,
            "timings": {"train": 0.0, "eval": 0.0, "total": time.time() - t0}, "run_dir": str(rd)}


def fake_target_info(unlearn: Mapping[str, Any] | None = None, benchmark: str = "generated",
                     **_: Any) -> dict[str, Any]:
    """Target and retain stand-ins for the fake evaluator (target MU 0.8)."""
    target = {"model_utility": 0.8, "forget_rouge": 1.0, "forget_prob": 0.99, "forget_quality": 1e-6}
    retain = {"model_utility": 0.8, "forget_rouge": 0.2, "forget_prob": 0.05, "forget_quality": 1.0}
    parts = {p: {"summary": target, "fitness": compute_fitness(benchmark, target)} for p in ("search", "report")}
    rparts = {p: {"summary": retain, "fitness": compute_fitness(benchmark, retain)} for p in ("search", "report")}
    return {"data": "fake", "paths": {}, "parts": {}, "target": parts, "retain": rparts,
            "target_utility": 0.8, "seconds": 0.0}
