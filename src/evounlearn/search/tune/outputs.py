"""The outputs of a tune: leaderboard.json / .md (trials, finalists, forget quality and every
fitness side by side) and best_config.yaml.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from ..points import MethodPoint, PointReport
from .config import TuneConfig
from .space import SearchSpace
from .study import import_optuna, json_ready


class TuneRun(Protocol):
    """What the outputs read of a tune (a `Tuner` after its run)."""

    cfg: TuneConfig
    run_dir: Path
    study: Any  # the Optuna study
    space: SearchSpace | None

    def charged(self) -> int: ...

    def point_reports(self) -> list[PointReport]: ...


def side_by_side(summary: Mapping[str, Any] | None, names: Sequence[str]) -> dict[str, float | None]:
    """Forget quality and every fitness of a run's summary (``fitness_<name>``, as the candidate job
    reports them): the columns evolve's leaderboard shows too, whatever fitness was searched."""
    summary = summary or {}
    out: dict[str, float | None] = {}
    for key in ("forget_quality", *(f"fitness_{n}" for n in names)):
        v = summary.get(key)
        v = v.get("agg") if isinstance(v, Mapping) else v
        out[key] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    return out


def trial_rows(tuner: TuneRun, names: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every finished trial, completed ones by search score (best first), then the failed ones;
    `names`: the benchmark's fitnesses, shown side by side with forget quality (`side_by_side`)."""
    optuna = import_optuna()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    rows = []
    for t in tuner.study.get_trials(deepcopy=False, states=states):
        a, ok = t.user_attrs, t.state == optuna.trial.TrialState.COMPLETE
        rows.append({"trial": t.number, "state": t.state.name.lower(), "params": dict(t.params),
                     "score": t.value if ok else None, "fitness": a.get("fitness"), "utility": a.get("utility"),
                     **side_by_side(a.get("summary"), names),
                     "charged": bool(a.get("charged", False)), "error": a.get("error"),
                     "seconds": a.get("seconds"), "run_dir": a.get("run_dir")})
    return sorted(rows, key=lambda r: (r["score"] is None, -(r["score"] or 0.0), r["trial"]))


def best_config(tuner: TuneRun, point: MethodPoint) -> dict[str, Any]:
    """What `evounlearn unlearn --method NAME --config best_config.yaml` reads: the run settings
    with the tuned loss params, lr and epochs (the run itself on the whole forget set)."""
    settings = {k: v for k, v in tuner.cfg.unlearn.items() if k not in ("loss", "train", "forget_part", "run_dir")}
    train = {**point.train, **({"epochs": point.epochs} if point.epochs is not None else {})}
    return {"method": point.method, **settings, "loss": dict(point.loss), "train": train}


def _finalist_row(r: PointReport) -> dict[str, Any]:
    mean, sd = r.report_mean_sd
    assert r.search is not None
    return {"trial": int(r.label), "search_score": r.search.score, "search_fitness": r.search.fitness,
            "report_fitness_mean": mean, "report_fitness_sd": sd, "report_runs": len(r.report),
            "report_ok": sum(1 for x in r.report if x.ok), "loss": r.point.loss, "train": r.point.train,
            "epochs": r.point.epochs}


def write_outputs(tuner: TuneRun) -> dict[str, Any]:
    import json

    import yaml

    from ...benchmarks import get_benchmark
    from ...files import atomic_write_text as write_text

    assert tuner.space is not None
    reports = tuner.point_reports()
    finalist_ids = set(tuner.study.user_attrs.get("finalists") or [])
    names = list(get_benchmark(tuner.cfg.benchmark).all_fitnesses())
    data: dict[str, Any] = {
        "method": tuner.space.method, "benchmark": tuner.cfg.benchmark, "budget": tuner.cfg.budget,
        "fitness": tuner.cfg.fitness, "fitnesses": names,
        "trained": tuner.charged(), "seed": tuner.cfg.seed, "utility_floor": tuner.cfg.utility_floor,
        "target_utility": (tuner.study.user_attrs.get("target") or {}).get("target_utility"),
        "space": [asdict(r) for r in tuner.space.ranges],
        "trials": trial_rows(tuner, names),
        "finalists": [_finalist_row(r) for r in reports if r.label in finalist_ids],
        "best": None,
    }
    if reports:  # the winner: the best search-part trial (the report part stays untouched)
        best = reports[0]
        cfg = best_config(tuner, best.point)
        write_text(tuner.run_dir / "best_config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        path = tuner.run_dir / "best_config.yaml"  # absolute: the command works from any directory
        data["best"] = {"trial": int(best.label), "config": cfg, "config_path": str(path),
                        "command": f"evounlearn unlearn --benchmark {tuner.cfg.benchmark} --method {best.point.method} "
                                   f"--config {shlex.quote(str(path))}"}
    write_text(tuner.run_dir / "leaderboard.json", json.dumps(_json_ready_deep(data), indent=1, default=str))
    write_text(tuner.run_dir / "leaderboard.md", leaderboard_markdown(data))
    return data


def _json_ready_deep(v: Any) -> Any:
    if isinstance(v, list):
        return [_json_ready_deep(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_ready_deep(x) for k, x in v.items()}
    return json_ready(v)


def format_number(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.{digits}f}"
    return str(v)


def leaderboard_markdown(data: Mapping[str, Any]) -> str:
    names = [r["name"] for r in data["space"]]
    # forget quality and every fitness side by side (the searched one marked), as evolve's table
    sides = ["forget_quality", *(f"fitness_{n}" for n in data.get("fitnesses") or [])]
    heads = ["forget quality", *(f"{n} fitness" + (" (searched)" if n == data.get("fitness") else "")
                                 for n in data.get("fitnesses") or [])]
    lines = [f"# tune: {data['method']} on {data['benchmark']}", "",
             f"{data['trained']} of {data['budget']} trials trained; fitness ({data.get('fitness') or 'default'}) "
             f"on the search part, score = fitness (- 2 below the utility floor {data['utility_floor']} x target "
             f"{format_number(data['target_utility'])}).", "", "## Finalists (report part)", "",
             "| trial | search score | report fitness (mean +- sd) | runs |", "|---|---|---|---|"]
    for f in data["finalists"]:
        lines.append(f"| {f['trial']} | {format_number(f['search_score'])} | {format_number(f['report_fitness_mean'])} +- "
                     f"{format_number(f['report_fitness_sd'])} | {f['report_ok']}/{f['report_runs']} |")
    lines += ["", "## Trials (by search score)", "",
              "| trial | score | fitness | utility | " + " | ".join([*heads, *names]) + " | state |",
              "|---" * (len(names) + len(heads) + 5) + "|"]
    for r in data["trials"]:
        vals = " | ".join([*(format_number(r.get(k)) for k in sides), *(format_number(r["params"].get(n)) for n in names)])
        lines.append(f"| {r['trial']} | {format_number(r['score'])} | {format_number(r['fitness'])} | {format_number(r['utility'])} | "
                     f"{vals} | {r['state']} |")
    if data.get("best"):
        best = data["best"]
        command = best.get("command") or f"evounlearn unlearn --method {data['method']} --config {best['config_path']}"
        lines += ["", f"Best: trial {best['trial']} -> `{best['config_path']}`; unlearn and evaluate on the whole "
                  f"forget set with it: `{command}`."]
    return "\n".join(lines) + "\n"
