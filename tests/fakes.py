"""A fake benchmark for the search tests: the real candidate job (`evounlearn.search.candidate`)
runs it through the Benchmark protocol, without training. The "metrics" are a deterministic
function of the loss's probe values (its behaviour). A search uses it with `benchmark:
tests.fakes:FakeBenchmark` (workers import this module: the repository root is on sys.path under
pytest, and on PYTHONPATH for the CLI subprocess tests).

Options (the search config's `unlearn` mapping): `sleep_s` makes every run take that long."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from typing import Any

from evounlearn.benchmarks import Benchmark, FitnessSpec, Reference, RunResult
from evounlearn.benchmarks.tofu import TOFU_FORMULA, tofu_fitness

FAKE_FAIL_MARKER = "0.777"  # a loss containing this constant "fails during training"
BENCHMARK = "tests.fakes:FakeBenchmark"


class FakeTrainingCrash(BaseException):
    """Not an Exception: it passes the candidate job's handler, like a crash of the worker's job."""


def _unit(*parts: Any) -> float:
    h = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


def fake_metrics(probe_values: list[float], seed: int, part: str, key: str, stage: int = 2) -> dict[str, float]:
    """Deterministic stand-in metrics from a loss's probe values (its behaviour)."""
    v = [float(x) for x in probe_values] + [0.0, 0.0, 0.0]
    base = math.tanh(abs(v[0]) / 10.0)
    mu = 0.6 + 0.3 * _sig(2.0 * math.sin(v[1] + v[2])) + 0.01 * (_unit(key, seed, part, "mu") - 0.5)
    rouge = 0.6 * (1.0 - base) * _sig(math.cos(v[1])) + 0.01 * _unit(key, seed, part, "r")
    prob = 0.5 * _sig(v[2] / 3.0 - base) + 0.01 * _unit(key, seed, part, "p")
    if stage == 1:  # less trained: forgets less
        rouge, prob = min(1.0, rouge + 0.1), min(1.0, prob + 0.1)
    return {"model_utility": mu, "forget_rouge": rouge, "forget_prob": prob,
            "forget_quality": _unit(key, seed, part, "fq") * 0.1}


TARGET = {"model_utility": 0.8, "forget_rouge": 1.0, "forget_prob": 0.99, "forget_quality": 1e-6}
RETAIN = {"model_utility": 0.8, "forget_rouge": 0.2, "forget_prob": 0.05, "forget_quality": 1.0}


def _behaviour(method: str, loss: Mapping[str, Any]) -> tuple[list[float], str]:
    """(probe values, key) of a loss program (its validated behaviour) or of a registered method."""
    if method != "evolved":
        u = _unit("method", method)
        return [10 * u - 5, 3 * u, -2 * u], f"method:{method}"
    from evounlearn.sandbox import validate_source

    code, function = str(loss["code"]), str(loss.get("function") or "")
    records = validate_source(code, str(loss.get("interface") or "faithful"))
    rec = next((r for r in records if not function or r.get("name") == function), records[0])
    return list(rec.get("probe_values") or []), rec.get("fingerprint") or code


class FakeBenchmark(Benchmark):
    """Target MU 0.8; a run's metrics come from `fake_metrics` (stage 1: forgets less)."""

    name = "fake"
    description = "test stand-in (no training)"
    fitness = FitnessSpec("fake", tofu_fitness, "model_utility", TOFU_FORMULA)
    prompt_notes = "a fake TOFU-shaped benchmark (tests)."
    worker_preload = ()  # nothing heavy to import

    def prepare(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return dict(options or {})

    def data_name(self, prepared: Any) -> str:
        return "fake"

    def paths(self, prepared: Any) -> dict[str, str | None]:
        return {}

    def reference(self, prepared: Any, part: str = "all", fraction: float | None = None) -> Reference:
        return Reference(dict(TARGET), dict(RETAIN))

    def run(self, prepared: Any, run: Any, *, part: str = "all", fraction: float | None = None,
            seed: int | None = None, run_dir: Any = None, stage1_epochs: int = 0,
            on_stage: Any = None) -> RunResult:
        sleep_s = float(prepared.get("sleep_s", 0.0))
        epochs = int(run.train.get("epochs") or 5)
        if run.method == "evolved" and FAKE_FAIL_MARKER in str(run.loss.get("code")):
            time.sleep(sleep_s)
            raise FakeTrainingCrash("fake training failure (loss contains the failure marker)")
        probe, key = _behaviour(run.method, run.loss)
        if sleep_s:
            time.sleep(sleep_s)
        seed = int(seed or 0)
        if on_stage is not None and 0 < int(stage1_epochs) < epochs:
            s1 = fake_metrics(probe, seed, part, key, stage=1)
            on_stage(None, lambda _model: s1)  # raises to stop below the cutoff
        summary = fake_metrics(probe, seed, part, key)
        return RunResult(summary, {}, {"loss_history": [1.0, 0.5], "epoch_losses": [1.0, 0.5], "seconds": 0.0},
                         0.0, epochs)


class Interrupted(Exception):
    """A simulated interruption (Ctrl-C, a killed job) in the middle of a run."""


def interrupt_after(n: int):
    """An `on_step` monitor that stops the run after its n-th optimizer step of this session."""
    seen = []

    def on_step(step: int) -> None:
        seen.append(step)
        if len(seen) >= n:
            raise Interrupted(f"stopped after {n} steps")

    return on_step
