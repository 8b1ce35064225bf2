"""The EvoMU search: fitness, archive and selection, schedules, staged promotion, de-duplication,
repair, failures, resume after kill -9, the report, and the `evolved` method reproducing a
candidate's run.

Most tests run the real driver, executor and worker processes with the FAKE evaluator job
(`tests/fakes.py`, `benchmark: tests.fakes:FakeBenchmark`, through the real candidate job: "metrics" are a deterministic function of the loss's
probe values, no training); one test trains a tiny real candidate end to end.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import torch

from evounlearn.benchmarks import FAILED, compute_fitness, get_fitness, passes_floor, rank_score
from evounlearn.benchmarks.tofu import tofu_fitness
from evounlearn.cli.main import main
from evounlearn.errors import ConfigError, InfrastructureError
from evounlearn.sandbox import JobResult
from evounlearn.search.archive import (
    Archive,
    choose_operator,
    eligible,
    lower_bound,
    sort_ranked,
    stage_cutoff,
    truncation,
)
from evounlearn.search.config import load_search_config, scaled_evomu_schedule
from evounlearn.search.driver import INFRA_RETRIES, SearchDriver
from evounlearn.search.executors import Executor, LocalExecutor
from evounlearn.search.proposers import Proposal, ProposalRequest, Proposer
from evounlearn.search.proposers.offline import OfflineProposer
from evounlearn.search.store import CandidateRow, EvaluationRow, Store

from .fakes import BENCHMARK

SIG = "def loss_fn(log_probs_forget, log_probs_retain, ref_log_probs_forget=None, ref_log_probs_retain=None):\n"
LOSS_A = SIG + '    """epochs: 3"""\n    return (2.0 * log_probs_forget).mean() - log_probs_retain.mean()\n'
LOSS_A_TWIN = SIG + '    """epochs: 3"""\n    return (log_probs_forget + log_probs_forget).mean() - log_probs_retain.mean()\n'
LOSS_C = SIG + "    return F.softplus(0.5 * (log_probs_forget - ref_log_probs_forget)).mean() - log_probs_retain.mean()\n"
LOSS_BROKEN = SIG + "    x = open('/etc/passwd')\n    return log_probs_forget.mean()\n"
LOSS_FIXED = SIG + "    return torch.sigmoid(3.0 * log_probs_forget).mean() - 0.5 * log_probs_retain.mean()\n"
LOSS_FAILS = SIG + "    return (0.777 * log_probs_forget).mean() - log_probs_retain.mean()\n"  # fake job raises


def fake_cfg(**over: Any) -> Any:
    base: dict[str, Any] = {
        "benchmark": BENCHMARK, "budget": 8, "workers": 2, "baselines": ["npo"], "finalists": 2,
        "ours.initial": 4, "ours.per_generation": 2, "ours.min_history": 2, "ours.stage1_epochs": 2,
        "ours.race_top": 0,  # one run per candidate (racing: `ours_run` and its own test)
    }
    base.update(over)
    return load_search_config(None, base)


class ScriptedProposer(Proposer):
    """Queued codes per request kind (then the offline proposer); records every request."""

    name = "scripted"

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.requests: list[ProposalRequest] = []
        self.offline = OfflineProposer()

    def propose(self, request: ProposalRequest) -> list[Proposal]:
        self.requests.append(request)
        queue = self.script.get(request.kind)
        if queue:
            out = []
            while queue and len(out) < request.n:
                out.append(Proposal(code=queue.pop(0), parents=request.parent_ids(),
                                    operator=f"scripted:{request.kind}", prompt=f"prompt {request.kind}",
                                    raw_response="<answer>...</answer>"))
            return out
        return self.offline.propose(request)


def search_runs_before_finals(store: Store) -> list[EvaluationRow]:
    """The proposals' search-part runs queued before the finalists' (whose first report-part run
    starts the finals): what the budget counts, one per proposal plus the races' re-runs."""
    runs = store.evaluations(kind="candidate")
    finals_start = min((e.id for e in runs if e.part == "report"), default=None)
    return [e for e in runs if e.part == "search" and (finals_start is None or e.id < finals_start)]


def budget_trainings(store: Store) -> int:
    return len(search_runs_before_finals(store))


# ------------------------------------------------------------------------------------------------
# pure logic


def test_tofu_fitness_clamps_and_floor_ranks_below_all_that_pass() -> None:
    s = {"model_utility": 0.8, "forget_rouge": 0.2, "forget_prob": 0.1}
    assert tofu_fitness(s) == pytest.approx(0.5 * 0.8 + 0.5 * (0.8 + 0.9) / 2)
    assert tofu_fitness({"model_utility": 1.3, "forget_rouge": -0.5, "forget_prob": 2.0}) == pytest.approx(
        0.5 * 1.0 + 0.5 * (1.0 + 0.0) / 2)
    assert compute_fitness("generated", {"model_utility": float("nan"), "forget_rouge": 0, "forget_prob": 0}) == FAILED
    assert compute_fitness("tofu", None) == FAILED
    assert passes_floor(0.72, 0.8, 0.9) and not passes_floor(0.71, 0.8, 0.9)
    weak_but_passing = rank_score(0.55, 0.75, 0.8, 0.9)
    strong_but_below = rank_score(0.95, 0.50, 0.8, 0.9)
    assert weak_but_passing > strong_but_below > rank_score(FAILED, 0.9, 0.8, 0.9)
    assert rank_score(None, None, 0.8, 0.9) == FAILED
    # MUSE: the other engineer's muse_fitness, imported lazily through the registry
    muse = {"verbmem_f": 0.2, "knowmem_f": 0.3, "knowmem_r": 0.5, "privleak": 0.0}
    assert compute_fitness("muse", muse) == pytest.approx(0.5 * (0.8 + 0.7 + 1.0) / 3 + 0.25)
    assert get_fitness("muse").utility_key == "knowmem_r"
    with pytest.raises(ConfigError):
        get_fitness("nope")


def _rec(i: int, gen: int, fit: float, util: float = 0.85, stage: int = 2, parents: list[int] | None = None,
         status: str = "done") -> CandidateRow:
    return CandidateRow(id=i, kind="candidate", generation=gen, fitness_search=fit, utility_search=util,
                        score_search=rank_score(fit, util, 0.9, 0.9), stage=stage, status=status,
                        parents=parents or [])


def test_archive_elitism_selection_and_child_bonus() -> None:
    cands = [_rec(1, 0, 0.80), _rec(2, 0, 0.90), _rec(3, 0, 0.95, util=0.5),  # #3 below the floor
             _rec(4, 1, 0.60, parents=[2]), _rec(5, 1, 0.61, parents=[2]), _rec(6, 1, FAILED, status="failed"),
             _rec(7, 1, 0.99, stage=1)]  # #7 stopped at stage 1: not eligible
    arch = Archive.build(cands, size=4)
    # elitism: the best of generation 0 survives a bad generation 1; floor before fitness
    assert [c.id for c in arch.members] == [2, 1, 5, 4]
    assert arch.best.id == 2
    # truncation (EvoMU) only looks at the latest generation
    assert [c.id for c in truncation(cands, 1, 2)] == [5, 4]
    assert [c.id for c in sort_ranked([c for c in cands if eligible(c)])] == [2, 1, 5, 4, 3]
    # weights: rank-based, divided by (1 + children): #2 has two children
    w = dict(zip([c.id for c in arch.members], arch.weights()))
    assert w[2] == pytest.approx(1.0 / 3.0) and w[1] == pytest.approx(0.5 ** 0.5)
    rng = random.Random(0)
    picks = [arch.choose(rng)[0].id for _ in range(2000)]
    assert picks.count(1) > picks.count(2) > 0  # the bonus for few children beats rank 1 here
    pair = arch.choose(random.Random(1), 2)
    assert len({c.id for c in pair}) == 2
    ops = [choose_operator(random.Random(i), 0.5, 0.25, 0.25, 4) for i in range(400)]
    assert {"refine", "crossover", "tune"} == set(ops)
    assert "crossover" not in {choose_operator(random.Random(i), 0.5, 0.5, 0.0, 1) for i in range(50)}


def test_evomu_schedule_sizes() -> None:
    full = scaled_evomu_schedule(80)
    assert [s for s, _, _ in full] == [10, 25, 30, 15]
    assert [(k, ch) for _, k, ch in full[1:]] == [(5, [5] * 5), (3, [10] * 3), (5, [3] * 5)]
    assert sum(s for s, _, _ in scaled_evomu_schedule(200)) == 80
    for budget in (1, 3, 8, 12, 40, 79):
        sched = scaled_evomu_schedule(budget)
        assert sum(s for s, _, _ in sched) == budget
        assert sched[0][0] >= 1
        for s, k, ch in sched[1:]:
            assert sum(ch) == s and len(ch) == k
    assert [s for s, _, _ in scaled_evomu_schedule(40)] == [5, 13, 15, 7]  # 80 / 2, largest remainder


def test_lower_bound_ranks_confirmed_means_above_lucky_draws() -> None:

    assert lower_bound(0.8, 1, 0.035) == pytest.approx(0.765)
    assert lower_bound(0.8, 4, 0.035) == pytest.approx(0.7825)
    assert lower_bound(0.8, 3, 0.0) == 0.8 and lower_bound(float("-inf"), 2, 0.035) == float("-inf")
    # a newcomer 0.01 above an elite confirmed on 3 seeds does not displace it; 0.03 above does
    assert lower_bound(0.81, 1, 0.035) < lower_bound(0.80, 3, 0.035) < lower_bound(0.83, 1, 0.035)
    cfg = load_search_config(None, {"ours.noise_sd": 0.05, "ours.lcb_z": 2.0})
    assert cfg.rank_noise_sd() == pytest.approx(0.1)
    assert load_search_config(None, {"mode": "evomu"}).rank_noise_sd() == 0.0  # the paper ranks on one run
    with pytest.raises(ConfigError, match="race_seeds"):
        load_search_config(None, {"ours.race_seeds": 0})


def test_stage_cutoff() -> None:
    assert stage_cutoff([0.5, 0.6], 0.5, min_history=4) is None
    assert stage_cutoff([0.5, 0.6, 0.7, 0.8], 0.5, 4) == 0.7
    assert stage_cutoff([0.5, 0.6, 0.7, 0.8, FAILED], 0.25, 4) == 0.8
    assert stage_cutoff([0.1, 0.2, 0.3], 1.0, 1) == 0.1


def test_config_defaults_and_errors() -> None:
    cfg = load_search_config()
    assert cfg.mode == "ours" and cfg.budget == 12 and cfg.proposer["kind"] == "offline"
    assert cfg.unlearn["train"]["lr"] == pytest.approx(5e-4) and cfg.unlearn["eval"]["max_new_tokens"] == 32
    cfg2 = load_search_config(None, ["unlearn.train.lr=1e-3", "budget=40"])
    assert cfg2.unlearn["train"]["lr"] == pytest.approx(1e-3) and cfg2.unlearn["train"]["batch_size"] == 4
    with pytest.raises(ConfigError):
        load_search_config(None, ["mode=bogus"])
    with pytest.raises(ConfigError):
        load_search_config(None, ["nonsense=1"])


# ------------------------------------------------------------------------------------------------
# driver runs with the fake evaluator


@pytest.fixture(scope="module")
def ours_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    d = tmp_path_factory.mktemp("ours") / "run"
    data = SearchDriver(fake_cfg(**{"budget": 10, "ours.race_top": 2}), d).run()
    return d, data


@pytest.mark.slow
def test_ours_run_budget_elitism_staging_and_outputs(ours_run: tuple[Path, dict[str, Any]]) -> None:
    d, data = ours_run
    store = Store(d / "search.sqlite")
    cands = store.candidates(kind="candidate")
    trained = [c for c in cands if c.trained]
    # the budget, exactly: one search run per proposal plus the races' re-runs of the elites, all
    # queued before the finalists' runs (the first report-part run of a proposal)
    races = [e for e in search_runs_before_finals(store) if e.seed != 0]
    assert budget_trainings(store) == 10 and store.trained_count() == len(trained) == 10 - len(races)
    assert races, "no elite was raced"
    assert store.get_meta("status") == "done"
    assert store.pending_count() == 0
    assert {c.generation for c in trained} >= {0, 1}
    # generation 0 starts with the literature seeds, then random trees / variants (ours.initial 4:
    # 3 seeds, 1 random); later generations use refine / crossover / tune
    ops0 = [c.operator for c in cands if c.generation == 0]
    assert ops0[:3] == ["seed:GA", "seed:GradDiff", "seed:NPO"] and ops0[3].startswith("random")
    later = {c.operator for c in cands if c.generation > 0}
    assert later and not any(o.startswith("seed:") for o in later)
    # staged promotion: promoted exactly when the stage-1 score reaches the cutoff of the moment
    staged = store.evaluations(status="done", staged=True)
    assert staged
    for e in staged:
        cut = e.promote_cutoff
        promoted = cut is None or e.stage1_score >= cut
        assert bool(e.promoted) == promoted, e
        assert (e.stage == 2) == promoted and (e.metrics is not None) == promoted
    assert any(not e.promoted for e in staged), "no candidate was stopped at stage 1"
    # the job reports every fitness of the benchmark in its summary (`fitness_<name>`)
    done = [e for e in store.evaluations(status="done") if e.stage == 2]
    assert done and all("fitness_fake" in (e.metrics or {}) for e in done)
    # every proposal recorded with its code, prompt/response fields, validation and timings
    for c in cands:
        assert c.code and c.status in ("done", "failed", "rejected", "duplicate", "unused")
        assert c.validation is not None or c.status in ("duplicate", "unused")
    # finalists: >= 2 seeds on the report part; baselines: 2 seeds on both parts
    fin = store.get_meta("finalists")
    assert len(fin) == 2 and store.get_meta("winner") in fin
    for cid in fin:
        c = store.candidate(cid)
        assert c.n_report == 2 and c.n_search >= 2 and c.fitness_report_std is not None
    base = store.candidates(kind="baseline")
    assert [b.label for b in base] == ["npo"] and base[0].n_report == 2 and base[0].n_search == 2
    # elitism: the winner is the best search-part candidate among the finalists
    best = sort_ranked([c for c in cands if c.status == "done" and c.stage != 1])[0]
    assert best.id in fin
    # outputs
    for name in ("leaderboard.md", "leaderboard.json", "best_loss.py", "best_config.yaml", "fitness.png"):
        assert (d / name).is_file(), name
    lb = json.loads((d / "leaderboard.json").read_text())
    assert lb["winner"]["id"] == store.get_meta("winner") and lb["baselines"]["npo"]["fitness_report_std"] is not None
    assert lb["counts"]["candidates"] == len(trained) and lb["counts"]["search_reruns"] >= len(races)
    assert "def loss_fn" in (d / "best_loss.py").read_text()
    assert (d / "fitness.png").read_bytes()[:4] == b"\x89PNG"
    assert data["winner"]["lineage"][0]["id"] == data["winner"]["id"]
    store.close()


@pytest.mark.slow
def test_report_command_prints_from_the_database(ours_run: tuple[Path, dict[str, Any]], capsys) -> None:
    d, data = ours_run
    (d / "leaderboard.md").unlink()
    assert main(["report", str(d), "--json"]) == 0
    out = capsys.readouterr().out
    # finalists: 2 report seeds; search seeds 2 or 3 (the raced elites have 3)
    assert re.search(r"search part: [23] seeds, report part: 2 seeds", out) and "npo" in out
    assert f"#{data['winner']['id']} (winner)" in out
    assert "lineage of the winner:" in out and "def loss_fn" in out
    assert (d / "leaderboard.md").is_file()
    last = json.loads(out.strip().splitlines()[-1])
    assert last["winner"]["id"] == data["winner"]["id"]
    assert main(["report", str(d.parent / "missing")]) == 2


@pytest.mark.slow
def test_dedup_repair_and_failed_candidate(tmp_path: Path) -> None:
    prop = ScriptedProposer({"initial": [LOSS_A, LOSS_A_TWIN, LOSS_BROKEN, LOSS_FAILS, LOSS_C],
                             "repair": [LOSS_FIXED]})
    d = tmp_path / "run"
    # budget 8 = 2 x ours.initial: generation 0 keeps its 4 (a smaller budget would shrink it)
    SearchDriver(fake_cfg(budget=8, **{"ours.initial": 4}), d, proposer=prop).run()
    store = Store(d / "search.sqlite")
    by_code = {c.code: c for c in store.candidates(kind="candidate")}
    a, twin = by_code[LOSS_A], by_code[LOSS_A_TWIN]
    # behavioural duplicate: recorded, not trained, not counted
    assert twin.status == "duplicate" and twin.duplicate_of == a.id
    assert twin.fingerprint == a.fingerprint
    assert not store.evaluations_of(twin.id)
    # repair: the rejection reason went back to the proposer; the fix is trained
    broken, fixed = by_code[LOSS_BROKEN], by_code[LOSS_FIXED]
    assert broken.status == "rejected" and "open" in broken.error
    rep = [r for r in prop.requests if r.kind == "repair"]
    assert rep and "open" in rep[0].repair_info()[1] and rep[0].repair_info()[0] == LOSS_BROKEN
    assert fixed.operator == "repair" and fixed.repair_of == broken.id and fixed.parents == [broken.id]
    assert fixed.status == "done" and fixed.fitness_search is not None
    assert fixed.prompt == "prompt repair" and fixed.raw_response
    # a failed candidate: -inf, its error recorded, never a finalist, the search went on
    bad = by_code[LOSS_FAILS]
    assert bad.status == "failed" and bad.fitness_search == FAILED and bad.score_search == FAILED
    assert "fake training failure" in bad.error
    assert bad.id not in store.get_meta("finalists")
    assert store.get_meta("status") == "done" and store.trained_count() == 8
    # epochs docstring recorded
    assert a.epochs == 3 and by_code[LOSS_C].epochs == 5
    store.close()


@pytest.mark.slow
def test_evomu_mode_follows_the_scaled_schedule(tmp_path: Path) -> None:
    d = tmp_path / "run"
    data = SearchDriver(fake_cfg(mode="evomu", budget=12, baselines=[]), d).run()
    store = Store(d / "search.sqlite")
    sched = scaled_evomu_schedule(12)
    cands = store.candidates(kind="candidate")
    for g, (size, _, _) in enumerate(sched):
        got = [c for c in cands if c.generation == g and c.trained]
        assert len(got) == size, (g, len(got), size)
    ranked_prev: dict[int, set[int]] = {}
    for g, (_, k, _) in enumerate(sched[1:], start=1):
        ranked_prev[g] = {c.id for c in truncation(cands, g - 1, k)}
        children = [c for c in cands if c.generation == g and c.trained]
        for c in children:  # mutation only, parents from the previous generation's top-k
            assert len(c.parents) == 1 and c.parents[0] in ranked_prev[g]
            assert c.operator != "crossover"
    assert not store.evaluations(staged=True)  # no staging in the paper's mode
    assert data["mode"] == "evomu" and data["counts"]["candidates"] == 12
    store.close()


@pytest.mark.slow
def test_extended_interface_search_and_baseline_epoch_variants(tmp_path: Path) -> None:
    d = tmp_path / "run"
    data = SearchDriver(fake_cfg(interface="extended", budget=3, finalists=1, baselines=["npo@7"],
                                 **{"ours.initial": 3}), d).run()
    store = Store(d / "search.sqlite")
    cands = store.trained_candidates()
    assert len(cands) == 3 and all("tok_logp_forget" in c.code for c in cands)
    assert all(c.interface == "extended" for c in cands)
    base = store.candidates(kind="baseline")
    assert [b.label for b in base] == ["npo@7"] and {e.epochs for e in store.evaluations_of(
        base[0].id)} == {7}
    assert data["winner"]["code"].startswith("def loss_fn(tok_logp_forget")
    with pytest.raises(ConfigError):
        SearchDriver(fake_cfg(baselines=["npo@x"]), tmp_path / "bad").run()
    store.close()


@pytest.mark.slow
def test_resume_after_kill_9_loses_only_runs_in_flight(tmp_path: Path) -> None:
    d = tmp_path / "run"
    cmd = [sys.executable, "-m", "evounlearn", "evolve", "--run-dir", str(d), f"benchmark={BENCHMARK}", "budget=10",
           "workers=2", "baselines=[npo]", "finalists=2", "ours.initial=4", "ours.per_generation=3",
           "unlearn.sleep_s=0.4"]
    root = str(Path(__file__).resolve().parents[1])  # the fake jobs live in tests/fakes.py
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    db = d / "search.sqlite"
    deadline = time.time() + 180
    snapshot: list[EvaluationRow] = []
    try:
        while time.time() < deadline:
            time.sleep(0.2)
            if not db.is_file():
                continue
            st = Store(db)
            done = st.evaluations(status="done", kind="candidate")
            if len(done) >= 4:
                os.kill(proc.pid, signal.SIGKILL)  # the driver only: its workers notice and exit
                proc.wait(10)
                snapshot = st.evaluations()
                st.close()
                break
            st.close()
        assert proc.poll() is not None, "the search finished or hung before it could be killed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert snapshot, "no progress before the deadline"
    st = Store(db)
    assert st.get_meta("status") == "running"
    in_flight = {e.id for e in snapshot if e.status == "running"}
    done_before = {e.id: e for e in snapshot if e.status == "done"}
    trained_before = st.trained_count()
    st.close()
    assert trained_before < 10
    assert main(["evolve", "--resume", str(d)]) == 0
    st = Store(db)
    assert st.get_meta("status") == "done" and st.pending_count() == 0
    assert budget_trainings(st) == 10  # the budget (proposals + race re-runs), respected across the crash
    after = {e.id: e for e in st.evaluations()}
    for eid, e in done_before.items():  # finished work is kept, not redone
        assert after[eid].status == "done" and after[eid].attempts == 1
        assert after[eid].fitness == e.fitness
    for eid in in_flight:  # runs in flight were re-queued and completed
        assert after[eid].status in ("done", "failed") and after[eid].attempts == 2
    assert all(e.attempts == 1 for eid, e in after.items() if eid not in in_flight)
    for c in st.trained_candidates():
        assert st.evaluations_of(c.id, part="search", status="done"), c.id
    st.close()


class FaultyExecutor(Executor):
    """A local executor whose candidate jobs are lost to the infrastructure while `lose(run_dir, n)`
    is true (n = how many times that run was submitted before): the job's result says `infra`."""

    def __init__(self, lose: Any, slots: int = 2) -> None:
        self.inner = LocalExecutor(slots)
        self.slots = slots
        self.lose = lose
        self.submitted: dict[str, int] = {}

    def submit(self, job: str, kwargs: Any, limits: Any = None) -> Future[JobResult]:
        rd = str(kwargs.get("run_dir", ""))
        n = self.submitted.get(rd, 0)
        self.submitted[rd] = n + 1
        if job.endswith(":evaluate_candidate") and self.lose(rd, n):
            fut: Future[JobResult] = Future()
            fut.set_result(JobResult(True, value={"run_dir": rd, "ok": False, "infra": True,
                                                  "error": "prepared model missing"}))
            return fut
        return self.inner.submit(job, kwargs, limits)

    def close(self, kill: bool = False) -> None:
        self.inner.close(kill)


@pytest.mark.slow
def test_infrastructure_faults_are_retried_then_stop_the_search_uncharged(tmp_path: Path, caplog) -> None:
    # a small budget shrinks generation 0 so that later generations still evolve
    cfg = fake_cfg(budget=4, baselines=[], finalists=1, report_seeds=1, **{"ours.stage1_epochs": 0})
    first = f"{1:05d}{os.sep}search-seed0"
    with caplog.at_level("INFO", logger="evounlearn.search"), FaultyExecutor(
            lambda rd, n: rd.endswith(first) and n < 2) as ex:
        SearchDriver(cfg, tmp_path / "ok", executor=ex).run()
    assert "budget 4: generation 0 shrunk from 4 to 2 so that later generations get 2 candidates" in caplog.text
    st = Store(tmp_path / "ok" / "search.sqlite")
    assert st.get_meta("status") == "done" and st.trained_count() == 4 and st.trained_count(generation=0) == 2
    e = st.evaluations_of(1, part="search", status="done")[0]
    assert e.attempts == 3 and e.seed == 0  # lost twice, never charged, done at the third try
    assert not st.candidates(kind="candidate", status="failed")
    st.close()
    # a fault that persists: the search stops after INFRA_RETRIES re-runs; nothing is charged
    d = tmp_path / "stop"
    second = f"{2:05d}{os.sep}search-seed0"
    with FaultyExecutor(lambda rd, n: rd.endswith(second)) as ex, pytest.raises(InfrastructureError) as err:
        SearchDriver(cfg, d, executor=ex).run()
    assert "infrastructure fault 3 times" in str(err.value) and len(str(err.value).splitlines()) == 1
    assert ex.submitted[next(k for k in ex.submitted if k.endswith(second))] == INFRA_RETRIES + 1
    st = Store(d / "search.sqlite")
    assert st.get_meta("status") == "interrupted"
    c2 = st.candidate(2)
    assert c2.status == "validated" and c2.fitness_search is None and c2.error is None
    assert [e.status for e in st.evaluations_of(2)] == ["queued"]
    assert not st.candidates(kind="candidate", status="failed") and st.pending_count() >= 1
    st.close()
    SearchDriver.for_resume(d).run()  # the infrastructure is back: the search continues
    st = Store(d / "search.sqlite")
    assert st.get_meta("status") == "done" and st.trained_count() == 4
    assert st.evaluations_of(2, part="search")[0].status == "done"
    st.close()


@pytest.mark.slow
def test_executor_runs_the_fake_job_in_a_worker(tmp_path: Path) -> None:
    with LocalExecutor(1) as ex:
        job = "evounlearn.search.candidate:evaluate_candidate"
        res = ex.submit(job, {"run_dir": str(tmp_path / "r"), "code": LOSS_C, "benchmark": BENCHMARK}).result()
        bad = ex.submit(job, {"run_dir": str(tmp_path / "b"), "code": LOSS_FAILS, "benchmark": BENCHMARK}).result()
    assert res.ok and res.value["ok"] and math.isfinite(res.value["fitness"])
    assert not bad.ok and "fake training failure" in bad.error


# ------------------------------------------------------------------------------------------------
# the evolved method on the tiny benchmark (one real candidate)


TOKEN_LOSS = (
    "def loss_fn(tok_logp_forget, mask_forget, tok_logp_retain, mask_retain, ref_tok_logp_forget=None,"
    " ref_tok_logp_retain=None):\n"
    '    """epochs: 1"""\n'
    "    f = (tok_logp_forget * mask_forget).sum(-1) / mask_forget.sum(-1).clamp(min=1.0)\n"
    "    r = (tok_logp_retain * mask_retain).sum(-1) / mask_retain.sum(-1).clamp(min=1.0)\n"
    "    d = (tok_logp_forget - ref_tok_logp_forget) * mask_forget\n"
    "    return F.softplus(d.sum(-1)).mean() - r.mean() + 0.1 * f.mean()\n"
)


@pytest.mark.slow
def test_evolved_method_reproduces_a_candidate_run(tiny_prepared, tmp_path: Path, capsys) -> None:
    from evounlearn.benchmarks.tofu import build_config, run_unlearning
    from evounlearn.config import to_dict
    from evounlearn.search.executors import LocalExecutor

    pcfg, p = tiny_prepared
    threads = torch.get_num_threads()
    unlearn = {"model": str(p.target), "retain_results": str(p.retain_results), "prepare": to_dict(pcfg),
               "threads": 1, "train": {"lr": 1e-3, "batch_size": 1}, "eval": {"max_new_tokens": 16}}
    code = LOSS_C.replace(SIG, SIG + '    """epochs: 2"""\n')
    rd = tmp_path / "cand"
    try:
        # the search's job, in an isolated worker, staged (evaluated after epoch 1, then continued)
        with LocalExecutor(1) as ex:
            res = ex.submit("evounlearn.search.candidate:evaluate_candidate", {
                "run_dir": str(rd), "code": code, "epochs": 2, "seed": 3, "forget_part": "search",
                "unlearn": unlearn, "stage1_epochs": 1, "promote_cutoff": None, "target_utility": 0.5}).result()
        assert res.ok, res.error
        v = res.value
        assert v["ok"] and v["stage"] == 2 and v["promoted"] and len(v["stages"]) == 1, v.get("error")
        assert math.isfinite(v["fitness"]) and len(v["loss_history"]) == v["epochs"] * 2
        assert not (rd / "model").exists() and (rd / "results.json").is_file()
        # the user's command with the candidate's files reproduces it exactly (same seed, same config)
        rc = main(["unlearn", "--method", "evolved", "--loss-file", str(rd / "loss.py"), "--config",
                   str(rd / "unlearn_config.yaml"), "--run-dir", str(tmp_path / "repro")])
        assert rc == 0
        a = json.loads((rd / "results.json").read_text())["summary"]
        b = json.loads((tmp_path / "repro" / "results.json").read_text())["summary"]
        assert a == b
        # the job's summary = the run's, plus every fitness of the benchmark (for the leaderboards)
        assert a == {k: x for k, x in v["summary"].items() if not k.startswith("fitness_")}
        assert {"fitness_evomu", "fitness_calibrated", "fitness_oracle"} <= set(v["summary"])
        assert v["fitness"] == v["summary"]["fitness_evomu"]  # no fitness= given: the default
        # the epochs docstring sets train.epochs unless given explicitly
        loss_file = tmp_path / "best.py"
        loss_file.write_text(LOSS_A)  # epochs: 3
        assert build_config("evolved", None, [f"loss.loss_file={loss_file}"]).train.epochs == 3
        assert build_config("evolved", None, [f"loss.loss_file={loss_file}", "train.epochs=2"]).train.epochs == 2
        # a malformed loss file: a one-line error
        capsys.readouterr()
        bad = tmp_path / "bad.py"
        bad.write_text(LOSS_BROKEN)
        assert main(["unlearn", "--method", "evolved", "--loss-file", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: loss function loss_fn rejected: line 2: forbidden name 'open'"), err
        assert len(err.splitlines()) == 1
        bad.write_text("def loss_fn(log_probs_forget):\n    return log_probs_forget(\n")
        assert main(["unlearn", "--method", "evolved", "--loss-file", str(bad)]) == 2
        assert "syntax error" in capsys.readouterr().err
        # the extended (token-level) interface trains through the engine
        tok_file = tmp_path / "tok.py"
        tok_file.write_text(TOKEN_LOSS)
        cfg = build_config("evolved", None, [f"loss.loss_file={tok_file}", f"model={p.target}",
                                             f"retain_results={p.retain_results}", f"run_dir={tmp_path / 'tok'}",
                                             "train.batch_size=2", "eval.max_new_tokens=8"])
        cfg.prepare = pcfg
        assert cfg.train.epochs == 1
        rec = run_unlearning(cfg)
        assert rec["steps"] >= 1 and all(math.isfinite(x) for x in rec["loss_history"])
        assert rec["summary"]["model_utility"] is not None
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("train_seeds, raced", [(3, False), (2, True)])
def test_races_and_the_lower_bound_count_trainings(tmp_path: Path, train_seeds: int, raced: bool) -> None:
    """With `train_seeds` k, `ours.race_seeds` (3) counts trainings: runs of 3 trainings are not
    raced, runs of 2 are (to 2 runs = 4 trainings); the lower bound uses trainings too."""
    cfg = fake_cfg(**{"budget": 6, "train_seeds": train_seeds, "ours.stage1_epochs": 0, "ours.race_top": 1,
                      "ours.race_seeds": 3, "baselines": [], "finalists": 1, "report_seeds": 1})
    SearchDriver(cfg, tmp_path / "run").run()
    store = Store(tmp_path / "run" / "search.sqlite")
    races = [e for e in search_runs_before_finals(store) if e.seed != 0]
    assert bool(races) is raced
    for c in store.candidates(kind="candidate"):
        if c.fitness_search is not None and c.score_search is not None and c.n_search:
            bound = lower_bound(c.fitness_search, c.n_search * train_seeds, cfg.rank_noise_sd())
            assert c.score_search == pytest.approx(bound) or c.score_search < bound - 1  # below the floor: -2
