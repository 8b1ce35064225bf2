"""Outputs of a search, rebuilt from its database at any time (`evounlearn report RUN_DIR`).

- RUN_DIR/leaderboard.md and .json: fitness on the search and report parts (mean and seed
  spread), forget quality, model utility and forget ROUGE on the report part, for the target, the
  retain oracle, the baselines, the finalists and the best other candidates;
- RUN_DIR/best_loss.py: the winner's loss program, usable with
  `evounlearn unlearn --method evolved --loss-file RUN_DIR/best_loss.py --config RUN_DIR/best_config.yaml`
  (best_config.yaml: the search's training and evaluation settings; add `forget_part=report
  train.seed=S` to reproduce a report-part run);
- RUN_DIR/fitness.png: fitness per generation with the baselines' bands;
- the winner's lineage (ancestors with their operators), in the JSON and the text report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from ..benchmarks import passes_floor
from ..benchmarks.base import TargetInfo
from ..reports.tables import fmt_value, table
from .archive import eligible, sort_ranked
from .config import SearchConfig, config_from_dict
from .store import CandidateRow, Store, json_ready

COLUMNS = ["rank", "name", "gen", "operator", "fit_search", "search_std", "fit_report", "report_std", "FQ", "MU",
           "forget_ROUGE", "floor", "seeds"]
HEADERS = {"fit_search": "fitness(search)", "search_std": "±", "fit_report": "fitness(report)", "report_std": "±",
           "forget_ROUGE": "forget ROUGE", "seeds": "seeds s/r"}


def _f(v: Any) -> float | None:
    if v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x


@dataclass
class RunView:
    """What the outputs read from a run's database: its config, target information and rows."""

    cfg: SearchConfig
    target: TargetInfo | None
    status: str | None
    finalists: list[int]
    winner: int | None
    seconds: float
    candidates: list[CandidateRow]
    baselines: list[CandidateRow]

    @classmethod
    def load(cls, store: Store) -> RunView:
        saved = store.get_meta("config") or {}
        info = store.get_meta("target")
        target = None
        if isinstance(info, Mapping):
            known = {f.name for f in fields(TargetInfo)}
            target = TargetInfo(**{"data": "", "paths": {}, "parts": {}, "target": {}, "retain": None,
                                   "target_utility": None, **{k: v for k, v in info.items() if k in known}})
        winner = store.get_meta("winner")
        return cls(config_from_dict(saved), target, store.get_meta("status"),
                   [int(i) for i in store.get_meta("finalists") or []], None if winner is None else int(winner),
                   float(store.get_meta("seconds", 0.0) or 0.0), store.candidates(kind="candidate"),
                   store.candidates(kind="baseline"))

    @property
    def target_utility(self) -> float | None:
        return _f(self.target.target_utility) if self.target else None

    def references(self) -> dict[str, dict[str, Any]]:
        """name -> {part: {summary, fitness}} for the target and the retain oracle (when there is one)."""
        if self.target is None:
            return {}
        out = {"target": self.target.target}
        if self.target.retain:
            out["retain"] = self.target.retain
        return out


def lineage(store: Store, cid: int | None, max_nodes: int = 60) -> list[dict[str, Any]]:
    """The candidate and its ancestors (depth-first, each once): id, depth, generation, operator,
    parents, fitness."""
    out: list[dict[str, Any]] = []
    seen: set[int] = set()

    def visit(i: int, depth: int) -> None:
        if i in seen or len(out) >= max_nodes:
            return
        seen.add(i)
        c = store.candidate(i)
        if c is None:
            return
        out.append({"id": i, "depth": depth, "generation": c.generation, "operator": c.operator,
                    "parents": list(c.parents), "status": c.status,
                    "fitness_search": _f(c.fitness_search), "notes": c.notes or ""})
        for p in c.parents:
            visit(p, depth + 1)

    if cid is not None:
        visit(int(cid), 0)
    return out


def format_lineage(nodes: list[dict[str, Any]]) -> str:
    lines = []
    for n in nodes:
        par = " + ".join(f"#{p}" for p in n["parents"])
        op = n.get("operator") or "?"
        how = f"{op} of {par}" if par else op
        fit = n.get("fitness_search")
        fs = f"fitness {fit:.4f}" if fit is not None and math.isfinite(fit) else f"({n.get('status')})"
        lines.append(f"{'  ' * n['depth']}#{n['id']} (generation {n['generation']}, {how}) {fs}")
    return "\n".join(lines)


def _metric(c: CandidateRow, key: str) -> float | None:
    """A report-part metric (mean over seeds), else the search part's when no report run exists."""
    if c.report_metrics:
        return _f(c.report_metrics.get(key))
    return _f((c.metrics or {}).get(key))


def _row(c: CandidateRow, rank: Any, tu: float | None, floor: float) -> dict[str, Any]:
    util = _f(c.utility_report) if c.utility_report is not None else _f(c.utility_search)
    is_cand = c.kind == "candidate"
    return {
        "rank": rank,
        "id": c.id,
        "kind": c.kind,
        "name": c.name,
        "gen": c.generation if is_cand else "-",
        "operator": c.operator if is_cand else c.method,
        "fit_search": _f(c.fitness_search),
        "search_std": _f(c.fitness_search_std),
        "fit_report": _f(c.fitness_report),
        "report_std": _f(c.fitness_report_std),
        "FQ": _metric(c, "forget_quality"),
        "MU": _metric(c, "model_utility"),
        "forget_ROUGE": _metric(c, "forget_rouge"),
        "floor": "ok" if passes_floor(util, tu, floor) else "below",
        "seeds": f"{c.n_search or 0}/{c.n_report or 0}",
        "status": c.status,
        "stage": c.stage,
        "error": c.error,
    }


def _reference_row(name: str, info: Mapping[str, Any]) -> dict[str, Any]:
    s, r = info.get("search", {}), info.get("report", {})
    rs = r.get("summary", {})
    return {"rank": "-", "name": name, "kind": "reference", "gen": "-", "operator": "-",
            "fit_search": _f(s.get("fitness")), "search_std": None, "fit_report": _f(r.get("fitness")),
            "report_std": None, "FQ": _f(rs.get("forget_quality")), "MU": _f(rs.get("model_utility")),
            "forget_ROUGE": _f(rs.get("forget_rouge")), "floor": "-", "seeds": "-"}


def _rows(store: Store, run: RunView, ranked: list[CandidateRow]) -> list[dict[str, Any]]:
    """The leaderboard: references, baselines, finalists (the winner marked), the best others."""
    tu, floor = run.target_utility, run.cfg.utility_floor
    rank_of = {c.id: i + 1 for i, c in enumerate(ranked)}
    refs = run.references()
    rows = [_reference_row(name if name == "target" else "retain (oracle)", refs[name])
            for name in ("target", "retain") if name in refs]
    rows += [_row(b, "-", tu, floor) for b in run.baselines]
    shown = set()
    for i in sorted(run.finalists, key=lambda i: rank_of.get(i, len(rank_of) + 1)):
        c = store.candidate(i)
        if c:
            r = _row(c, rank_of.get(i, "-"), tu, floor)
            r["name"] = r["name"] + (" (winner)" if run.winner == i else " (finalist)")
            rows.append(r)
            shown.add(i)
    rows += [_row(c, rank_of.get(c.id, "-"), tu, floor) for c in ranked[:10] if c.id not in shown]
    return rows


def _baseline_stats(run: RunView) -> dict[str, dict[str, Any]]:
    return {str(b.label): {
        "fitness_report_mean": _f(b.fitness_report), "fitness_report_std": _f(b.fitness_report_std),
        "fitness_search_mean": _f(b.fitness_search), "fitness_search_std": _f(b.fitness_search_std),
        "model_utility": _f((b.report_metrics or {}).get("model_utility")),
        "forget_quality": _f((b.report_metrics or {}).get("forget_quality")),
        "seeds": b.n_report,
    } for b in run.baselines}


def _winner_info(store: Store, run: RunView) -> dict[str, Any] | None:
    win = store.candidate(run.winner) if run.winner is not None else None
    if win is None:
        return None
    rm = win.report_metrics or {}
    return {
        "id": win.id, "generation": win.generation, "operator": win.operator,
        "fitness_search": _f(win.fitness_search), "fitness_search_std": _f(win.fitness_search_std),
        "fitness_report": _f(win.fitness_report), "fitness_report_std": _f(win.fitness_report_std),
        "forget_quality": _f(rm.get("forget_quality")), "model_utility": _f(rm.get("model_utility")),
        "forget_rouge": _f(rm.get("forget_rouge")), "forget_prob": _f(rm.get("forget_prob")),
        "epochs": win.epochs, "code": win.code,
        "lineage": lineage(store, win.id),
    }


def _counts_and_times(store: Store, run: RunView) -> dict[str, Any]:
    statuses = store.status_counts("candidate")
    trained = len([c for c in run.candidates if c.trained])
    finished = store.evaluations(status=("done", "failed"))
    cand_runs = store.evaluations(status=("done", "failed"), kind="candidate")
    walls = [e.job_wall for e in finished]
    return {
        "counts": {"proposals": len(run.candidates), "candidates": trained, "rejected": statuses.get("rejected", 0),
                   "duplicates": statuses.get("duplicate", 0), "failed": statuses.get("failed", 0),
                   "unused": statuses.get("unused", 0),
                   "stopped_at_stage1": len([c for c in run.candidates if c.status == "done" and c.stage == 1]),
                   "runs": len(finished)},
        "seconds": run.seconds,
        "seconds_per_candidate": run.seconds / trained if trained else None,
        "mean_run_seconds": (sum(walls) / len(walls)) if walls else None,
        "mean_candidate_run_seconds": (sum(e.job_wall for e in cand_runs) / len(cand_runs)) if cand_runs else None,
    }


def collect(store: Store) -> dict[str, Any]:
    """Everything the outputs show, as one JSON-ready dict."""
    run = RunView.load(store)
    tu, floor = run.target_utility, run.cfg.utility_floor
    ranked = sort_ranked([c for c in run.candidates if eligible(c)])
    return json_ready({
        "mode": run.cfg.mode, "budget": run.cfg.budget, "benchmark": run.cfg.benchmark,
        "forget_split": run.cfg.unlearn.get("forget_split"), "status": run.status,
        "target_utility": tu, "utility_floor": floor,
        "utility_threshold": None if tu is None else floor * tu,
        "rows": _rows(store, run, ranked), "winner": _winner_info(store, run), "finalists": run.finalists,
        "baselines": _baseline_stats(run),
        **_counts_and_times(store, run),
        "points": _points(run.candidates, store, tu, floor),
    })


def _points(cands: list[CandidateRow], store: Store, tu: float | None, floor: float) -> list[dict[str, Any]]:
    pts = []
    for c in cands:
        if c.status not in ("done", "failed"):
            continue
        stage1_only = c.status == "done" and c.stage == 1
        fit = _f(c.fitness_search)
        if stage1_only:
            s1 = [e.stage1_fitness for e in store.evaluations_of(c.id, part="search") if e.stage1_fitness is not None]
            fit = _f(s1[0]) if s1 else None
        if fit is None:
            continue
        pts.append({"id": c.id, "generation": c.generation, "fitness": fit, "stage1_only": stage1_only,
                    "passes_floor": passes_floor(_f(c.utility_search), tu, floor)})
    return pts


def format_report(data: Mapping[str, Any], markdown: bool = False) -> str:
    rows = data.get("rows") or []
    c = data.get("counts") or {}
    head = (f"search: mode {data.get('mode')}, benchmark {data.get('benchmark')} {data.get('forget_split') or ''}, "
            f"budget {data.get('budget')}, status {data.get('status')}\n"
            f"candidates trained {c.get('candidates', 0)} (stopped at stage 1: {c.get('stopped_at_stage1', 0)}, "
            f"failed: {c.get('failed', 0)}), rejected {c.get('rejected', 0)}, duplicates {c.get('duplicates', 0)}, "
            f"runs {c.get('runs', 0)}; {fmt_value(data.get('seconds'))} s "
            f"({fmt_value(data.get('seconds_per_candidate'))} s per candidate)")
    tu = data.get("target_utility")
    if tu is not None:
        head += (f"\nutility floor: MU >= {data.get('utility_floor')} x {tu:.4f} = {data.get('utility_threshold'):.4f}; "
                 "fitness = 0.5*MU + 0.5*mean(1-forget_ROUGE, 1-forget_Prob); FQ, MU, ROUGE on the report part")
    body = table(rows, COLUMNS, markdown=markdown, headers=HEADERS)
    out = [head, "", body]
    w = data.get("winner")
    if w:
        out += ["", f"best loss: #{w['id']} (generation {w['generation']}, {w.get('operator')}), "
                    f"report fitness {fmt_value(w.get('fitness_report'))} ± {fmt_value(w.get('fitness_report_std'))}, "
                    f"MU {fmt_value(w.get('model_utility'))}, FQ {fmt_value(w.get('forget_quality'))}"]
        code = (w.get("code") or "").rstrip()
        out += (["```python", code, "```"] if markdown else [code])
        out += ["", "lineage of the winner:", format_lineage(w.get("lineage") or [])]
    return "\n".join(out)


def best_loss_text(data: Mapping[str, Any], run_dir: Path) -> str | None:
    w = data.get("winner")
    if not w or not w.get("code"):
        return None
    lines = [
        f"# The best loss of the evounlearn search in {run_dir} (mode {data.get('mode')}):",
        f"# candidate #{w['id']}, generation {w['generation']}, operator {w.get('operator')}.",
        f"# fitness: search part {fmt_value(w.get('fitness_search'))}, report part "
        f"{fmt_value(w.get('fitness_report'))} ± {fmt_value(w.get('fitness_report_std'))}; report-part MU "
        f"{fmt_value(w.get('model_utility'))}, FQ {fmt_value(w.get('forget_quality'))}, forget ROUGE "
        f"{fmt_value(w.get('forget_rouge'))}.",
        "# Use it: evounlearn unlearn --method evolved --loss-file best_loss.py "
        f"--config {run_dir / 'best_config.yaml'} [forget_part=report train.seed=0]",
        "",
    ]
    return "\n".join(lines) + str(w["code"]).rstrip() + "\n"


def write_outputs(run_dir: str | Path, store: Store) -> dict[str, Any]:
    """Write leaderboard.md/.json, best_loss.py, best_config.yaml and fitness.png; returns the data."""
    from ..benchmarks.tofu import run_settings
    from ..reports.plots import fitness_plot

    rd = Path(run_dir)
    data = collect(store)
    (rd / "leaderboard.json").write_text(json.dumps(data, indent=1))
    (rd / "leaderboard.md").write_text(format_report(data, markdown=True) + "\n")
    run = RunView.load(store)
    w = data.get("winner")
    if w:
        settings = run_settings(run.cfg.unlearn, seed=int(run.cfg.seed), forget_part="search",
                                epochs=w.get("epochs"))
        (rd / "best_config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
        text = best_loss_text(data, rd)
        if text:
            (rd / "best_loss.py").write_text(text)
    base = {name: (b.get("fitness_search_mean"), b.get("fitness_search_std"))
            for name, b in (data.get("baselines") or {}).items()}
    refs = {name: (info.get("search") or {}).get("fitness") for name, info in run.references().items()}
    try:
        fitness_plot(data.get("points") or [], base, rd / "fitness.png",
                     title=f"evounlearn search ({data.get('mode')}): fitness on the search part",
                     references=refs, winner=(w or {}).get("id"))
    except Exception as e:  # a plotting problem never loses the search's results
        (rd / "fitness.png.error.txt").write_text(f"{type(e).__name__}: {e}\n")
    return data
