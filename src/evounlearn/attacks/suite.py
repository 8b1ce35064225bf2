"""Running recovery attacks on a TOFU-shaped benchmark's model and scoring what came back.

`run_attacks(model, ...)` applies each attack to a copy of the model, evaluates the copy with the
caller's `evaluate(model, forget_indices) -> results` (the TOFU evaluator on the run's forget rows;
for `relearn` only the RTT rows not trained on), and reports per attack:

- `summary`: the attacked model's summary (forget metrics, holdout metrics, MU: `utility_after`);
- `recovery`: per forget metric (`RECOVERY_METRICS`), `(after - unlearned) / (target - unlearned)`
  on the same rows, where `unlearned` and `target` are the per-row means of the model's own
  evaluation before the attack and of the target's saved results; NaN with a `reasons` entry when
  the target and the unlearned model are within `MIN_GAP` (0.01) of each other (nothing was forgotten:
  recovery undefined, never inf); `recovery_agg` = the mean of the finite ones;
- with the retain oracle (`oracle=`): the oracle attacked the same way, `oracle.floor` = its own
  recovery `(oracle_after - oracle) / (target - oracle)` (what the attack teaches a model that never
  saw the data) and `recovery_vs_oracle` = `(after - oracle_after) / (target - oracle_after)` (0 =
  the attacked model knows no more than the attacked oracle).

An attack's evaluation is cached under `<cache dir>/attacks/` by the attacked model's weights
(`fingerprint`: a hash of every parameter), the attack's options, the rows scored and the caller's
evaluation key, as `benchmarks.references` caches the target's evaluations: the cache only saves
time (unreadable entries are recomputed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import ArtifactError, atomic_write_json, read_json
from . import ATTACKS, attack_options
from .config import AttacksConfig, FinetuneOptions, QuantizeOptions, RelearnOptions

log = logging.getLogger(__name__)

RECOVERY_METRICS = ("forget_rouge", "forget_prob")
# |target - unlearned| below this (one point on a [0, 1] metric): recovery undefined (NaN with a
# reason); a smaller gap would turn a metric's noise into recoveries of +-30
MIN_GAP = 0.01
_VERSION = 1  # bump when what an attack's evaluation computes changes without a change of its inputs
SEP = "@"  # summary keys of an attacked model: "<metric>@<attack>"

Evaluate = Callable[[Any, list[int]], dict[str, Any]]


@dataclass
class AttackData:
    """What the attacks train on and score: the forget split's rows, the part evaluated (split
    indices), related rows (same kind, not forget) and unrelated rows (general knowledge)."""

    forget: list[dict[str, Any]]
    part: list[int]
    related: list[dict[str, Any]] = field(default_factory=list)
    unrelated: list[dict[str, Any]] = field(default_factory=list)


def tofu_attack_data(source: str, split: str, part: Sequence[int] | None) -> AttackData:
    """The TOFU-shaped benchmark's rows: related = the retain split (other people, same kinds of
    facts), unrelated = the general-knowledge rows (real authors, world facts)."""
    from ..data import tofu

    forget = tofu.load_split(split, source)
    related = tofu.load_split(tofu.FORGET_TO_RETAIN[split], source)
    unrelated = [r for s in ("real_authors", "world_facts") for r in tofu.load_split(s, source)]
    return AttackData(forget, list(range(len(forget))) if part is None else list(part), related, unrelated)


def rtt_split(part: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(rows trained on, rows scored) of the forget part: a seeded shuffle, the first `fraction`
    trained on (at least one row each side)."""
    if len(part) < 2:
        raise ConfigError(f"relearn: the forget part has {len(part)} row(s); the RTT split needs 2 or more")
    order = list(part)
    random.Random(seed).shuffle(order)
    k = min(len(order) - 1, max(1, round(fraction * len(order))))
    return sorted(order[:k]), sorted(order[k:])


def _file_rows(path: str) -> list[dict[str, Any]]:
    from ..data import tofu

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"attack text file {path} does not exist")
    rows = tofu.read_records(p)
    bad = [i for i, r in enumerate(rows) if not isinstance(r, dict) or "question" not in r or "answer" not in r]
    if bad or not rows:
        raise ConfigError(f"{path}: attack rows need 'question' and 'answer' (row {bad[0] if bad else 0})")
    return rows


# ------------------------------------------------------------------------------------------------
# the attacks: (model, fmt, options, data) -> (new model, forget rows to score, info)


def _noop(model: Any, fmt: Any, opts: Any, data: AttackData) -> tuple[Any, list[int], dict[str, Any]]:
    import copy

    return copy.deepcopy(model), list(data.part), {}


def _quantize(model: Any, fmt: Any, opts: QuantizeOptions, data: AttackData) -> tuple[Any, list[int], dict[str, Any]]:
    from .quantize import quantize_model, quantized_modules

    return quantize_model(model, opts), list(data.part), {"modules": len(quantized_modules(model, opts.skip))}


def _relearn(model: Any, fmt: Any, opts: RelearnOptions, data: AttackData) -> tuple[Any, list[int], dict[str, Any]]:
    from .training import train_copy

    train_idx, score_idx = rtt_split(data.part, opts.fraction, opts.seed)
    if opts.source == "forget":
        rows = [data.forget[i] for i in train_idx]
        scored = score_idx
    else:  # related rows: the whole part is scored
        pool = _file_rows(opts.file) if opts.file else data.related
        n = opts.rows or len(train_idx)
        rows = pool[:n]
        scored = list(data.part)
    enc = [fmt.encode(r["question"], r["answer"]) for r in rows]
    out, rec = train_copy(model, fmt, enc, lr=opts.lr, batch_size=opts.batch_size, seed=opts.seed,
                          steps=opts.steps, schedule=opts.schedule)
    return out, scored, {"train_rows": train_idx if opts.source == "forget" else len(rows), **rec}


def _finetune(model: Any, fmt: Any, opts: FinetuneOptions, data: AttackData) -> tuple[Any, list[int], dict[str, Any]]:
    from .training import train_copy

    pool = _file_rows(opts.file) if opts.file else data.unrelated
    rows = random.Random(opts.seed).sample(pool, min(opts.rows, len(pool)))
    enc = [fmt.encode(r["question"], r["answer"]) for r in rows]
    out, rec = train_copy(model, fmt, enc, lr=opts.lr, batch_size=opts.batch_size, seed=opts.seed,
                          epochs=opts.epochs, schedule="constant", lora=opts.lora, lora_r=opts.lora_r,
                          lora_alpha=opts.lora_alpha)
    return out, list(data.part), {"train_rows": len(rows), **rec}


_ATTACK_FNS: dict[str, Callable[..., tuple[Any, list[int], dict[str, Any]]]] = {
    "noop": _noop, "quantize": _quantize, "relearn": _relearn, "finetune": _finetune}


def attack(name: str, model: Any, fmt: Any, data: AttackData, cfg: AttacksConfig | None = None
           ) -> tuple[Any, list[int], dict[str, Any]]:
    """Attack `name` on a copy of `model`: (the attacked copy, the forget rows to score, info)."""
    opts = attack_options(name, cfg)
    return _ATTACK_FNS[ATTACKS[name].kind](model, fmt, opts, data)


# ------------------------------------------------------------------------------------------------
# scores


def recovery(after: float | None, unlearned: float | None, target: float | None,
             min_gap: float = MIN_GAP) -> tuple[float, str | None]:
    """`(after - unlearned) / (target - unlearned)` and None, or NaN and the reason it is undefined."""
    if after is None or unlearned is None or target is None:
        return math.nan, "a value is missing"
    vals = (float(after), float(unlearned), float(target))
    if not all(math.isfinite(v) for v in vals):
        return math.nan, "a value is not finite"
    a, u, t = vals
    if abs(t - u) < min_gap:
        return math.nan, f"target and unlearned model agree (|{t:.4g} - {u:.4g}| < {min_gap:g}): nothing to recover"
    return (a - u) / (t - u), None


def row_mean(results: Mapping[str, Any], metric: str, rows: Sequence[int]) -> float | None:
    """The mean of a metric's per-row values over `rows` (split indices); None when any is missing."""
    entry = (results.get("metrics") or {}).get(metric)
    vals = (entry or {}).get("values") if isinstance(entry, Mapping) else None
    if not vals:
        return None
    got = [vals.get(str(i)) for i in rows]
    if not got or any(v is None for v in got):
        return None
    return float(sum(got) / len(got))


def _finite_mean(xs: Sequence[float]) -> float | None:
    ok = [x for x in xs if x is not None and math.isfinite(x)]
    return float(sum(ok) / len(ok)) if ok else None


def _recoveries(after: Mapping[str, Any], base: Mapping[str, Any], target: Mapping[str, Any] | None,
                rows: Sequence[int]) -> tuple[dict[str, float | None], dict[str, str], float | None]:
    rec: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    for m in RECOVERY_METRICS:
        if target is None:
            rec[m], reasons[m] = None, "no target results"
            continue
        v, why = recovery(row_mean(after, m, rows), row_mean(base, m, rows), row_mean(target, m, rows))
        rec[m] = None if math.isnan(v) else v
        if why:
            reasons[m] = why
    return rec, reasons, _finite_mean([v for v in rec.values() if v is not None])


# ------------------------------------------------------------------------------------------------
# cache


def fingerprint(model: Any) -> str:
    """A hash of every parameter and buffer of the model (names, shapes, dtypes, bytes)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def _slim(results: Mapping[str, Any]) -> dict[str, Any]:
    """What an attack keeps of an evaluation: the summary and the recovery metrics' per-row values."""
    metrics = results.get("metrics") or {}
    return {"summary": dict(results.get("summary") or {}),
            "metrics": {m: {"agg": metrics[m].get("agg"), "values": metrics[m].get("values")}
                        for m in RECOVERY_METRICS if isinstance(metrics.get(m), Mapping)}}


def _cache_path(root: Path | None, key: dict[str, Any]) -> Path | None:
    if root is None:
        return None
    from ..files import content_hash
    from ..versions import library_versions

    return root / "attacks" / f"{key['attack']}-{content_hash({'v': _VERSION, 'lib': library_versions(), **key}, n=24)}.json"


def attacked_eval(name: str, model: Any, fmt: Any, data: AttackData, cfg: AttacksConfig, evaluate: Evaluate,
                  eval_key: str, cache_root: Path | None) -> dict[str, Any]:
    """{"results": slim evaluation of the attacked copy, "rows": scored rows, "info", "seconds",
    "cached"}; from the cache when the same weights were attacked the same way."""
    opts = attack_options(name, cfg)
    key = {"attack": name, "options": dataclasses.asdict(opts) if opts is not None else {},
           "model": fingerprint(model), "part": list(data.part), "eval": eval_key}
    path = _cache_path(cache_root, key) if cfg.cache else None
    if path is not None and path.is_file():
        try:
            hit = read_json(path, "attack cache")
            return {**hit, "cached": True}
        except (ArtifactError, KeyError, TypeError, ValueError) as e:
            log.info("attack cache %s unreadable (%s): attacking again", path, e)
    t0 = time.time()
    attacked, rows, info = attack(name, model, fmt, data, cfg)
    t_attack = time.time() - t0
    res = _slim(evaluate(attacked, rows))
    out = {"results": res, "rows": rows, "info": info, "seconds": time.time() - t0, "attack_seconds": t_attack}
    del attacked
    if path is not None:
        try:
            atomic_write_json(path, out, default=str)
        except OSError as e:  # a read-only cache only loses time
            log.info("attack cache %s not written (%s)", path, e)
    return {**out, "cached": False}


# ------------------------------------------------------------------------------------------------
# the suite


def run_attacks(model: Any, fmt: Any, names: Sequence[str], data: AttackData, evaluate: Evaluate,
                clean: Mapping[str, Any], *, cfg: AttacksConfig | None = None,
                target: Mapping[str, Any] | None = None, oracle: Any = None,
                oracle_results: Mapping[str, Any] | None = None, eval_key: str = "",
                cache_root: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Every attack of `names` on `model` (see the module docstring). `clean`: the model's own
    results before any attack (per-row values); `target`: the target's results (per-row values;
    None: no recovery); `oracle` (a model) with `oracle_results`: the floor."""
    cfg = cfg or AttacksConfig()
    root = Path(cache_root) if cache_root else None
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        got = attacked_eval(name, model, fmt, data, cfg, evaluate, eval_key, root)
        after, rows = got["results"], got["rows"]
        rec, reasons, agg = _recoveries(after, clean, target, rows)
        entry: dict[str, Any] = {
            "summary": after["summary"], "rows": len(rows), "recovery": rec, "recovery_agg": agg,
            "utility_after": after["summary"].get("model_utility"), "seconds": got["seconds"],
            "cached": got["cached"], "info": got["info"]}
        if reasons:
            entry["reasons"] = reasons
        if oracle is not None and oracle_results is not None:
            og = attacked_eval(name, oracle, fmt, data, cfg, evaluate, eval_key, root)
            floor, f_reasons, f_agg = _recoveries(og["results"], oracle_results, target, og["rows"])
            vs, _, vs_agg = _recoveries(after, og["results"], target, rows)
            entry["oracle"] = {"summary": og["results"]["summary"], "floor": floor, "floor_agg": f_agg,
                               "utility_after": og["results"]["summary"].get("model_utility"),
                               "seconds": og["seconds"], "cached": og["cached"]}
            if f_reasons:
                entry["oracle"]["reasons"] = f_reasons
            entry["recovery_vs_oracle"], entry["recovery_vs_oracle_agg"] = vs, vs_agg
        out[name] = entry
    return out


def flat_summary(attacks: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The attacks as flat summary keys: every after-attack summary value as "<key>@<attack>",
    plus "recovery@<attack>" (and "oracle_floor@<attack>", "recovery_vs_oracle@<attack>")."""
    flat: dict[str, Any] = {}
    for name, e in attacks.items():
        for k, v in (e.get("summary") or {}).items():
            if not k.startswith("fitness_"):
                flat[f"{k}{SEP}{name}"] = v
        flat[f"recovery{SEP}{name}"] = e.get("recovery_agg")
        if "oracle" in e:
            flat[f"oracle_floor{SEP}{name}"] = e["oracle"].get("floor_agg")
            flat[f"recovery_vs_oracle{SEP}{name}"] = e.get("recovery_vs_oracle_agg")
    return flat


def attacked_views(summary: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The summary of each attacked model found in a flat summary ("<key>@<attack>" keys), by attack."""
    views: dict[str, dict[str, Any]] = {}
    for k, v in summary.items():
        if SEP in k:
            key, _, name = k.rpartition(SEP)
            views.setdefault(name, {})[key] = v
    return views
