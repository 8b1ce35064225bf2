"""Hostile loss programs: recognisable fixed probes, validation time, defence in depth.

Every hostile program here is rejected or stopped with a clear reason; the legitimate losses
(faithful and token-level extended) still validate. Probes are drawn fresh for every validation
and, here, shaped like a run's real batches by a probe profile, as the search passes them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from evounlearn.sandbox import IsolatedWorker, WorkerPool, check_program
from evounlearn.sandbox.guards import GuardConfig, TrainingGuard, TrainingGuardError
from evounlearn.search.loss_check import check_file
from evounlearn.search.validation import validate_in_worker

ROOT = Path(__file__).resolve().parents[1]
SIG = "def loss_fn(log_probs_forget, log_probs_retain, ref_log_probs_forget=None, ref_log_probs_retain=None):\n"
XSIG = (
    "def loss_fn(tok_logp_forget, mask_forget, tok_logp_retain, mask_retain, "
    "ref_tok_logp_forget=None, ref_tok_logp_retain=None):\n"
)
#: like a real run: batch 32, the target's per-sequence log-probs near -0.6, answers of 3..20 tokens
PROFILE = {"batch_size": 32, "logp_min": -3.0, "logp_max": -0.01, "logp_mean": -0.6, "logp_sd": 0.4,
           "tokens_min": 3, "tokens_max": 20}
HONEST = "log_probs_forget.mean() - log_probs_retain.mean()"
FLIPPED = "-log_probs_forget.mean() + log_probs_retain.mean()"
NPO = "-(2 / 0.1) * F.logsigmoid(-0.1 * (log_probs_forget - ref_log_probs_forget)).mean() - log_probs_retain.mean()"
XHONEST = "(tok_logp_forget * mask_forget).sum() / mask_forget.sum() - (tok_logp_retain * mask_retain).sum() / mask_retain.sum()"
SPIN_TOP = "for i in range(1000000):\n    y = torch.ones(200, 200).exp().sum()\n"
SPIN = textwrap.indent(SPIN_TOP, "    ")  # inside an `if`
B = "log_probs_forget.shape[0]"


def loss(body: str, sig: str = SIG) -> str:
    return sig + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n"


def honest_unless(cond: str, honest: str = HONEST, flipped: str = FLIPPED, sig: str = SIG) -> str:
    """Honest on what the loss takes for probes (`cond`), the wrong way round elsewhere."""
    return loss(f"if {cond}:\n    return {honest}\nreturn {flipped}", sig)


# (label, program, expected reason substring): probe recognition, timing bombs, real-shape tricks
PROBE_CORPUS = [
    ("legacy batch sizes", honest_unless(f"{B} < 17"), "wrong direction"),
    ("legacy probe sum", honest_unless("abs(log_probs_forget.sum() + 10.40243) < 1e-3"), "wrong direction"),
    ("probe mean range", honest_unless("log_probs_forget.mean() < -1.5"), "wrong direction"),
    ("probe spread", honest_unless("log_probs_forget.std() > 1.0"), "wrong direction"),
    ("probe minimum", honest_unless("log_probs_forget.min() < -2.0"), "wrong direction"),
    ("float64 only", honest_unless("log_probs_forget.dtype == torch.float64"), "wrong direction"),
    (
        "float64 fingerprint thief",
        loss(f"if log_probs_forget.dtype == torch.float64:\n    return {NPO}\nreturn 3.0 * ({HONEST})"),
        "differently on float64 and float32",
    ),
    (
        "retain flip at real size",
        honest_unless(f"{B} < 17", flipped="log_probs_forget.mean() + log_probs_retain.mean()"),
        "retain log-probs",
    ),
    (
        "nan at real size",
        loss(f"if {B} > 20:\n    return {HONEST} + torch.log(log_probs_forget * 0.0 - 1.0).mean()\nreturn {HONEST}"),
        "non-finite loss",
    ),
    ("timing bomb on small batches", loss(f"if {B} < 20:\n{SPIN}return {HONEST}"), "wall time limit"),
    ("timing bomb everywhere", loss(f"x = {HONEST}\n{SPIN_TOP}return x"), "wall time limit"),
    ("timing bomb at real size", loss(f"if {B} == 32:\n{SPIN}return {HONEST}"), "wall time limit"),
    (
        "memory bomb at real size",
        loss(f"if {B} == 32:\n    z = torch.zeros(100000, 100000)\n    return {HONEST} + z.sum()\nreturn {HONEST}"),
        "memory limit",
    ),
    (
        "order dependent at real size",
        loss(f"if {B} > 20:\n    return {HONEST} + log_probs_forget[0]\nreturn {HONEST}"),
        "order of the batch rows",
    ),
    (
        "constant at real size",
        loss(f"if {B} > 20:\n    return (log_probs_forget * 0.0).sum() + 1.0\nreturn {HONEST}"),
        "zero gradient",
    ),
    (
        "extended: legacy width",
        honest_unless("tok_logp_forget.shape[1] == 7", XHONEST, f"-({XHONEST})", XSIG),
        "wrong direction",
    ),
    (
        "extended: legacy mask total",
        honest_unless("mask_forget.sum() < 40", XHONEST, f"-({XHONEST})", XSIG),
        "wrong direction",
    ),
]

# (label, program, expected reason substring): what a loss would need to escape
STATIC_CORPUS = [
    ("write a file", loss("fh = open(1, 2)\nreturn log_probs_forget.mean()"), "forbidden name 'open'"),
    ("torch.save", loss("torch.save(log_probs_forget, 1)\nreturn log_probs_forget.mean()"), "not allowed"),
    ("import socket", loss("import socket\nreturn log_probs_forget.mean()"), "import not allowed"),
    ("environment for seeds", loss("import os\nreturn log_probs_forget.mean() * 0 + len(os.environ)"), "import not allowed"),
    ("peek at the seed", loss("return log_probs_forget.mean() * torch.initial_seed()"), "not allowed"),
    ("dunder import", loss("s = __import__(1)\nreturn log_probs_forget.mean()"), "__import__"),
    ("getattr escape", loss("f = getattr(torch, 1)\nreturn log_probs_forget.mean()"), "forbidden name 'getattr'"),
    ("numpy file", loss("log_probs_forget.numpy().tofile(1)\nreturn log_probs_forget.mean()"), "not allowed"),
    ("requires_grad probe test", honest_unless("log_probs_forget.requires_grad"), "not allowed"),
]


LIMITS = {"wall_limit_s": 8, "cpu_limit_s": 8, "memory_limit_mb": 1024}  # validation deadline 6.4 s


@pytest.fixture(scope="module")
def worker():
    w = IsolatedWorker(wall_limit_s=8, cpu_limit_s=8, memory_limit_mb=1024, isolate_network=True,
                       write_paths=(), trusted_prefixes=("evounlearn.", "tests.hostile_jobs"))
    yield w
    w.close()


def one(records: list[dict], name: str = "loss_fn") -> dict:
    return next(r for r in records if r["name"] == name)


def test_corpus_is_large_enough() -> None:
    assert len(PROBE_CORPUS) + len(STATIC_CORPUS) >= 20


@pytest.mark.slow
@pytest.mark.parametrize("label,source,expected", PROBE_CORPUS, ids=[c[0] for c in PROBE_CORPUS])
def test_probe_recognition_corpus_rejected(worker: IsolatedWorker, label: str, source: str, expected: str) -> None:
    assert check_program(source, "extended" if "tok_logp" in source else "faithful").reasons["loss_fn"] == "ok"
    iface = "extended" if "tok_logp" in source else "faithful"
    t0 = time.monotonic()
    rec = one(validate_in_worker(source, iface, worker, profile=PROFILE, **LIMITS))
    assert not rec["ok"] and expected in rec["reason"], (label, rec["reason"])
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize("label,source,expected", STATIC_CORPUS, ids=[c[0] for c in STATIC_CORPUS])
def test_escape_corpus_rejected_statically(label: str, source: str, expected: str) -> None:
    reason = check_program(source).reasons["loss_fn"]
    assert reason != "ok" and expected in reason, (label, reason)


LEGIT = {
    "GA": loss("return log_probs_forget.mean()"),
    "GradDiff": loss(f"return {HONEST}"),
    "NPO": loss(f"return {NPO}"),
    "hinge": loss("return F.relu(log_probs_forget - ref_log_probs_forget + 0.5).mean() - log_probs_retain.mean()"),
    "extended NPO": loss(
        "lf = (tok_logp_forget * mask_forget).sum(1) / mask_forget.sum(1)\n"
        "rf = (ref_tok_logp_forget * mask_forget).sum(1) / mask_forget.sum(1)\n"
        "lr = (tok_logp_retain * mask_retain).sum(1) / mask_retain.sum(1)\n"
        "return -20.0 * F.logsigmoid(-0.1 * (lf - rf)).mean() - lr.mean()",
        XSIG,
    ),
    "extended token-level": loss(f"return {XHONEST}", XSIG),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LEGIT))
@pytest.mark.parametrize("profile", [None, PROFILE], ids=["default probes", "profiled probes"])
def test_legitimate_losses_still_validate(worker: IsolatedWorker, name: str, profile: dict | None) -> None:
    src = LEGIT[name]
    for _ in range(3):  # fresh probes every time: valid on every draw
        rec = one(validate_in_worker(src, "extended" if "tok_logp" in src else "faithful", worker, profile=profile))
        assert rec["ok"], (name, rec["reason"])


def test_profile_from_the_target_values_shapes_the_probes() -> None:
    from evounlearn.sandbox.probe_inputs import ProbeProfile, make_probe, profile_from_values

    prof = ProbeProfile.from_dict(profile_from_values([-0.2, -0.4, -0.3, -0.9], [3, 9, 5], batch_size=32))
    assert prof.batch_size == 32 and prof.logp_min == -0.9 and prof.logp_max == -0.2 and prof.tokens_max == 9
    probe = make_probe("faithful", "normal", 32, 5, profile=prof)["log_probs_forget"]
    assert probe.shape == (32,) and float(probe.min()) >= -0.9 and float(probe.max()) <= -0.2
    mask = make_probe("extended", "normal", 4, 5, profile=prof)["mask_forget"]
    # answers of 3..9 tokens after a prompt (a real batch's layout): never an answer at column 0
    assert mask.shape[0] == 4 and set(mask.sum(1).tolist()) <= set(range(3, 10)) and float(mask[:, 0].max()) == 0


@pytest.mark.slow
def test_probes_are_fresh_for_every_validation(worker: IsolatedWorker) -> None:
    # a loss whose value depends on the probe values: the fingerprint probes are fixed by the
    # seed (same value), the validation probes are not (the legacy sum never comes back)
    src = loss(f"return {NPO}")
    a = one(validate_in_worker(src, "faithful", worker, fingerprint_seed=7))
    b = one(validate_in_worker(src, "faithful", worker, fingerprint_seed=7))
    c = one(validate_in_worker(src, "faithful", worker, fingerprint_seed=8))
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]
    assert a["probe_values"] == b["probe_values"] != c["probe_values"]


@pytest.mark.slow
def test_fingerprint_theft_fails_with_a_secret_seed(worker: IsolatedWorker) -> None:
    thief = f"if {B} == 6:\n    return {NPO}\nreturn 2.0 * ({NPO})"
    src = loss(f"return {NPO}").replace("loss_fn(", "loss_fn_honest(") + loss(thief).replace("loss_fn(", "loss_fn_thief(")
    for seed in (1, 2, 3, 4, 5):  # the fixed legacy probes had B=6: the thief's tell
        recs = {r["name"]: r for r in validate_in_worker(src, "faithful", worker, all_functions=True, fingerprint_seed=seed)}
        assert recs["loss_fn_honest"]["ok"] and recs["loss_fn_thief"]["ok"]
        assert recs["loss_fn_honest"]["fingerprint"] != recs["loss_fn_thief"]["fingerprint"], seed
    profiled = {r["name"]: r for r in validate_in_worker(src, "faithful", worker, all_functions=True,
                                                          profile=PROFILE, fingerprint_seed=123)}
    assert profiled["loss_fn_honest"]["fingerprint"] != profiled["loss_fn_thief"]["fingerprint"]


# -- validation time -------------------------------------------------------------------------


def _many(n: int, body: str) -> str:
    return "\n".join(loss(body).replace("loss_fn(", f"loss_fn_{i}(") for i in range(n))


@pytest.mark.slow
def test_only_the_loss_in_use_is_validated(worker: IsolatedWorker) -> None:
    src = _many(3, f"return {HONEST}") + loss(f"x = {HONEST}\n{SPIN_TOP}return x").replace("loss_fn(", "loss_fn_bomb(")
    t0 = time.monotonic()
    records = validate_in_worker(src, "faithful", worker)
    assert [r["name"] for r in records] == ["loss_fn_0"] and records[0]["ok"]
    records = validate_in_worker(src, "faithful", worker, function="loss_fn_2")
    assert [r["name"] for r in records] == ["loss_fn_2"] and records[0]["ok"]
    assert time.monotonic() - t0 < 10  # the bomb was never run


@pytest.mark.slow
def test_many_runaway_losses_share_one_deadline(worker: IsolatedWorker) -> None:
    src = _many(32, f"x = {HONEST}\n{SPIN_TOP}return x")
    t0 = time.monotonic()
    records = validate_in_worker(src, "faithful", worker, all_functions=True, wall_limit_s=10, cpu_limit_s=10)
    assert len(records) == 32 and not any(r["ok"] for r in records)
    assert all("wall time limit" in r["reason"] or "time limit" in r["reason"] for r in records)
    assert time.monotonic() - t0 < 20  # one deadline (8 s), not 32 of them


# -- worker confinement -----------------------------------------------------------------------


@pytest.mark.slow
def test_results_come_back_as_json(worker: IsolatedWorker) -> None:
    res = worker.run("tests.hostile_jobs:return_tuple_and_tensor")
    assert res.ok and res.value == {"t": [1, 2], "x": [1.5, 2.5], "s": 3.0}
    res = worker.run("tests.hostile_jobs:return_object")
    assert not res.ok and "not JSON-ready" in (res.error or "")
    assert worker.run("evounlearn.sandbox.jobs:list_functions", {"source": loss("return 1")}).ok


@pytest.mark.slow
def test_worker_cannot_open_a_socket(worker: IsolatedWorker) -> None:
    worker.start()
    if not worker.layers.get("netns", "").startswith("on"):
        pytest.skip(f"network namespaces refused here: netns={worker.layers.get('netns')}")
    res = worker.run("tests.hostile_jobs:try_socket")
    assert res.ok and res.value.startswith("blocked"), res.value


@pytest.mark.slow
def test_worker_cannot_write_outside_its_scratch_dir(worker: IsolatedWorker, tmp_path: Path) -> None:
    worker.start()
    if not worker.layers.get("landlock", "").startswith("on"):
        pytest.skip(f"Landlock unavailable here: landlock={worker.layers.get('landlock')}")
    for target in (tmp_path / "escape.txt", Path("/tmp") / f"escape-{os.getpid()}.txt"):
        res = worker.run("tests.hostile_jobs:try_write", {"path": str(target)})
        assert res.ok and res.value.startswith("blocked"), (target, res.value)
        assert not target.exists()
    res = worker.run("tests.hostile_jobs:try_write", {"path": "inside.txt"})  # its scratch dir (cwd)
    assert res.ok and res.value == "written"


@pytest.mark.slow
def test_worker_output_goes_to_its_log_not_the_terminal(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    log = tmp_path / "worker.log"
    with IsolatedWorker(trusted_prefixes=("evounlearn.", "tests.hostile_jobs"), log_file=str(log)) as w:
        assert w.run("tests.hostile_jobs:warn_and_print", {"n": 50}).ok
        spam = loss("return F.mse_loss(log_probs_forget, log_probs_forget.mean(0, keepdim=True).expand(3))")
        w.run("evounlearn.sandbox.jobs:validate_source", {"source": spam})
    out, err = capfd.readouterr()
    assert "hostile" not in out + err and "UserWarning" not in err
    text = log.read_text()
    assert "hostile warning 0" in text and "hostile raw stderr" in text and "hostile print 49" in text


@pytest.mark.slow
def test_layers_are_logged_once_per_pool(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="evounlearn.sandbox.workers")
    with WorkerPool(2, write_paths=()) as pool:
        pool.start()
    lines = [r.getMessage() for r in caplog.records if "sandbox layers" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("sandbox layers: rlimits, pdeathsig")
    assert "netns=" in lines[0] and "landlock=" in lines[0]


DRIVER = """
import json, sys, time
sys.path.insert(0, {root!r})
from evounlearn.sandbox import WorkerPool
pool = WorkerPool(2, trusted_prefixes=("evounlearn.", "tests.worker_jobs"))
pool.start()
futs = [pool.submit("tests.worker_jobs:diagnostic_job", {{"action": "sleep", "seconds": 120}}) for _ in range(2)]
time.sleep(1.0)
print(json.dumps([w.pid for w in pool.workers]), flush=True)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            state = next(line for line in fh if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return "Z" not in state.split()[1]  # a zombie is dead (its parent has not reaped it yet)


@pytest.mark.slow
def test_workers_die_with_a_killed_driver() -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER.format(root=str(ROOT / "src"))], cwd=str(ROOT), env=env,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pids = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        assert len(pids) == 2 and all(p and _alive(p) for p in pids)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver's process group; the workers have their own
        proc.wait(10)
        time.sleep(2.0)
        assert not [p for p in pids if _alive(p)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


# -- `evounlearn check` -----------------------------------------------------------------------


def _cli(path: Path, *extra: str) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "evounlearn", "check", str(path), *extra], capture_output=True,
                       text=True, env=env, timeout=120)
    return r.returncode, r.stdout, time.monotonic() - t0


@pytest.mark.slow
@pytest.mark.parametrize(
    "label,source",
    [
        ("static escape", STATIC_CORPUS[2][1]),
        ("timing bomb", PROBE_CORPUS[10][1]),
        ("many runaway losses", _many(32, f"x = {HONEST}\n{SPIN_TOP}return x")),
        ("direction flip", PROBE_CORPUS[1][1]),
    ],
)
def test_check_rejects_hostile_programs_quickly(tmp_path: Path, label: str, source: str) -> None:
    path = tmp_path / "loss.py"
    path.write_text(source)
    code, out, seconds = _cli(path)
    assert code == 2 and "rejected" in out, (label, out)
    assert seconds < 60


@pytest.mark.slow
def test_check_accepts_legitimate_programs(tmp_path: Path) -> None:
    path = tmp_path / "loss.py"
    path.write_text(LEGIT["NPO"] + "\n" + LEGIT["GradDiff"].replace("loss_fn(", "loss_fn_2("))
    code, out, _ = _cli(path)
    assert code == 0, out
    assert "loss_fn: ok" in out and "loss_fn_2: ok" in out
    verdicts = check_file(path)
    assert [v.name for v in verdicts] == ["loss_fn", "loss_fn_2"] and all(v.ok for v in verdicts)


# -- training guards --------------------------------------------------------------------------


def _faithful_args(b: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lpf = (-torch.rand(b, generator=g) * 0.5).requires_grad_(True) * 1.0
    lpr = (-torch.rand(b, generator=g) * 0.5).requires_grad_(True) * 1.0
    return [lpf, lpr, lpf.detach().clone(), lpr.detach().clone()]


def test_guard_stops_the_wrong_direction_at_the_step_it_happens() -> None:
    guard = TrainingGuard("faithful", GuardConfig(direction_steps=3))
    calls = {"n": 0}

    def sneaky(lpf, lpr, rf, rr):  # honest for one step, then the other way round
        calls["n"] += 1
        return lpf.mean() if calls["n"] <= 2 else -lpf.mean()

    guard.call(sneaky, _faithful_args())
    with pytest.raises(TrainingGuardError, match=r"training guard: loss decreases in forget log-probs on real batches at step 2"):
        guard.call(sneaky, _faithful_args())


@pytest.mark.slow
def test_guard_stops_a_slow_loss_and_a_retain_flip() -> None:
    def slow(lpf, lpr, rf, rr):
        x = lpf.mean()
        for _ in range(200000):
            x = x + 0.0
        return x

    guard = TrainingGuard("faithful", GuardConfig(time_floor_s=0.01))
    with pytest.raises(TrainingGuardError, match="over its budget"):  # slow on every call: stopped
        for _ in range(8):
            guard.call(slow, _faithful_args())
    assert guard.calls < 8
    with pytest.raises(TrainingGuardError, match="increases with retain log-probs"):
        TrainingGuard("faithful").call(lambda a, b, c, d: a.mean() + b.mean(), _faithful_args())
    assert TrainingGuard("faithful").call(lambda a, b, c, d: -F.logsigmoid(-(a - c)).mean(), _faithful_args())


@pytest.mark.slow
def test_check_train_stops_a_loss_that_behaves_only_on_probes(tiny_prepared, tmp_path: Path) -> None:
    cfg, _ = tiny_prepared
    # backwards only on a small batch exactly on the reference: the first step of a real run; no
    # probe lands there (the "init" probe, on the reference, has at least 64 rows; no other is on it)
    near = "(log_probs_forget - ref_log_probs_forget).abs().max()"
    sneaky = honest_unless(f"{B} > 16 or {near} > 0.0", NPO, f"-({NPO})")
    assert one(validate_in_worker(sneaky, "faithful"))["ok"]  # it passes validation
    path = tmp_path / "sneaky.py"
    path.write_text(sneaky + "\n" + loss(f"return {NPO}").replace("loss_fn(", "loss_fn_npo("))
    verdicts = {v.name: v for v in check_file(path, train=True, prepare_config=cfg, train_steps=3)}
    assert verdicts["loss_fn"].stage == "training" and not verdicts["loss_fn"].ok
    assert "training guard: loss decreases in forget log-probs on real batches at step" in verdicts["loss_fn"].reason
    assert verdicts["loss_fn_npo"].ok, verdicts["loss_fn_npo"].reason


def test_guard_options_are_config_keys(tmp_path: Path) -> None:
    from evounlearn.benchmarks.tofu import build_config

    path = tmp_path / "npo.py"
    path.write_text(LEGIT["NPO"])
    cfg = build_config("evolved", None, [f"loss.loss_file={path}", "loss.guard=false", "loss.guard_steps=5"])
    assert cfg.loss["guard"] is False and cfg.loss["guard_steps"] == 5
    assert build_config("evolved", None, [f"loss.loss_file={path}"]).loss["guard"] is True
