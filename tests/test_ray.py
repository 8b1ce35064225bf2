"""`executor: ray` (search.executors.ray.RayExecutor) on a real local Ray instance (127.0.0.1).

Each job runs in the same isolated worker process as locally, kept warm by a Ray actor holding
one or more slots: same results and limit errors as the local pool, one sandbox reused by its
slot's jobs, one fork server per actor, each slot's share of the actor's GPUs, cancellation on
close(kill=True), and an actor process killed under its jobs reported as an infrastructure fault
and retried on a new actor. Then the search itself through Ray: same
fitness values as with the local executor, and a driver kill -9 + --resume.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="the Ray executor needs the optional extra: pip install 'ray>=2.9'")

from evounlearn.config import to_dict  # noqa: E402
from evounlearn.errors import ConfigError  # noqa: E402
from evounlearn.sandbox import CRASH, WALL_LIMIT, JobResult, Limits, WorkerPool  # noqa: E402
from evounlearn.search.config import RayConfig, load_search_config  # noqa: E402
from evounlearn.search.driver import SearchDriver  # noqa: E402
from evounlearn.search.executors import LocalExecutor, executor_options, make_executor  # noqa: E402
from evounlearn.search.executors.ray import RayExecutor, slot_devices  # noqa: E402
from evounlearn.search.store import Store  # noqa: E402
from tests.fakes import BENCHMARK  # noqa: E402
from tests.worker_jobs import DIAG, TRUSTED  # noqa: E402

# trains a model or starts sandbox workers / Ray: not in the everyday `-m "not slow"` subset
pytestmark = pytest.mark.slow

CANDIDATE_JOB = "evounlearn.search.candidate:evaluate_candidate"

LIMITS = Limits(wall_s=60, cpu_s=60, memory_mb=1024)
SIG = "def loss_fn(log_probs_forget, log_probs_retain, ref_log_probs_forget=None, ref_log_probs_retain=None):\n"
LOSS_C = SIG + "    return F.softplus(0.5 * (log_probs_forget - ref_log_probs_forget)).mean() - log_probs_retain.mean()\n"


@pytest.fixture(scope="module", autouse=True)
def ray_instance() -> Iterator[None]:
    """One local Ray instance for the module (executors reuse it and leave it running)."""
    # 4 declared GPUs (none exist): Ray assigns them to actors by CUDA_VISIBLE_DEVICES all the same
    ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", configure_logging=False)
    yield
    ray.shutdown()


def ray_executor(n: int = 2, retries: int = 2, limits: Limits = LIMITS, per_actor: int = 0, **kw: Any) -> RayExecutor:
    options = RayConfig(retries=retries, slots_per_actor=per_actor, **kw.pop("options", {}))
    return RayExecutor(n, limits, options=options, trusted_prefixes=TRUSTED, **kw)


def _essentials(r: JobResult) -> tuple[Any, ...]:
    return r.ok, r.value, (r.error or "").splitlines()[0] if r.error else None, r.killed_reason, r.infra


def test_jobs_give_the_same_results_as_the_local_pool(tmp_path: Path) -> None:
    jobs = [{"action": "echo", "value": {"a": [1, 2.5]}}, {"action": "raise"}, {"action": "recursion"},
            {"action": "exit"}, {"action": "alloc", "megabytes": 2048}]
    ex = ray_executor()
    with WorkerPool(2, trusted_prefixes=TRUSTED, **LIMITS.as_kwargs()) as pool:
        local = [pool.submit(DIAG, kw) for kw in jobs]
        remote = [ex.submit(DIAG, kw) for kw in jobs]
        for lf, rf in zip(local, remote):
            assert _essentials(rf.result(60)) == _essentials(lf.result(60))
        info = ex.submit(DIAG, {"action": "info"}).result(60)
    assert info.ok and info.value["marker"] == "1"  # inside the sandbox marker, in its own process group
    assert info.value["pgid"] == info.value["pid"] and "evounlearn-worker-" in info.value["cwd"]
    # the search's (fake) evaluation job, trusted by default
    kw = {"code": LOSS_C, "seed": 1, "benchmark": BENCHMARK}
    with LocalExecutor(1) as lex:
        lres = lex.submit(CANDIDATE_JOB, {"run_dir": str(tmp_path / "l"), **kw}).result(60)
    rres = ex.submit(CANDIDATE_JOB, {"run_dir": str(tmp_path / "r"), **kw}).result(60)
    ex.close()
    assert rres.ok and rres.value["fitness"] == lres.value["fitness"] and math.isfinite(rres.value["fitness"])
    assert rres.value["summary"] == lres.value["summary"]
    with pytest.raises(ValueError, match="trusted prefix"):  # an untrusted job path never runs
        RayExecutor(1, LIMITS).submit(DIAG, {}).result(60)


def test_slots_per_actor_and_each_slots_share_of_the_gpus() -> None:
    def slots(n: int, address: str = "", per: int = 0) -> list[int]:
        return RayExecutor(n, options=RayConfig(address=address, slots_per_actor=per)).actor_slots()

    assert slots(2) == [2] and slots(3, "auto") == [1, 1, 1] and slots(5, per=2) == [2, 2, 1]
    assert slots(2, "ray://head:10001", per=8) == [2]  # never more than the slots asked for
    assert slot_devices(["0", "1", "2", "3"], 2) == [["0", "1"], ["2", "3"]]
    assert slot_devices(["4", "5"], 2) == [["4"], ["5"]] and slot_devices(["3", "5", "7"], 2) == [["3"], ["5", "7"]]
    assert slot_devices(["0"], 2) == [["0"], ["0"]]  # num_gpus 0.5 per slot: both share the one device
    assert slot_devices([], 3) == [[], [], []]
    with pytest.raises(ConfigError, match="slots_per_actor"):
        RayExecutor(2, options=RayConfig(slots_per_actor=-1))
    with pytest.raises(ConfigError, match="num_gpus=0.75 x 2 slots per actor = 1.5"):
        RayExecutor(2, options=RayConfig(num_gpus=0.75))
    assert RayExecutor(2, options=RayConfig(num_gpus=0.5)).actor_slots() == [2]  # one GPU, shared


@pytest.mark.parametrize("per_actor", [2, 1])
def test_the_slots_of_one_actor_share_its_fork_server(per_actor: int) -> None:
    # two jobs at once, one per slot: with 2 slots per actor both sandboxes were forked by the
    # same fork server; with 1 per actor, each actor has its own. Each sees its own GPU.
    ex = ray_executor(n=2, per_actor=per_actor, options={"num_gpus": 1})
    futs = [ex.submit(DIAG, {"action": "info", "seconds": 2}) for _ in range(2)]  # one per slot, at once
    res = [f.result(60) for f in futs]
    ex.close()
    assert all(r.ok for r in res)
    a, b = (r.value for r in res)
    assert a["pid"] != b["pid"] and (a["ppid"] == b["ppid"]) == (per_actor == 2)
    assert max(a["started"], b["started"]) < min(a["ended"], b["ended"])  # the two slots ran at once
    assert sorted([a["visible_devices"], b["visible_devices"]]) in (["0", "1"], ["0", "2"], ["1", "2"], ["0", "3"],
                                                                     ["1", "3"], ["2", "3"])


def test_writes_are_confined_as_in_the_local_pool(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="evounlearn.search.executors.ray")
    allowed = tmp_path / "run"
    allowed.mkdir()
    ex = RayExecutor(2, LIMITS, trusted_prefixes=(*TRUSTED, "tests.hostile_jobs"), write_paths=[str(allowed)],
                     shared_paths=[str(allowed)])
    ex.start()
    logged = [r.getMessage() for r in caplog.records if "sandbox layers" in r.getMessage()]
    assert len(logged) == 1 and "landlock=" in logged[0]  # the start says which layers hold
    layers = ray.get([a.layers.remote() for a in ex._actors])
    landlock = layers[0][0].get("landlock", "")
    if not landlock.startswith("on"):
        ex.close()
        pytest.skip(f"Landlock unavailable here: landlock={landlock}")
    job = "tests.hostile_jobs:try_write"
    inside, scratch, outside = (ex.submit(job, {"path": p}).result(60).value
                                for p in (str(allowed / "ok.txt"), "scratch.txt", str(tmp_path / "escape.txt")))
    ex.close()
    assert all(w.get("landlock", "").startswith("on") for slots in layers for w in slots)
    assert inside == scratch == "written" and outside.startswith("blocked") and not (tmp_path / "escape.txt").exists()


def test_confined_workers_cannot_read_rays_session_nor_reach_its_sockets(tmp_path: Path) -> None:
    # a worker once read Ray's auth token and reached the raylet socket
    session = Path(ray._private.worker.global_worker.node.get_session_dir_path())
    secret = session / f"evounlearn-test-{os.getpid()}"
    secret.write_text("token")
    sockets = sorted(p for p in (session / "sockets").iterdir() if p.is_socket())
    ex = RayExecutor(1, LIMITS, trusted_prefixes=(*TRUSTED, "tests.hostile_jobs"), write_paths=[str(tmp_path)])
    try:
        ex.start()
        read = ex.submit("tests.hostile_jobs:try_read", {"path": str(secret)}).result(60).value
        reach = [ex.submit("tests.hostile_jobs:try_unix", {"address": str(p)}).result(60).value for p in sockets]
    finally:
        ex.close()
        secret.unlink()
    assert read.startswith("blocked") and all(r.startswith("blocked") for r in reach), (read, reach)


def test_each_slot_keeps_one_warm_sandbox_restarted_after_a_crash() -> None:
    ex = ray_executor(n=1)
    first, second = (ex.submit(DIAG, {"action": "info"}).result(60) for _ in range(2))
    crashed = ex.submit(DIAG, {"action": "exit"}).result(60)
    after = ex.submit(DIAG, {"action": "info"}).result(60)
    ex.close()
    assert first.ok and second.ok and first.value["pid"] == second.value["pid"]  # one sandbox, reused
    assert crashed.killed_reason == CRASH and not crashed.infra and ex.infra_retries == 0
    assert after.ok and after.value["pid"] != first.value["pid"]  # the worker restarted itself


def test_limits_are_enforced_inside_ray() -> None:
    short = Limits(wall_s=1.0, cpu_s=60, memory_mb=1024)
    ex = ray_executor(limits=short)
    with WorkerPool(1, trusted_prefixes=TRUSTED, **short.as_kwargs()) as pool:
        local = pool.run(DIAG, {"action": "sleep", "seconds": 20})
    t0 = time.monotonic()
    res = ex.submit(DIAG, {"action": "sleep", "seconds": 20}).result(60)
    ex.close()
    assert time.monotonic() - t0 < 15
    assert res.killed_reason == WALL_LIMIT == local.killed_reason and not res.infra
    assert res.error == local.error == "wall time limit exceeded (1.0s); worker killed"


def test_close_with_kill_cancels_the_jobs_in_flight() -> None:
    ex = ray_executor()
    futs = [ex.submit(DIAG, {"action": "sleep", "seconds": 60}) for _ in range(2)]
    time.sleep(3.0)
    t0 = time.monotonic()
    ex.close(kill=True)
    results = [f.result(1) for f in futs]
    assert time.monotonic() - t0 < 20
    for r in results:
        assert not r.ok and r.infra and "cancelled" in r.error


def _busy_actor_pids(name: str = "SandboxActor") -> list[int]:
    """Ray actor processes of class `name` running a job: an actor's title is "ray::<class>",
    "ray::<class>.run" while its `run` method runs."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith(f"ray::{name}.run"):
                out.append(int(d.name))
    return out


def _kill_actor_under_job(deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        pids = _busy_actor_pids()
        if pids:
            time.sleep(0.5)  # let the job start in the sandbox, then kill the actor under it
            os.kill(pids[0], signal.SIGKILL)
            return
        time.sleep(0.1)
    raise AssertionError("no Ray actor ran the job")


def test_a_ray_actor_killed_under_a_job_is_an_infra_fault_and_retried() -> None:
    # the job sleeps long enough that the kill lands while it runs, even on a loaded machine
    ex = ray_executor(retries=1, per_actor=1)
    fut = ex.submit(DIAG, {"action": "sleep", "seconds": 10})
    _kill_actor_under_job()
    res = fut.result(120)
    assert res.ok and res.value == 10 and not res.infra and ex.infra_retries == 1
    ex.close()
    ex = ray_executor(retries=0)  # no retries left: reported, distinguishable from a job's failure
    fut = ex.submit(DIAG, {"action": "sleep", "seconds": 10})
    _kill_actor_under_job()
    res = fut.result(120)
    ex.close()
    assert not res.ok and res.infra and "infrastructure fault" in res.error and ex.infra_retries == 0


def test_an_actor_of_two_slots_killed_under_both_jobs_is_replaced_once_and_both_retried() -> None:
    ex = ray_executor(n=2, retries=1)  # one actor holds both slots
    futs = [ex.submit(DIAG, {"action": "sleep", "seconds": 10}) for _ in range(2)]
    _kill_actor_under_job()
    res = [f.result(120) for f in futs]
    actors = len(ex._actors)
    after = [ex.submit(DIAG, {"action": "info"}) for _ in range(2)]
    assert all(f.result(60).ok for f in after)  # both slots of the new actor work
    ex.close()
    assert all(r.ok and r.value == 10 and not r.infra for r in res) and ex.infra_retries == 2
    assert actors == 1


def test_factory_and_shared_path_check(tmp_path: Path) -> None:
    cfg = load_search_config(None, {"executor": "ray", "ray.retries": 1, "benchmark": BENCHMARK})
    opts = executor_options(cfg, tmp_path / "run")
    ex = make_executor("ray", 1, LIMITS, **opts)
    assert isinstance(ex, RayExecutor) and ex.options.retries == 1
    assert ex.write_paths == [str((tmp_path / "run").resolve()), *ex.write_paths[1:]]  # confined as locally
    ex.start()  # the run dir is created and seen by the (single) node
    ex.close()
    assert (tmp_path / "run").is_dir() and not list((tmp_path / "run").iterdir())  # marker removed
    assert to_dict(cfg)["ray"]["retries"] == 1


# ------------------------------------------------------------------------------------------------
# the search through Ray (fake evaluator; after the fakes move to tests/fakes.py this may need the
# one-line change of how the fake benchmark is selected)


def fake_cfg(**over: Any) -> Any:
    base: dict[str, Any] = {
        "benchmark": BENCHMARK, "budget": 6, "workers": 2, "baselines": [], "finalists": 1, "report_seeds": 1, "ours.race_top": 0,
        "ours.initial": 4, "ours.per_generation": 2, "ours.min_history": 2,
    }
    base.update(over)
    return load_search_config(None, base)


def _fitness_by_code(run_dir: Path) -> dict[tuple[str, str, int], float | None]:
    st = Store(run_dir / "search.sqlite")
    out = {}
    for c in st.candidates():
        for e in st.evaluations_of(c.id):
            out[(c.code or c.method or "", e.part, e.seed)] = e.fitness
    st.close()
    return out


def test_search_through_ray_gives_the_local_fitness_values(tmp_path: Path) -> None:
    # one slot each: results arrive in the same order, so the same candidates are proposed
    SearchDriver(fake_cfg(workers=1), tmp_path / "local").run()
    SearchDriver(fake_cfg(workers=1, executor="ray"), tmp_path / "ray").run()
    local, remote = _fitness_by_code(tmp_path / "local"), _fitness_by_code(tmp_path / "ray")
    assert local and remote == local


def test_driver_kill_9_then_resume_with_ray(tmp_path: Path) -> None:
    d = tmp_path / "run"
    cmd = [sys.executable, "-m", "evounlearn", "evolve", "--run-dir", str(d), "executor=ray", f"benchmark={BENCHMARK}",
           "budget=6", "workers=2", "baselines=[]", "finalists=1", "report_seeds=1", "ours.race_top=0", "ours.initial=4",
           "ours.per_generation=2", "unlearn.sleep_s=0.5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    db = d / "search.sqlite"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            time.sleep(0.2)
            if db.is_file():
                st = Store(db)
                n_done = len(st.evaluations(status="done"))
                st.close()
                if n_done >= 1:
                    os.kill(proc.pid, signal.SIGKILL)  # the driver; its local Ray instance dies with it
                    proc.wait(10)
                    break
        assert proc.poll() is not None, "the search finished or hung before it could be killed"
    finally:
        # Ray's agent processes of the killed driver's instance outlive it (reparented): end them
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    st = Store(db)
    assert st.get_meta("status") == "running" and st.trained_count() < 6
    in_flight = {e.id for e in st.evaluations(status="running")}
    st.close()
    SearchDriver.for_resume(d).run()  # the module's Ray instance runs the rest
    st = Store(db)
    assert st.get_meta("status") == "done" and st.pending_count() == 0 and st.trained_count() == 6
    assert all(st.evaluation(eid).attempts == 2 for eid in in_flight)  # re-queued, run again
    st.close()
