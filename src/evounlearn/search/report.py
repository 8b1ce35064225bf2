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
from pathlib import Path
from typing import Any

import yaml

from ..benchmarks import passes_floor
from ..reports.tables import fmt_value, table
from .archive import eligible, sort_ranked
from .store import Store, json_ready

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


def _cand_name(c: Mapping[str, Any]) -> str:
    if c.get("kind") == "baseline":
        return str(c.get("label"))
    return f"#{c['id']}"


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
        out.append({"id": i, "depth": depth, "generation": c.get("generation"), "operator": c.get("operator"),
                    "parents": list(c.get("parents") or []), "status": c.get("status"),
                    "fitness_search": _f(c.get("fitness_search")), "notes": c.get("notes") or ""})
        for p in c.get("parents") or []:
            try:
                visit(int(p), depth + 1)
            except (TypeError, ValueError):
                continue

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


def _row(c: Mapping[str, Any], rank: Any, tu: float | None, floor: float) -> dict[str, Any]:
    rm = c.get("report_metrics") or {}
    sm = c.get("metrics") or {}
    util = _f(c.get("utility_report")) if c.get("utility_report") is not None else _f(c.get("utility_search"))
    return {
        "rank": rank,
        "id": c.get("id"),
        "kind": c.get("kind"),
        "name": _cand_name(c),
        "gen": c.get("generation") if c.get("kind") == "candidate" else "-",
        "operator": c.get("operator") if c.get("kind") == "candidate" else c.get("method"),
        "fit_search": _f(c.get("fitness_search")),
        "search_std": _f(c.get("fitness_search_std")),
        "fit_report": _f(c.get("fitness_report")),
        "report_std": _f(c.get("fitness_report_std")),
        "FQ": _f(rm.get("forget_quality", sm.get("forget_quality") if not rm else None)),
        "MU": _f(rm.get("model_utility", sm.get("model_utility") if not rm else None)),
        "forget_ROUGE": _f(rm.get("forget_rouge", sm.get("forget_rouge") if not rm else None)),
        "floor": "ok" if passes_floor(util, tu, floor) else "below",
        "seeds": f"{c.get('n_search') or 0}/{c.get('n_report') or 0}",
        "status": c.get("status"),
        "stage": c.get("stage"),
        "error": c.get("error"),
    }


def _reference_row(name: str, info: Mapping[str, Any]) -> dict[str, Any]:
    s, r = info.get("search", {}), info.get("report", {})
    rs = r.get("summary", {})
    return {"rank": "-", "name": name, "kind": "reference", "gen": "-", "operator": "-",
            "fit_search": _f(s.get("fitness")), "search_std": None, "fit_report": _f(r.get("fitness")),
            "report_std": None, "FQ": _f(rs.get("forget_quality")), "MU": _f(rs.get("model_utility")),
            "forget_ROUGE": _f(rs.get("forget_rouge")), "floor": "-", "seeds": "-"}


def collect(store: Store) -> dict[str, Any]:
    """Everything the outputs show, as one JSON-ready dict."""
    cfg = store.get_meta("config") or {}
    target = store.get_meta("target") or {}
    tu = _f(target.get("target_utility"))
    floor = float(cfg.get("utility_floor", 0.9))
    finalists = [int(i) for i in store.get_meta("finalists") or []]
    winner = store.get_meta("winner")
    cands = store.candidates("kind = 'candidate'")
    baselines = store.candidates("kind = 'baseline'")
    ranked = sort_ranked([c for c in cands if eligible(c)])
    rank_of = {int(c["id"]): i + 1 for i, c in enumerate(ranked)}
    rows: list[dict[str, Any]] = []
    for name in ("target", "retain"):
        if name in target:
            rows.append(_reference_row(name if name == "target" else "retain (oracle)", target[name]))
    for b in baselines:
        rows.append(_row(b, "-", tu, floor))
    shown = set()
    for i in sorted(finalists, key=lambda i: rank_of.get(i, len(rank_of) + 1)):
        c = store.candidate(i)
        if c:
            r = _row(c, rank_of.get(i, "-"), tu, floor)
            r["name"] = r["name"] + (" (winner)" if winner == i else " (finalist)")
            rows.append(r)
            shown.add(i)
    for c in ranked[:10]:
        if int(c["id"]) not in shown:
            rows.append(_row(c, rank_of.get(int(c["id"]), "-"), tu, floor))
    statuses: dict[str, int] = {}
    for c in cands:
        statuses[c["status"]] = statuses.get(c["status"], 0) + 1
    trained = sum(statuses.get(s, 0) for s in ("validated", "running", "done", "failed"))
    stopped = len([c for c in cands if c.get("status") == "done" and c.get("stage") == 1])
    seconds = float(store.get_meta("seconds", 0.0) or 0.0)
    evals = store.evaluations()
    job_walls = [float((e.get("timings") or {}).get("job_wall", 0.0)) for e in evals if e["status"] in ("done", "failed")]
    cand_evals = [e for e in evals if e["status"] in ("done", "failed")
                  and any(int(e["candidate_id"]) == int(c["id"]) for c in cands)]
    win = store.candidate(int(winner)) if winner is not None else None
    base_stats = {}
    for b in baselines:
        base_stats[str(b["label"])] = {
            "fitness_report_mean": _f(b.get("fitness_report")), "fitness_report_std": _f(b.get("fitness_report_std")),
            "fitness_search_mean": _f(b.get("fitness_search")), "fitness_search_std": _f(b.get("fitness_search_std")),
            "model_utility": _f((b.get("report_metrics") or {}).get("model_utility")),
            "forget_quality": _f((b.get("report_metrics") or {}).get("forget_quality")),
            "seeds": b.get("n_report"),
        }
    winner_info = None
    if win:
        rm = win.get("report_metrics") or {}
        winner_info = {
            "id": win["id"], "generation": win["generation"], "operator": win.get("operator"),
            "fitness_search": _f(win.get("fitness_search")), "fitness_search_std": _f(win.get("fitness_search_std")),
            "fitness_report": _f(win.get("fitness_report")), "fitness_report_std": _f(win.get("fitness_report_std")),
            "forget_quality": _f(rm.get("forget_quality")), "model_utility": _f(rm.get("model_utility")),
            "forget_rouge": _f(rm.get("forget_rouge")), "forget_prob": _f(rm.get("forget_prob")),
            "epochs": win.get("epochs"), "code": win.get("code"),
            "lineage": lineage(store, int(win["id"])),
        }
    return json_ready({
        "mode": cfg.get("mode"), "budget": cfg.get("budget"), "benchmark": cfg.get("benchmark"),
        "forget_split": (cfg.get("unlearn") or {}).get("forget_split"), "status": store.get_meta("status"),
        "target_utility": tu, "utility_floor": floor,
        "utility_threshold": None if tu is None else floor * tu,
        "rows": rows, "winner": winner_info, "finalists": finalists, "baselines": base_stats,
        "counts": {"proposals": len(cands), "candidates": trained, "rejected": statuses.get("rejected", 0),
                   "duplicates": statuses.get("duplicate", 0), "failed": statuses.get("failed", 0),
                   "unused": statuses.get("unused", 0), "stopped_at_stage1": stopped,
                   "runs": len([e for e in evals if e["status"] in ("done", "failed")])},
        "seconds": seconds,
        "seconds_per_candidate": seconds / trained if trained else None,
        "mean_run_seconds": (sum(job_walls) / len(job_walls)) if job_walls else None,
        "mean_candidate_run_seconds": (sum(float((e.get("timings") or {}).get("job_wall", 0.0)) for e in cand_evals)
                                       / len(cand_evals)) if cand_evals else None,
        "points": _points(cands, store, tu, floor),
    })


def _points(cands: list[dict[str, Any]], store: Store, tu: float | None, floor: float) -> list[dict[str, Any]]:
    pts = []
    for c in cands:
        if c["status"] not in ("done", "failed"):
            continue
        stage1_only = c.get("status") == "done" and c.get("stage") == 1
        fit = _f(c.get("fitness_search"))
        if stage1_only:
            evs = store.evaluations("candidate_id = ? AND part = 'search' AND stage1_fitness IS NOT NULL", [c["id"]])
            fit = _f(evs[0]["stage1_fitness"]) if evs else None
        if fit is None:
            continue
        pts.append({"id": c["id"], "generation": c["generation"], "fitness": fit, "stage1_only": stage1_only,
                    "passes_floor": passes_floor(_f(c.get("utility_search")), tu, floor)})
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
    cfg = store.get_meta("config") or {}
    w = data.get("winner")
    if w:
        settings = run_settings(cfg.get("unlearn") or {}, seed=int(cfg.get("seed", 0)), forget_part="search",
                                epochs=w.get("epochs"))
        (rd / "best_config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
        text = best_loss_text(data, rd)
        if text:
            (rd / "best_loss.py").write_text(text)
    base = {name: (b.get("fitness_search_mean"), b.get("fitness_search_std"))
            for name, b in (data.get("baselines") or {}).items()}
    target = store.get_meta("target") or {}
    refs = {}
    for name in ("target", "retain"):
        if name in target:
            refs[name] = (target[name].get("search") or {}).get("fitness")
    try:
        fitness_plot(data.get("points") or [], base, rd / "fitness.png",
                     title=f"evounlearn search ({data.get('mode')}): fitness on the search part",
                     references=refs, winner=(w or {}).get("id"))
    except Exception as e:  # a plotting problem never loses the search's results
        (rd / "fitness.png.error.txt").write_text(f"{type(e).__name__}: {e}\n")
    return data
