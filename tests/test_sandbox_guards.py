"""Guards over the whole run, probes shaped like real batches, the hard per-step deadline enforced
from outside the worker, float64 failures, the checker's receiver rules."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from evounlearn.sandbox import STEP_DEADLINE, IsolatedWorker, check_program
from evounlearn.sandbox.guards import GuardConfig, TrainingGuard, TrainingGuardError
from evounlearn.sandbox.probe_inputs import ProbeProfile, make_probe
from evounlearn.sandbox.probes import validate_candidate
from tests import hostile_jobs

SIG = "def loss_fn(log_probs_forget, log_probs_retain, ref_log_probs_forget=None, ref_log_probs_retain=None):\n"


def _npo(a: Any, b: Any, c: Any, d: Any) -> Any:
    return -20.0 * F.logsigmoid(-0.1 * (a - c)).mean() - b.mean()


VALID = {  # valid, some unusual: none may trip a guard over a whole run
    "GA": lambda a, b, c, d: a.mean(),
    "GradDiff": lambda a, b, c, d: a.mean() - b.mean(),
    "NPO": _npo,
    "hinge": lambda a, b, c, d: F.relu(a - c + 0.5).mean() - b.mean(),
    "stay near the reference": lambda a, b, c, d: a.mean() + ((b - d) ** 2).mean(),
    "focal": lambda a, b, c, d: (torch.sigmoid(3.0 * a).detach() * a).mean() - F.logsigmoid(b - d).mean(),
    # retain rises above the reference, then the pull brings it back: rows above it pushed down
    "GradDiff + pull to the reference": lambda a, b, c, d: a.mean() - b.mean() + 2.0 * ((b - d) ** 2).mean(),
}


def _run(loss: Any, steps: int = 40, config: GuardConfig | None = None, b: int = 8,
         guard: TrainingGuard | None = None) -> TrainingGuard:
    """A small run: per-row log-probs from parameters, trained by SGD on `loss` under a guard."""
    torch.manual_seed(0)
    theta_f = torch.randn(64, requires_grad=True)
    theta_r = torch.randn(64, requires_grad=True)
    with torch.no_grad():
        ref_f, ref_r = F.logsigmoid(theta_f).clone(), F.logsigmoid(theta_r).clone()
    opt = torch.optim.SGD([theta_f, theta_r], lr=0.5)
    guard = guard or TrainingGuard("faithful", config)
    for _ in range(steps):
        i, j = torch.randperm(64)[:b], torch.randperm(64)[:b]
        args = [F.logsigmoid(theta_f)[i], F.logsigmoid(theta_r)[j], ref_f[i], ref_r[j]]
        opt.zero_grad()
        guard.call(loss, args).backward()
        opt.step()
    return guard


@pytest.mark.parametrize("name", list(VALID))
def test_valid_losses_run_a_whole_guarded_run(name: str) -> None:
    guard = _run(VALID[name])
    assert guard.calls == 40 and guard.checked == 40  # every step checked by default


def test_a_loss_that_turns_after_it_moved_is_stopped_when_it_turns() -> None:

    def patient(a: Any, b: Any, c: Any, d: Any) -> Any:  # honest until forget moved, then retain down
        forget = -20.0 * F.logsigmoid(-0.1 * (a - c)).mean()
        if float((a - c).detach().mean()) > -0.13:
            return forget + ((b - d) ** 2).mean()  # retain kept at the reference
        return forget + 2.0 * b.mean()

    guard = TrainingGuard("faithful")
    with pytest.raises(TrainingGuardError, match=r"increases with retain log-probs on real batches at step (\d+)") as e:
        _run(patient, guard=guard)
    step = int(e.value.args[0].split("at step ")[1].split()[0])
    assert step > 3  # after the window that guards used to watch


def test_retain_rows_above_the_reference_may_be_pulled_back_but_not_pushed_below() -> None:
    rows = torch.tensor([0.5, -0.5, 0.0])  # current - reference of three retain rows
    pull = TrainingGuard("faithful")
    lpr = (rows - 1.0).requires_grad_(True) * 1.0
    lpf = torch.full((3,), -1.0).requires_grad_(True) * 1.0
    args = [lpf, lpr, lpf.detach().clone(), torch.full((3,), -1.0)]
    pull.call(lambda a, b, c, d: a.mean() + ((b - d).clamp(min=0.0) ** 2).mean(), args)  # only the row above
    with pytest.raises(TrainingGuardError, match="increases with retain log-probs"):
        TrainingGuard("faithful").call(lambda a, b, c, d: a.mean() + b.mean(), args)


def test_rows_pushed_the_wrong_way_with_a_zero_sum_are_stopped() -> None:
    def spread(a: Any, b: Any, c: Any, d: Any) -> Any:  # the retain sum is ~0, half the rows go down
        return a.mean() - 0.001 * b.mean() - 4.0 * (b - b.mean()).abs().mean()

    with pytest.raises(TrainingGuardError, match="pushes retain rows down"):
        _run(spread)


def test_order_dependence_on_real_batches_is_stopped() -> None:
    def first_row(a: Any, b: Any, c: Any, d: Any) -> Any:  # the first row weighted 50x
        w = torch.ones_like(a)
        w = w + 49.0 * (torch.arange(a.shape[0]) == 0).float()
        return (w * a).mean() - b.mean()

    with pytest.raises(TrainingGuardError, match="order of the batch rows"):
        _run(first_row)


def test_retain_watchdog_stops_a_retain_collapse() -> None:
    def collapse(a: Any, b: Any, c: Any, d: Any) -> Any:  # uses retain, weakly, and lets it fall
        return 30.0 * a.mean() + 30.0 * (b.detach() - b).mean() * 0.0001 - 0.0001 * b.mean()

    def coupled(a: Any, b: Any, c: Any, d: Any) -> Any:
        return collapse(a, b, c, d)

    with pytest.raises(TrainingGuardError, match="retain log-probs fell below the reference"):
        _run_coupled(coupled)


def _run_coupled(loss: Any, steps: int = 60) -> None:
    """Forget and retain rows share parameters: pushing forget down drags retain down."""
    torch.manual_seed(0)
    theta = torch.randn(64, requires_grad=True)
    with torch.no_grad():
        ref = F.logsigmoid(theta).clone()
    opt = torch.optim.SGD([theta], lr=2.0)
    guard = TrainingGuard("faithful", GuardConfig(retain_margin=1.0))
    for _ in range(steps):
        i, j = torch.randperm(64)[:8], torch.randperm(64)[:8]
        lp = F.logsigmoid(theta)
        opt.zero_grad()
        guard.call(loss, [lp[i], lp[j], ref[i], ref[j]]).backward()
        opt.step()


def test_extended_probes_look_like_real_right_padded_batches() -> None:
    prof = ProbeProfile.from_dict({"token_counts": [3, 5, 9], "prompt_counts": [4, 6]})
    for seed in range(20):
        p = make_probe("extended", "normal", 16, seed, profile=prof)
        mf, mr = p["mask_forget"], p["mask_retain"]
        assert float(mf[:, 0].max()) == 0.0 and float(mr[:, 0].max()) == 0.0  # prompts first
        assert set(mf.sum(1).tolist()) <= {3.0, 5.0, 9.0}
        assert float((p["tok_logp_forget"] * (1 - mf)).abs().max()) == 0.0


def test_validation_sees_through_a_first_column_test() -> None:
    # honest only where column 0 of the mask is 1 (never on real batches)
    def sneaky(tf: Any, mf: Any, tr: Any, mr: Any, rf: Any, rr: Any) -> Any:
        f = (tf * mf).sum() / mf.sum()
        r = (tr * mr).sum() / mr.sum()
        return f - r if float(mf[:, 0].max()) == 1.0 else -f + r

    assert not validate_candidate(sneaky, "extended").ok


def test_probes_reject_rows_pushed_the_wrong_way() -> None:
    res = validate_candidate(lambda a, b, c, d: a.mean() - 0.001 * b.mean() - 4.0 * (b - b.mean()).abs().mean())
    assert not res.ok and "per row" in res.reason
    for name, fn in VALID.items():
        assert validate_candidate(fn).ok, name


def test_a_float64_failure_is_a_validation_failure() -> None:
    def f64_breaks(a: Any, b: Any, c: Any, d: Any) -> Any:  # float64 breaks it
        if a.dtype == torch.float64:
            raise RuntimeError("no float64 here")
        return _npo(a, b, c, d)

    res = validate_candidate(f64_breaks)
    assert not res.ok and "float64" in res.reason


@pytest.mark.parametrize(
    "body,expected",
    [
        ("return log_probs_forget.mean() * torch.finfo(log_probs_forget.dtype).max", "torch.finfo"),
        ("f = torch.finfo(log_probs_forget.dtype)\n    return log_probs_forget.mean()", "torch.finfo"),
        ("a = [1.0, 2.0]\n    a.sort(key=torch.exp)\n    return log_probs_forget.mean()", "not used as a value"),
        ("return [log_probs_forget.mean()].sort()", "list literal"),
        ("return log_probs_forget.eps", "torch.finfo(dtype).eps"),
        ("return log_probs_forget.mean() + torch.finfo(log_probs_forget.dtype).eps", None),
        ("return (log_probs_forget > -1.0).float().mean() * log_probs_forget.mean()", None),
    ],
)
def test_checker_rules_by_receiver(body: str, expected: str | None) -> None:
    reason = check_program(SIG + "    " + body + "\n", "faithful").reasons["loss_fn"]
    if expected is None:
        assert reason == "ok"
    else:
        assert expected in reason, reason


@pytest.fixture
def hostile_worker():
    w = IsolatedWorker(wall_limit_s=300, cpu_limit_s=300, memory_limit_mb=2048,
                       trusted_prefixes=hostile_jobs.TRUSTED, write_paths=())
    yield w
    w.close()


@pytest.mark.slow
def test_hard_deadline_kills_one_long_c_call_from_outside(hostile_worker: IsolatedWorker) -> None:
    # the call would run ~45 minutes; the worker's own wall limit (300 s) would say "wall time limit"
    res = hostile_worker.run("tests.hostile_jobs:hard_deadline_c_call", {"seconds": 0.5})
    assert res.killed_reason == STEP_DEADLINE, res
    assert hostile_worker.run("tests.hostile_jobs:layers").ok  # the next job gets a fresh worker


@pytest.mark.slow
def test_guard_stops_a_45_minute_c_call_within_seconds(hostile_worker: IsolatedWorker) -> None:
    res = hostile_worker.run("tests.hostile_jobs:guarded_c_call", {"honest_calls": 3})
    assert res.killed_reason == STEP_DEADLINE and "hard deadline of" in (res.error or ""), res
    # past the first calls: the budget (~0.05 s) + 2 s of grace, not the first calls' 10 s
    assert float((res.error or "").split("hard deadline of ")[1].split()[0]) < 5.0, res.error


@pytest.mark.slow
def test_check_train_lasts_as_long_as_a_search_candidate(tiny_prepared, tmp_path: Path) -> None:
    from evounlearn.search.loss_check import check_file

    cfg, _ = tiny_prepared
    path = tmp_path / "npo.py"
    path.write_text(SIG + '    """epochs: 3"""\n'
                    "    return -(2 / 0.1) * F.logsigmoid(-0.1 * (log_probs_forget - ref_log_probs_forget)).mean()"
                    " - log_probs_retain.mean()\n")
    # the tiny benchmark's search part is one batch: one step per epoch, the docstring's 3 epochs
    (full,) = check_file(path, train=True, prepare_config=cfg)
    assert full.ok and full.reason == "trained 3 steps with the guards on", full
    (short,) = check_file(path, train=True, prepare_config=cfg, train_steps=2)
    assert short.ok and short.reason == "trained 2 steps with the guards on", short


def test_check_steps_must_be_positive(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "npo.py"
    path.write_text(SIG + "    return log_probs_forget.mean()\n")
    r = subprocess.run([sys.executable, "-m", "evounlearn", "check", str(path), "--steps", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--steps must be a whole number >= 1" in r.stderr


def test_a_loss_slow_only_now_and_then_is_stopped_by_the_run_total() -> None:
    calls = {"n": 0}

    def sometimes_slow(a: Any, b: Any, c: Any, d: Any) -> Any:  # under every per-call limit
        calls["n"] += 1
        if calls["n"] % 4 == 0:
            time.sleep(0.1)
        return _npo(a, b, c, d)

    with pytest.raises(TrainingGuardError, match="in all against the model's"):
        _run(sometimes_slow, steps=60, config=GuardConfig(total_slack_s=0.3))


def test_a_loss_that_does_not_move_on_the_first_real_step_is_stopped() -> None:
    def frozen(a: Any, b: Any, c: Any, d: Any) -> Any:  # moves on probes, not on a batch on the reference
        x = _npo(a, b, c, d)
        return x.detach() + 0.0 * a.sum() if float((a - c).detach().abs().max()) == 0.0 else x

    with pytest.raises(TrainingGuardError, match="no gradient w.r.t. the forget log-probs on the first step"):
        _run(frozen)
