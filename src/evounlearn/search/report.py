"""Outputs of a search, rebuilt from its database at any time (`evounlearn report RUN_DIR`).

- RUN_DIR/leaderboard.md and .json: separate tables for the finalists, the baselines, the other
  candidates and the reference models. A rank compares only rows measured the same way (same
  parts, same number of seeds): the finalists and baselines by their mean report-part fitness
  over their seeds, the other candidates by their one-seed search-part fitness. Above the
  finalists, one sentence says how the winner was chosen, and a note says why any finalist that
  beats the winner on the report part did not win. Columns come from the benchmark
  (`FitnessSpec` formula and utility key, `metric_keys`, every fitness as `fitness_<name>`); a
  column no row has is left out.
- RUN_DIR/best_loss.py: the winner's loss program, re-generated from the syntax trees of the
  functions that pass the sandbox check (`ast.unparse`), never the proposer's raw text, usable with
  `evounlearn unlearn --method evolved --loss-file RUN_DIR/best_loss.py --config RUN_DIR/best_config.yaml`
  (best_config.yaml: the search's training and evaluation settings; add `forget_part=report
  train.seed=S` to reproduce a report-part run);
- RUN_DIR/fitness.png: every candidate's first-seed search fitness per generation, the best so
  far of that same quantity, the winner on it (and its multi-seed mean), the baselines' bands;
- the winner's lineage (ancestors with their operators), in the JSON and the text report.

This module builds the data (`collect`: one JSON-ready dict) and writes the files; `report_text`
turns that dict into Markdown and terminal text; `sandbox.program.checked_program` re-generates
the checked code.

Everything printed or written passes through `reports.safe_text`: no terminal control characters,
Markdown fences no code can close, no HTML or links from names and notes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..benchmarks import passes_floor
from ..benchmarks.base import TargetInfo, get_benchmark, rank_score
from ..reports.safe_text import clean_data, clean_text
from ..reports.tables import fmt_value
from ..sandbox.program import checked_program
from .archive import eligible, score_of, sort_ranked
from .config import SearchConfig, config_from_dict
from .report_text import _arm, _mean_sd, _seeds, format_report, metric_label
from .store import CandidateRow, Store, json_ready

SECTION_TITLES = {"finalist": "Finalists", "baseline": "Baselines (registered methods)",
                  "candidate": "Other candidates", "reference": "Reference models"}
OTHER_CANDIDATES_SHOWN = 10


def _f(v: Any) -> float | None:
    if isinstance(v, Mapping):
        v = v.get("agg")
    if v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# ------------------------------------------------------------------------------------------------
# what the report reads


@dataclass
class FitnessInfo:
    """The benchmark's fitnesses and metrics, as the report shows them (no benchmark is named here:
    everything comes from its `FitnessSpec`s and `metric_keys`)."""

    searched: str = ""  # the fitness the search optimised
    formula: str = ""
    utility_key: str = ""
    names: list[str] = field(default_factory=list)  # every fitness of the benchmark
    metric_keys: list[str] = field(default_factory=list)
    version: int | None = None  # the searched fitness's formula version (FitnessSpec.version)

    @classmethod
    def of(cls, cfg: SearchConfig) -> FitnessInfo:
        try:
            bench = get_benchmark(cfg.benchmark)
            name = cfg.fitness_name()
            spec = bench.fitness_spec(name)
            return cls(name, spec.formula, spec.utility_key, list(bench.all_fitnesses()), list(bench.metric_keys),
                       spec.version)
        except Exception:  # the benchmark cannot be loaded here: show what the rows hold
            return cls(cfg.fitness)


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
    driver_pid: int | None = None

    @classmethod
    def load(cls, store: Store) -> RunView:
        saved = store.get_meta("config") or {}
        info = store.get_meta("target")
        target = None
        if isinstance(info, Mapping):
            known = {f.name for f in fields(TargetInfo)}
            target = TargetInfo(**{"data": "", "paths": {}, "parts": {}, "target": {}, "retain": None,
                                   "target_utility": None, **{k: v for k, v in info.items() if k in known}})
        winner, pid = store.get_meta("winner"), store.get_meta("pid")
        return cls(config_from_dict(saved), target, store.get_meta("status"),
                   [int(i) for i in store.get_meta("finalists") or []], None if winner is None else int(winner),
                   float(store.get_meta("seconds", 0.0) or 0.0), store.candidates(kind="candidate"),
                   store.candidates(kind="baseline"), int(pid) if isinstance(pid, int) else None)

    @property
    def target_utility(self) -> float | None:
        return _f(self.target.target_utility) if self.target else None

    def references(self) -> dict[str, dict[str, Any]]:
        """name -> {part: {summary, fitness}} for the target and the retain oracle (when there is one)."""
        if self.target is None:
            return {}
        out = {"target": self.target.target}
        if self.target.retain:
            out["retain oracle"] = self.target.retain
        return out

    def shown_status(self) -> str:
        """done | running (a live driver holds it) | interrupted (stored as running or interrupted,
        but no process holds it: the report is being rebuilt from a stopped search)."""
        if self.status == "done":
            return "done"
        if self.status == "running" and _alive(self.driver_pid):
            return "running"
        return "interrupted" if self.status in ("running", "interrupted", None) else str(self.status)


def _alive(pid: int | None) -> bool:
    """Whether the driver recorded as `pid` (meta "pid", when a driver records one) still runs."""
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError, OSError):
        return False
    return True


# ------------------------------------------------------------------------------------------------
# lineage


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


# ------------------------------------------------------------------------------------------------
# leaderboard rows and tables


@dataclass
class BoardRow:
    """One leaderboard row; `metrics` are from `metrics_part` (report part: mean over its seeds)."""

    section: str  # finalist | baseline | candidate | reference
    name: str
    id: int | None = None
    rank: int | None = None
    winner: bool = False
    generation: int | None = None
    operator: str | None = None  # a candidate's operator, a baseline's method
    epochs: int | None = None
    fitness_search: float | None = None
    search_sd: float | None = None
    n_search: int = 0
    fitness_report: float | None = None
    report_sd: float | None = None
    n_report: int = 0
    metrics_part: str = "search"
    metrics: dict[str, float | None] = field(default_factory=dict)
    utility_floor: str | None = None  # passes | below
    score: float = -math.inf  # the ranking quantity within its table (floor-aware)
    status: str | None = None
    stage: int | None = None


def _candidate_row(c: CandidateRow, section: str, run: RunView) -> BoardRow:
    tu, floor = run.target_utility, run.cfg.utility_floor
    on_report = bool(c.report_metrics) and c.n_report > 0
    util = _f(c.utility_report) if on_report else _f(c.utility_search)
    row = BoardRow(section, c.name, c.id, winner=run.winner == c.id and section == "finalist",
                   generation=c.generation if c.kind == "candidate" else None,
                   operator=c.operator if c.kind == "candidate" else c.method, epochs=c.epochs,
                   fitness_search=_f(c.fitness_search), search_sd=_f(c.fitness_search_std), n_search=c.n_search or 0,
                   fitness_report=_f(c.fitness_report), report_sd=_f(c.fitness_report_std),
                   n_report=c.n_report or 0, metrics_part="report" if on_report else "search",
                   metrics={k: _f(v) for k, v in ((c.report_metrics if on_report else c.metrics) or {}).items()},
                   utility_floor="passes" if passes_floor(util, tu, floor) else "below", status=c.status, stage=c.stage)
    if row.n_report > 0:
        row.score = rank_score(row.fitness_report, _f(c.utility_report), tu, floor)
    else:
        row.score = score_of(c)
    return row


def _reference_row(name: str, info: Mapping[str, Any]) -> BoardRow:
    s, r = info.get("search") or {}, info.get("report") or {}
    summary = r.get("summary") or s.get("summary") or {}
    return BoardRow("reference", name, fitness_search=_f(s.get("fitness")), n_search=1 if s else 0,
                    fitness_report=_f(r.get("fitness")), n_report=1 if r else 0,
                    metrics_part="report" if r.get("summary") else "search",
                    metrics={k: _f(v) for k, v in summary.items()})


def _ranked(rows: list[BoardRow]) -> list[BoardRow]:
    """Best first by the row's score (ties: the earlier id), ranks 1..n."""
    out = sorted(rows, key=lambda r: (-r.score, r.id if r.id is not None else 0))
    for i, r in enumerate(out):
        r.rank = i + 1
    return out


def board_rows(store: Store, run: RunView) -> list[BoardRow]:
    """Every row shown: finalists, baselines, the best other candidates, the references."""
    fin = [c for c in (store.candidate(i) for i in run.finalists) if c is not None]
    others = [c for c in sort_ranked([c for c in run.candidates if eligible(c)]) if c.id not in set(run.finalists)]
    rows = [_candidate_row(c, "finalist", run) for c in fin]
    rows += [_candidate_row(b, "baseline", run) for b in run.baselines]
    rows += [_candidate_row(c, "candidate", run) for c in others[:OTHER_CANDIDATES_SHOWN]]
    rows += [_reference_row(name, info) for name, info in run.references().items()]
    return rows


@dataclass
class BoardTable:
    """Rows measured the same way (section, seeds on each part), ranked among themselves."""

    section: str
    n_search: int
    n_report: int
    rows: list[BoardRow]
    title: str = ""
    sentence: str = ""

    @property
    def ranked_on(self) -> str:
        return "report" if self.n_report > 0 else "search"


def group_tables(rows: list[BoardRow]) -> list[BoardTable]:
    """One table per (section, search seeds, report seeds), in section order; ranked inside."""
    order = ["finalist", "baseline", "candidate", "reference"]
    groups: dict[tuple[str, int, int], list[BoardRow]] = {}
    for r in rows:
        groups.setdefault((r.section, r.n_search, r.n_report), []).append(r)
    out = []
    for (section, ns, nr), members in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]), -kv[0][2],
                                                                              -kv[0][1])):
        members = members if section == "reference" else _ranked(members)
        out.append(BoardTable(section, ns, nr, members))
    return out


def _describe(t: BoardTable) -> None:
    """The table's title and the sentence saying what its rank compares."""
    t.title = SECTION_TITLES[t.section]
    if t.section == "reference":
        t.sentence = "Not ranked: the model before unlearning and the model never trained on the forget set."
        return
    t.title += f" (search part: {_seeds(t.n_search)}" + (f", report part: {_seeds(t.n_report)})" if t.n_report
                                                          else ")")
    part = "mean report-part fitness" if t.n_report > 1 else f"{t.ranked_on}-part fitness"
    seeds = _seeds(t.n_report if t.n_report else t.n_search)
    t.sentence = (f"Ranked by {part} ({seeds}); a row below the utility floor ranks after every row that "
                  "passes it. Ranks compare rows of this table only.")


def _fitness_header(part: str, n: int) -> str:
    return f"{part} fitness (1 seed)" if n == 1 else f"{part} fitness, mean ± sd over {n} seeds"


def metric_columns(fit: FitnessInfo, rows: list[BoardRow]) -> list[str]:
    """Forget quality, the utility, the benchmark's metric keys, then every fitness
    (`fitness_<name>`); without the benchmark, the keys the rows hold. Keys no row has are left out."""
    present = {k for r in rows for k, v in r.metrics.items() if v is not None}
    keys = list(fit.metric_keys) or sorted(k for k in present if not k.startswith("fitness_"))
    fitness_keys = [f"fitness_{n}" for n in fit.names] or sorted(k for k in present if k.startswith("fitness_"))
    ordered = ["forget_quality", fit.utility_key, *keys, *fitness_keys]
    out: list[str] = []
    for k in ordered:
        if k and k in present and k not in out:
            out.append(k)
    return out


def table_columns(t: BoardTable, fit: FitnessInfo) -> tuple[list[str], dict[str, str]]:
    """(column keys, header labels) of one table; columns every row leaves empty are dropped."""
    cols = ["rank", "name", "generation", "operator", "epochs", "search", "report"]
    headers = {"rank": "rank", "name": "name", "generation": "generation",
               "operator": "method" if t.section == "baseline" else "operator", "epochs": "training epochs",
               "search": _fitness_header("search", t.n_search), "report": _fitness_header("report", t.n_report)}
    part = t.rows[0].metrics_part if t.rows else "search"
    for k in metric_columns(fit, t.rows):
        label = metric_label(k) + (" (searched)" if k == f"fitness_{fit.searched}" else "")
        headers[k] = f"{label}, {part} part"
        cols.append(k)
    cols.append("utility floor")
    headers["utility floor"] = "utility floor"
    cells = [table_cells(r) for r in t.rows]
    keep = [c for c in cols if c == "name" or any(cell.get(c) is not None for cell in cells)]
    return keep, headers


def table_cells(r: BoardRow) -> dict[str, Any]:
    name = r.name + (" (winner)" if r.winner else "")
    return {"rank": r.rank, "name": name, "generation": r.generation, "operator": r.operator, "epochs": r.epochs,
            "search": _mean_sd(r.fitness_search, r.search_sd, r.n_search),
            "report": _mean_sd(r.fitness_report, r.report_sd, r.n_report),
            **{k: v for k, v in r.metrics.items()}, "utility floor": r.utility_floor}


# ------------------------------------------------------------------------------------------------
# selection: the rule, and why a finalist better on the report part did not win


def selection_sentence(cfg: SearchConfig) -> str:
    n = _seeds(cfg.report_seeds)
    if cfg.select_on == "report":
        return (f"The winner is the finalist with the best mean report-part fitness over {n} (select_on: report); "
                "a finalist below the utility floor ranks last.")
    return (f"The winner is the finalist with the best mean search-part fitness over {n} (a finalist below the "
            "utility floor ranks last); the report part is never used to select.")


def why_not_notes(rows: list[BoardRow], store: Store, run: RunView) -> list[str]:
    """For every finalist with a higher report fitness than the winner: why it did not win."""
    fin = [r for r in rows if r.section == "finalist" and r.id is not None]
    win = next((r for r in fin if r.winner), None)
    if win is None or win.fitness_report is None:
        return []
    notes = []
    for r in sorted(fin, key=lambda r: -(r.fitness_report if r.fitness_report is not None else -math.inf)):
        if r is win or r.fitness_report is None or r.fitness_report <= win.fitness_report:
            continue
        head = (f"{r.name} has a higher report fitness than the winner {win.name} ({fmt_value(r.fitness_report)} vs "
                f"{fmt_value(win.fitness_report)}) but did not win: ")
        notes.append(head + _why_not(store.candidate(r.id), store.candidate(win.id), run))
    return notes


def _why_not(c: CandidateRow | None, w: CandidateRow | None, run: RunView) -> str:
    if c is None or w is None:
        return "it is no longer in the database."
    tu, floor = run.target_utility, run.cfg.utility_floor
    if run.cfg.select_on == "report":
        return "its report-part utility is below the floor, and a finalist below the floor ranks last."
    if not passes_floor(_f(c.utility_search), tu, floor):
        why = "its search-part utility is below the floor, and a finalist below the floor ranks last"
    elif score_of(c) == score_of(w):
        why = "its mean search-part fitness ties the winner's, and the earlier candidate wins a tie"
    else:
        why = (f"its mean search-part fitness is lower ({fmt_value(_f(c.fitness_search))} vs "
               f"{fmt_value(_f(w.fitness_search))})")
    return why + "; the winner is chosen on the search part only, so that the report part stays an unbiased estimate."


# ------------------------------------------------------------------------------------------------
# everything the outputs show, as one JSON-ready dict


def _baseline_stats(run: RunView) -> dict[str, dict[str, Any]]:
    return {str(b.label): {
        "fitness_report_mean": _f(b.fitness_report), "fitness_report_std": _f(b.fitness_report_std),
        "fitness_search_mean": _f(b.fitness_search), "fitness_search_std": _f(b.fitness_search_std),
        "model_utility": _f((b.report_metrics or {}).get("model_utility")),
        "forget_quality": _f((b.report_metrics or {}).get("forget_quality")),
        "utility": _f(b.utility_report), "seeds": b.n_report,
    } for b in run.baselines}


def _winner_info(store: Store, run: RunView) -> dict[str, Any] | None:
    win = store.candidate(run.winner) if run.winner is not None else None
    if win is None:
        return None
    rm = win.report_metrics or {}
    code = checked_program(win.program or win.code, win.interface or run.cfg.interface, win.function)
    return {
        "id": win.id, "generation": win.generation, "operator": win.operator,
        "fitness_search": _f(win.fitness_search), "fitness_search_std": _f(win.fitness_search_std),
        "fitness_report": _f(win.fitness_report), "fitness_report_std": _f(win.fitness_report_std),
        "n_search": win.n_search, "n_report": win.n_report,
        "forget_quality": _f(rm.get("forget_quality")), "model_utility": _f(rm.get("model_utility")),
        "forget_rouge": _f(rm.get("forget_rouge")), "forget_prob": _f(rm.get("forget_prob")),
        "report_metrics": {k: _f(v) for k, v in rm.items()},
        "epochs": win.epochs, "code": code, "code_checked": code is not None,
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
                   "runs": len(finished),
                   # search-part re-runs of proposals with other seeds (races, finalists): trainings
                   # the budget counts besides one per proposal
                   "search_reruns": store.extra_search_runs(run.cfg.seed)},
        "seconds": run.seconds,
        "seconds_per_candidate": run.seconds / trained if trained else None,
        "mean_run_seconds": (sum(walls) / len(walls)) if walls else None,
        "mean_candidate_run_seconds": (sum(e.job_wall for e in cand_runs) / len(cand_runs)) if cand_runs else None,
    }


def _first_seed_fitness(store: Store, c: CandidateRow) -> float | None:
    """The fitness of the candidate's first search-part run: what the search compared it by
    during the generations (a finalist's later seeds are not included)."""
    runs = [e for e in store.evaluations_of(c.id, part="search", status="done") if e.fitness is not None]
    if runs:
        return _f(min(runs, key=lambda e: e.id).fitness)
    return _f(c.fitness_search) if (c.n_search or 0) <= 1 else None


def _points(store: Store, run: RunView) -> list[dict[str, Any]]:
    """Per candidate: generation, first-seed search fitness (stage-1 fitness when it stopped
    there; None and `failed` when it failed), whether it passes the utility floor."""
    tu, floor = run.target_utility, run.cfg.utility_floor
    pts = []
    for c in run.candidates:
        if c.status not in ("done", "failed"):
            continue
        stage1_only = c.status == "done" and c.stage == 1
        if stage1_only:
            s1 = [e.stage1_fitness for e in store.evaluations_of(c.id, part="search") if e.stage1_fitness is not None]
            fit = _f(s1[0]) if s1 else None
        else:
            fit = None if c.status == "failed" else _first_seed_fitness(store, c)
        if fit is None and c.status != "failed":
            continue
        pts.append({"id": c.id, "generation": c.generation, "fitness": fit, "stage1_only": stage1_only,
                    "failed": c.status == "failed",
                    "passes_floor": passes_floor(_f(c.utility_search), tu, floor)})
    return pts


def collect(store: Store) -> dict[str, Any]:
    """Everything the outputs show, as one JSON-ready dict with every string cleaned."""
    run = RunView.load(store)
    fit = FitnessInfo.of(run.cfg)
    tu, floor = run.target_utility, run.cfg.utility_floor
    rows = board_rows(store, run)
    tables = group_tables(rows)
    out_tables = []
    for t in tables:
        _describe(t)
        columns, headers = table_columns(t, fit)
        out_tables.append({"section": t.section, "title": t.title, "sentence": t.sentence, "columns": columns,
                           "headers": headers, "rows": [table_cells(r) for r in t.rows]})
    data = {
        "run_dir": str(Path(getattr(store, "path", "search.sqlite")).resolve().parent),
        "mode": run.cfg.mode, "control": run.cfg.control or None, "budget": run.cfg.budget,
        "benchmark": run.cfg.benchmark,
        "data": run.target.data if run.target else None, "forget_split": run.cfg.unlearn.get("forget_split"),
        "status": run.shown_status(), "stored_status": run.status,
        "fitness": asdict(fit), "target_utility": tu, "utility_floor": floor,
        "utility_threshold": None if tu is None else floor * tu,
        "selection": selection_sentence(run.cfg), "why_not": why_not_notes(rows, store, run),
        "tables": out_tables, "rows": [asdict(r) for t in tables for r in t.rows],
        "winner": _winner_info(store, run), "finalists": run.finalists, "report_seeds": run.cfg.report_seeds,
        "baselines": _baseline_stats(run),
        **_counts_and_times(store, run),
        "points": _points(store, run),
    }
    return clean_data(json_ready(data))


# ------------------------------------------------------------------------------------------------
# files


def best_loss_text(data: Mapping[str, Any], run_dir: Path) -> str | None:
    """best_loss.py: a header comment, then the checked, re-generated program (never raw text)."""
    w = data.get("winner")
    if not w or not w.get("code"):
        return None
    rd = clean_text(str(Path(run_dir).resolve())).replace("\n", " ")  # absolute: the command works from anywhere
    bench = clean_text(str(data.get("benchmark") or "")).replace("\n", " ")
    lines = [
        f"# The best loss of the evounlearn search in {rd} ({_arm(data)}, benchmark {bench}):",
        f"# candidate #{w['id']}, generation {w['generation']}, operator {w.get('operator')}.",
        f"# search fitness {fmt_value(w.get('fitness_search'))} ({_seeds(w.get('n_search') or 0)}), report fitness "
        f"{fmt_value(w.get('fitness_report'))} ± {fmt_value(w.get('fitness_report_std'))} "
        f"({_seeds(w.get('n_report') or 0)}).",
        "# The functions below passed the sandbox's check and were re-generated from their syntax trees",
        "# (comments and top-level statements of the proposed text are not kept).",
        "# Use it (from any directory; best_config.yaml scores the search part of the forget split, as the",
        "# search did; add `forget_part=report train.seed=0` for the held-out report part, `forget_part=all`",
        "# for the whole split):",
        f"#   {use_command(bench, rd)}",
        "",
    ]
    text = "\n".join(clean_text(x).replace("\n", " ") for x in lines) + "\n"
    return text + clean_text(str(w["code"])).rstrip() + "\n"


def use_command(benchmark: str, run_dir: str | Path) -> str:
    """The command that re-runs the winner's loss with the search's settings (absolute paths)."""
    import shlex

    rd = Path(run_dir).resolve()
    return (f"evounlearn unlearn --benchmark {shlex.quote(benchmark)} --method evolved --loss-file "
            f"{shlex.quote(str(rd / 'best_loss.py'))} --config {shlex.quote(str(rd / 'best_config.yaml'))}")


def run_settings(unlearn: Mapping[str, Any] | None, *, seed: int | None, forget_part: str,
                 epochs: int | None) -> dict[str, Any]:
    """The run options of one run of the search (best_config.yaml): the search's `unlearn`
    mapping with the part, seed and epochs of that run."""
    data = json.loads(json.dumps(dict(unlearn or {}), default=str))
    source = data.get("data")
    if isinstance(source, str) and source not in ("", "generated") and Path(source).exists():
        data["data"] = str(Path(source).resolve())  # a relative data folder: usable from any directory
    data["forget_part"] = forget_part
    train = data.get("train") if isinstance(data.get("train"), dict) else {}
    if seed is not None:
        train["seed"] = int(seed)
    if epochs is not None:
        train["epochs"] = int(epochs)
    data["train"] = train
    data.pop("run_dir", None)
    data.pop("method", None)
    return data


def write_outputs(run_dir: str | Path, store: Store) -> dict[str, Any]:
    """Write leaderboard.md/.json, best_loss.py, best_config.yaml and fitness.png; returns the data."""
    from ..files import atomic_write_text
    from ..reports.plots import fitness_plot

    rd = Path(run_dir)
    data = collect(store)
    atomic_write_text(rd / "leaderboard.json", json.dumps(data, indent=1))
    atomic_write_text(rd / "leaderboard.md", format_report(data, markdown=True) + "\n")
    run = RunView.load(store)
    w = data.get("winner")
    if w:
        settings = run_settings(run.cfg.unlearn, seed=int(run.cfg.seed), forget_part="search", epochs=w.get("epochs"))
        atomic_write_text(rd / "best_config.yaml", yaml.safe_dump(clean_data(settings), sort_keys=False))
        text = best_loss_text(data, rd)
        if text:
            atomic_write_text(rd / "best_loss.py", text)
    base = {name: (b.get("fitness_search_mean"), b.get("fitness_search_std"))
            for name, b in (data.get("baselines") or {}).items()}
    refs = {name: _f((info.get("search") or {}).get("fitness")) for name, info in run.references().items()}
    winner = None if not w else {"id": w["id"], "mean": w.get("fitness_search"), "sd": w.get("fitness_search_std"),
                                 "seeds": w.get("n_search") or 0}
    try:
        fitness_plot(data.get("points") or [], base, rd / "fitness.png",
                     title=f"evounlearn search ({_arm(data)}): {data['fitness'].get('searched') or ''} fitness "
                           "on the search part", references=refs, winner=winner)
    except Exception as e:  # a plotting problem never loses the search's results
        atomic_write_text(rd / "fitness.png.error.txt", f"{type(e).__name__}: {e}\n")
    return data
