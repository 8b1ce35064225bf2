"""The search's database: one SQLite file per run (RUN_DIR/search.sqlite) that survives crashes.

Every proposal is a row of `candidates` (code, parents, operator, prompt, raw proposer response,
validation record, fingerprint, status, error, aggregated fitness on the search and report parts,
stage reached, metrics, timings); every training run is a row of `evaluations` (candidate, part of
the forget split, seed, stage reached, metrics, fitness, loss history, timings, error, status,
attempts = how many times it was sent to a worker). `meta` holds the run's config and bookkeeping.

Rows come back as typed dataclasses (`CandidateRow`, `EvaluationRow`, `ValidationRecord`), and
every query is a method named after what it returns: no SQL text lives outside this module.

Statuses. candidates: proposed -> validated | rejected | duplicate | unused (not needed: the
generation or the budget was already full); validated -> running -> done | failed. evaluations:
queued -> running -> done | failed (a run lost to an infrastructure fault goes back to queued).
Which candidate statuses count against the budget is decided here only (`TRAINED_STATUSES`).
Each change is committed at once (WAL journal, synchronous=NORMAL), so a `kill -9` loses at most
the runs in flight: on resume the rows left "running" are put back in the queue (`requeue_running`).
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

SCHEMA_VERSION = 1
DB_NAME = "search.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    label TEXT,
    generation INTEGER NOT NULL,
    slot INTEGER,
    operator TEXT,
    parents TEXT,
    repair_of INTEGER,
    repair_attempt INTEGER DEFAULT 0,
    code TEXT,
    program TEXT,
    function TEXT,
    interface TEXT,
    method TEXT,
    prompt TEXT,
    raw_response TEXT,
    notes TEXT,
    validation TEXT,
    fingerprint TEXT,
    epochs INTEGER,
    duplicate_of INTEGER,
    status TEXT NOT NULL,
    error TEXT,
    fitness_search REAL,
    fitness_search_std REAL,
    utility_search REAL,
    score_search REAL,
    n_search INTEGER DEFAULT 0,
    fitness_report REAL,
    fitness_report_std REAL,
    utility_report REAL,
    n_report INTEGER DEFAULT 0,
    stage INTEGER,
    metrics TEXT,
    report_metrics TEXT,
    timings TEXT,
    seed INTEGER,
    created REAL,
    updated REAL
);
CREATE INDEX IF NOT EXISTS cand_gen ON candidates(generation, kind);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY,
    candidate_id INTEGER NOT NULL,
    part TEXT NOT NULL,
    seed INTEGER NOT NULL,
    epochs INTEGER,
    stage1_epochs INTEGER DEFAULT 0,
    promote_cutoff REAL,
    priority INTEGER DEFAULT 0,
    status TEXT NOT NULL,
    stage INTEGER,
    promoted INTEGER,
    stage1_fitness REAL,
    stage1_score REAL,
    stage1_metrics TEXT,
    metrics TEXT,
    fitness REAL,
    utility REAL,
    score REAL,
    loss_history TEXT,
    epoch_losses TEXT,
    timings TEXT,
    error TEXT,
    run_dir TEXT,
    attempts INTEGER DEFAULT 0,
    created REAL,
    started REAL,
    finished REAL,
    UNIQUE(candidate_id, part, seed)
);
CREATE INDEX IF NOT EXISTS eval_status ON evaluations(status);
"""

CANDIDATE_STATUSES = ("proposed", "validated", "rejected", "duplicate", "unused", "running", "done", "failed")
EVAL_STATUSES = ("queued", "running", "done", "failed")
#: THE budget rule: candidates in these statuses are or will be trained, so they count against
#: `budget` (rejected, duplicate and unused proposals are never trained and never counted).
TRAINED_STATUSES = ("validated", "running", "done", "failed")
PENDING_STATUSES = ("queued", "running")  # evaluations not finished yet


def counts_against_budget(status: str) -> bool:
    """Whether a candidate in `status` is (or will be) trained: the budget rule."""
    return status in TRAINED_STATUSES


# -- typed rows ----------------------------------------------------------------------------------
@dataclass
class ValidationRecord:
    """The part of the sandbox's validation record kept with a candidate (`sandbox.CandidateRecord`)."""

    name: str | None = None
    ok: bool = False
    reason: str | None = None
    epochs: int | None = None
    fingerprint: str | None = None
    uses_retain: bool | None = None
    probe_values: list[float] = field(default_factory=list)
    helpers: list[str] = field(default_factory=list)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ValidationRecord:
        known = {f.name for f in fields(cls)}
        out = cls(**{k: v for k, v in data.items() if k in known})
        out.probe_values = list(out.probe_values or [])
        out.helpers = list(out.helpers or [])
        return out


@dataclass
class CandidateRow:
    """One row of `candidates`: a proposal (kind "candidate") or a baseline method (kind "baseline")."""

    id: int = 0
    kind: str = "candidate"
    label: str | None = None
    generation: int = 0
    slot: int | None = None
    operator: str | None = None
    parents: list[int] = field(default_factory=list)
    repair_of: int | None = None
    repair_attempt: int = 0
    code: str | None = None
    program: str | None = None
    function: str | None = None
    interface: str | None = None
    method: str | None = None
    prompt: str | None = None
    raw_response: str | None = None
    notes: str | None = None
    validation: ValidationRecord | None = None
    fingerprint: str | None = None
    epochs: int | None = None
    duplicate_of: int | None = None
    status: str = "proposed"
    error: str | None = None
    fitness_search: float | None = None
    fitness_search_std: float | None = None
    utility_search: float | None = None
    score_search: float | None = None
    n_search: int = 0
    fitness_report: float | None = None
    fitness_report_std: float | None = None
    utility_report: float | None = None
    n_report: int = 0
    stage: int | None = None
    metrics: dict[str, Any] | None = None  # free-form: the benchmark's summary (first search-part run)
    report_metrics: dict[str, Any] | None = None  # mean of the report-part summaries
    timings: dict[str, float] = field(default_factory=dict)
    seed: int | None = None
    created: float | None = None
    updated: float | None = None

    @property
    def trained(self) -> bool:
        """Counts against the budget (see `TRAINED_STATUSES`)."""
        return counts_against_budget(self.status)

    @property
    def name(self) -> str:
        """How tables and logs name it: a baseline's label, else "#id"."""
        return str(self.label) if self.kind == "baseline" else f"#{self.id}"


@dataclass
class EvaluationRow:
    """One row of `evaluations`: one training run of a candidate on a part of the forget split."""

    id: int = 0
    candidate_id: int = 0
    part: str = "search"
    seed: int = 0
    epochs: int | None = None
    stage1_epochs: int = 0
    promote_cutoff: float | None = None
    priority: int = 0
    status: str = "queued"
    stage: int | None = None
    promoted: bool | None = None
    stage1_fitness: float | None = None
    stage1_score: float | None = None
    stage1_metrics: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None  # free-form: the benchmark's summary
    fitness: float | None = None
    utility: float | None = None
    score: float | None = None
    loss_history: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    run_dir: str | None = None
    attempts: int = 0
    created: float | None = None
    started: float | None = None
    finished: float | None = None

    @property
    def job_wall(self) -> float:
        return float(self.timings.get("job_wall", 0.0) or 0.0)


_CANDIDATE_COLUMNS = frozenset(f.name for f in fields(CandidateRow))
_EVAL_COLUMNS = frozenset(f.name for f in fields(EvaluationRow))
_JSON_COLUMNS = frozenset(
    {"parents", "validation", "metrics", "report_metrics", "timings", "stage1_metrics", "loss_history",
     "epoch_losses"}
)
_LIST_COLUMNS = frozenset({"parents", "loss_history", "epoch_losses"})  # NULL reads back as []
_DICT_COLUMNS = frozenset({"timings"})  # NULL reads back as {}


def _json_default(o: Any) -> Any:
    if isinstance(o, float):
        return None
    return str(o)


def _encode(key: str, value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if key in _JSON_COLUMNS and value is not None:
        return json.dumps(value, default=_json_default)
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, bool):
        return int(value)
    return value


def _loads(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def _int_list(values: Any) -> list[int]:
    out: list[int] = []
    for x in values if isinstance(values, list) else []:
        try:
            out.append(int(x))
        except (TypeError, ValueError):
            continue
    return out


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in row.keys():
        v = _loads(row[k]) if k in _JSON_COLUMNS else row[k]
        if v is None and k in _LIST_COLUMNS:
            v = []
        elif v is None and k in _DICT_COLUMNS:
            v = {}
        out[k] = v
    return out


def _candidate(row: sqlite3.Row) -> CandidateRow:
    d = _decode(row)
    d["parents"] = _int_list(d.get("parents"))
    val = d.get("validation")
    d["validation"] = ValidationRecord.from_mapping(val) if isinstance(val, Mapping) else None
    return CandidateRow(**{k: v for k, v in d.items() if k in _CANDIDATE_COLUMNS})


def _evaluation(row: sqlite3.Row) -> EvaluationRow:
    d = _decode(row)
    d["promoted"] = None if d.get("promoted") is None else bool(d["promoted"])
    return EvaluationRow(**{k: v for k, v in d.items() if k in _EVAL_COLUMNS})


def _checked(columns: frozenset[str], table: str, keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    unknown = [k for k in keys if k not in columns]
    if unknown:
        raise KeyError(f"{table} has no column(s) {', '.join(unknown)}")
    return keys


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


class _Where:
    """AND-ed conditions with their parameters (built by the query methods only)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.params: list[Any] = []

    def eq(self, column: str, value: Any) -> _Where:
        if value is not None:
            self.parts.append(f"{column} = ?")
            self.params.append(value)
        return self

    def among(self, column: str, values: str | Sequence[Any] | None) -> _Where:
        if values is not None:
            vals = [values] if isinstance(values, str) else list(values)
            self.parts.append(f"{column} IN ({_marks(vals)})" if vals else "0")
            self.params.extend(vals)
        return self

    def add(self, sql: str, *params: Any) -> _Where:
        self.parts.append(sql)
        self.params.extend(params)
        return self

    @property
    def sql(self) -> str:
        return (" WHERE " + " AND ".join(self.parts)) if self.parts else ""


class Store:
    """Typed, thread-safe access to RUN_DIR/search.sqlite."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", SCHEMA_VERSION)
        elif int(version) != SCHEMA_VERSION:
            self.conn.close()
            raise ConfigError(f"{self.path} was written with search database version {version}; this evounlearn "
                              f"reads version {SCHEMA_VERSION} only")

    @classmethod
    def open_run(cls, run_dir: str | Path) -> Store:
        """The database of an existing search run (ConfigError when there is none)."""
        db = Path(run_dir) / DB_NAME
        if not db.is_file():
            raise ConfigError(f"{run_dir} holds no search database ({DB_NAME})")
        return cls(db)

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.conn.execute(sql, list(params)).fetchall()

    def _count(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            return int(self.conn.execute(sql, list(params)).fetchone()[0])

    # -- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        with self._lock:
            self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                              (key, json.dumps(value, default=_json_default)))

    # -- candidates: writes -------------------------------------------------------------------
    def add_candidate(self, **columns: Any) -> int:
        """Insert a candidate (columns of `CandidateRow`); returns its id."""
        now = time.time()
        columns.setdefault("status", "proposed")
        columns.setdefault("created", now)
        columns["updated"] = now
        keys = _checked(_CANDIDATE_COLUMNS, "candidates", columns)
        with self._lock:
            cur = self.conn.execute(f"INSERT INTO candidates({', '.join(keys)}) VALUES ({_marks(keys)})",
                                    [_encode(k, columns[k]) for k in keys])
            return int(cur.lastrowid)

    def update_candidate(self, cid: int, **columns: Any) -> None:
        """Set columns of `CandidateRow` (an unknown name is a KeyError)."""
        if not columns:
            return
        columns["updated"] = time.time()
        keys = _checked(_CANDIDATE_COLUMNS, "candidates", columns)
        with self._lock:
            self.conn.execute(f"UPDATE candidates SET {', '.join(f'{k} = ?' for k in keys)} WHERE id = ?",
                              [_encode(k, columns[k]) for k in keys] + [cid])

    # -- candidates: queries ------------------------------------------------------------------
    def candidate(self, cid: int) -> CandidateRow | None:
        rows = self._rows("SELECT * FROM candidates WHERE id = ?", [cid])
        return _candidate(rows[0]) if rows else None

    def candidates(self, kind: str | None = None, generation: int | None = None,
                   status: str | Sequence[str] | None = None, label: str | None = None) -> list[CandidateRow]:
        """Candidates by id, filtered by kind ("candidate" | "baseline"), generation, status(es), label."""
        w = _Where().eq("kind", kind).eq("generation", generation).among("status", status).eq("label", label)
        return [_candidate(r) for r in self._rows(f"SELECT * FROM candidates{w.sql} ORDER BY id", w.params)]

    def trained_candidates(self, generation: int | None = None) -> list[CandidateRow]:
        """Proposals (not baselines) that count against the budget."""
        return self.candidates("candidate", generation, TRAINED_STATUSES)

    def done_candidates(self) -> list[CandidateRow]:
        """Proposals whose runs are all finished with at least one success."""
        return self.candidates("candidate", status="done")

    def proposed_candidates(self, generation: int) -> list[CandidateRow]:
        """Proposals recorded but not validated yet (left over by a crash)."""
        return self.candidates("candidate", generation, "proposed")

    def trained_count(self, generation: int | None = None) -> int:
        """Proposals (not baselines) that are or will be trained: what the budget caps."""
        w = _Where().eq("kind", "candidate").eq("generation", generation).among("status", TRAINED_STATUSES)
        return self._count(f"SELECT COUNT(*) FROM candidates{w.sql}", w.params)

    def extra_search_runs(self, first_seed: int) -> int:
        """Search-part runs of proposals with another seed than their first (the races that re-run
        elites, finalists' re-runs): trainings that the budget counts besides one per proposal."""
        w = (_Where().eq("c.kind", "candidate").eq("e.part", "search").add("e.seed != ?", int(first_seed))
             .among("c.status", TRAINED_STATUSES))
        return self._count(f"SELECT COUNT(*) FROM evaluations e JOIN candidates c ON c.id = e.candidate_id{w.sql}",
                           w.params)

    def original_proposal_count(self, generation: int | None = None) -> int:
        """Proposals that are not repairs of another one."""
        w = _Where().eq("kind", "candidate").eq("generation", generation).add("repair_of IS NULL")
        return self._count(f"SELECT COUNT(*) FROM candidates{w.sql}", w.params)

    def children_of(self, parent_id: int, generation: int) -> list[CandidateRow]:
        """Trained proposals of `generation` whose only parent is `parent_id`."""
        w = (_Where().eq("kind", "candidate").eq("generation", generation).among("status", TRAINED_STATUSES)
             .add("json_array_length(parents) = 1")
             .add("EXISTS (SELECT 1 FROM json_each(candidates.parents) WHERE value = ?)", int(parent_id)))
        return [_candidate(r) for r in self._rows(f"SELECT * FROM candidates{w.sql} ORDER BY id", w.params)]

    def fingerprint_owner(self, fingerprint: str, before: int | None = None) -> int | None:
        """The first trained candidate with this fingerprint (a behavioural duplicate's original)."""
        w = _Where().eq("fingerprint", fingerprint).among("status", TRAINED_STATUSES)
        if before is not None:
            w.add("id < ?", before)
        rows = self._rows(f"SELECT id FROM candidates{w.sql} ORDER BY id LIMIT 1", w.params)
        return int(rows[0][0]) if rows else None

    def status_counts(self, kind: str = "candidate") -> dict[str, int]:
        """status -> number of rows of this kind."""
        rows = self._rows("SELECT status, COUNT(*) FROM candidates WHERE kind = ? GROUP BY status", [kind])
        return {str(s): int(n) for s, n in rows}

    # -- evaluations: writes ------------------------------------------------------------------
    def add_evaluation(self, candidate_id: int, part: str, seed: int, **columns: Any) -> int:
        """Queue a training run (no-op returning the existing id when it is already there)."""
        with self._lock:
            row = self.conn.execute(
                "SELECT id FROM evaluations WHERE candidate_id = ? AND part = ? AND seed = ?",
                (candidate_id, part, seed),
            ).fetchone()
            if row is not None:
                return int(row[0])
            columns = {"candidate_id": candidate_id, "part": part, "seed": seed, "status": "queued",
                       "created": time.time(), **columns}
            keys = _checked(_EVAL_COLUMNS, "evaluations", columns)
            cur = self.conn.execute(f"INSERT INTO evaluations({', '.join(keys)}) VALUES ({_marks(keys)})",
                                    [_encode(k, columns[k]) for k in keys])
            return int(cur.lastrowid)

    def update_evaluation(self, eid: int, **columns: Any) -> None:
        """Set columns of `EvaluationRow` (an unknown name is a KeyError)."""
        if not columns:
            return
        keys = _checked(_EVAL_COLUMNS, "evaluations", columns)
        with self._lock:
            self.conn.execute(f"UPDATE evaluations SET {', '.join(f'{k} = ?' for k in keys)} WHERE id = ?",
                              [_encode(k, columns[k]) for k in keys] + [eid])

    def start_evaluation(self, eid: int, run_dir: str, promote_cutoff: float | None) -> None:
        """Mark a queued run as sent to a worker (one more attempt)."""
        with self._lock:
            self.conn.execute(
                "UPDATE evaluations SET status = 'running', started = ?, attempts = COALESCE(attempts, 0) + 1, "
                "run_dir = ?, promote_cutoff = ? WHERE id = ?",
                (time.time(), run_dir, _encode("promote_cutoff", promote_cutoff), eid))

    def requeue_evaluation(self, eid: int) -> None:
        """A run lost to the infrastructure goes back to the queue, its results untouched."""
        with self._lock:
            self.conn.execute("UPDATE evaluations SET status = 'queued', started = NULL WHERE id = ?", (eid,))

    def requeue_running(self) -> int:
        """After a crash or a stop: runs left "running" go back to the queue; returns how many."""
        with self._lock:
            n = self.conn.execute("UPDATE evaluations SET status = 'queued' WHERE status = 'running'").rowcount
            self.conn.execute("UPDATE candidates SET status = 'validated' WHERE status = 'running'")
        return int(n or 0)

    # -- evaluations: queries -----------------------------------------------------------------
    def evaluation(self, eid: int) -> EvaluationRow | None:
        rows = self._rows("SELECT * FROM evaluations WHERE id = ?", [eid])
        return _evaluation(rows[0]) if rows else None

    def evaluations(self, status: str | Sequence[str] | None = None, kind: str | None = None,
                    staged: bool | None = None) -> list[EvaluationRow]:
        """Runs by id, filtered by status(es), their candidate's kind, and whether they are staged
        (`stage1_epochs` > 0)."""
        w = _Where().among("e.status", status)
        if kind is not None:
            w.add("e.candidate_id IN (SELECT id FROM candidates WHERE kind = ?)", kind)
        if staged is not None:
            w.add("COALESCE(e.stage1_epochs, 0) > 0" if staged else "COALESCE(e.stage1_epochs, 0) = 0")
        return [_evaluation(r) for r in self._rows(f"SELECT * FROM evaluations e{w.sql} ORDER BY e.id", w.params)]

    def evaluations_of(self, candidate_id: int, part: str | None = None,
                       status: str | Sequence[str] | None = None) -> list[EvaluationRow]:
        """One candidate's runs, by part then seed."""
        w = _Where().eq("candidate_id", candidate_id).eq("part", part).among("status", status)
        sql = f"SELECT * FROM evaluations{w.sql} ORDER BY part, seed, id"
        return [_evaluation(r) for r in self._rows(sql, w.params)]

    def queued_evaluations(self) -> list[EvaluationRow]:
        """Runs waiting for a worker, in dispatch order (priority, then age)."""
        return [_evaluation(r) for r in self._rows(
            "SELECT * FROM evaluations WHERE status = 'queued' ORDER BY priority, id")]

    def stage1_scores(self) -> list[float]:
        """The stage-1 scores of every staged search-part run so far (staged promotion's history)."""
        rows = self._rows("SELECT stage1_score FROM evaluations WHERE stage1_score IS NOT NULL AND part = 'search' "
                          "ORDER BY id")
        return [float(r[0]) for r in rows]

    def pending_count(self, generation: int | None = None, candidate_ids: Iterable[int] | None = None,
                      kind: str | None = None) -> int:
        """Queued or running runs (optionally of one generation / some candidates / a kind)."""
        w = _Where().among("e.status", PENDING_STATUSES).eq("c.generation", generation).eq("c.kind", kind)
        if candidate_ids is not None:
            w.among("c.id", [int(i) for i in candidate_ids])
        return self._count(f"SELECT COUNT(*) FROM evaluations e JOIN candidates c ON c.id = e.candidate_id{w.sql}",
                           w.params)


def json_ready(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A dict with non-finite floats replaced by None (for leaderboard.json)."""

    def conv(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return {k: conv(v) for k, v in obj.items()}
