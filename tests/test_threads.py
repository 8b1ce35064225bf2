"""The CPU thread default of the command line: free cores and a passive OpenMP wait
policy, chosen before torch is imported; a user's OMP_NUM_THREADS is kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evounlearn import threads
from evounlearn.threads import choose_threads, configure_threads, free_cpus, usable_cpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("cpus", "free", "expected"), [
    (2, None, 2), (2, 0.0, 1), (2, 0.4, 1), (2, 0.6, 1), (2, 1.6, 2), (2, 7.0, 2), (16, 3.4, 3), (1, 0.0, 1)])
def test_threads_follow_the_free_cores(cpus: int, free: float | None, expected: int) -> None:
    assert choose_threads(cpus, free) == expected


def test_a_users_omp_num_threads_is_kept() -> None:
    env = {"OMP_NUM_THREADS": "3"}
    choice = configure_threads(env)
    assert choice.threads == 3 and choice.source == "OMP_NUM_THREADS"
    assert env == {"OMP_NUM_THREADS": "3"}  # and nothing else is changed


def test_without_a_setting_the_free_cores_and_a_passive_wait_when_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(threads, "free_cpus", lambda: 0.0)  # busy: one thread, idle threads sleep
    env: dict[str, str] = {}
    choice = configure_threads(env)
    assert env == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    assert choice.threads == 1 and choice.source == "free cores" and choice.passive
    monkeypatch.setattr(threads, "free_cpus", lambda: 1.9)  # quiet: every core, OpenMP's own wait policy
    env = {}
    assert configure_threads(env).threads == 2 and env == {"OMP_NUM_THREADS": "2"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}  # a user's wait policy is kept
    monkeypatch.setattr(threads, "free_cpus", lambda: 1.0)
    assert configure_threads(env).threads == 1 and env == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"}


def test_free_cpus_is_a_fraction_of_the_usable_cores() -> None:
    free = free_cpus(0.05)
    assert free is None or 0.0 <= free <= (os.cpu_count() or 1) + 1e-6


def test_the_command_sets_threads_before_torch_is_imported() -> None:
    code = ("import os, sys\n"
            "os.environ.pop('OMP_NUM_THREADS', None); os.environ.pop('OMP_WAIT_POLICY', None)\n"
            "from evounlearn.cli.main import main\n"
            "rc = main(['eval', '--model', '/no/such/model'])\n"
            "print(rc, os.environ.get('OMP_NUM_THREADS'), os.environ.get('OMP_WAIT_POLICY', '-'), "
            "'torch' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    rc, n, policy, torch_loaded = out.stdout.split()
    assert rc == "2" and 1 <= int(n) <= usable_cpus() and policy in ("PASSIVE", "-") and torch_loaded == "False"
