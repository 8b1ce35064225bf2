"""`evounlearn check LOSS.py [--train] [--steps N]`: the search's validation of one loss file, a verdict per function.

`check_file(path)` runs the same static and probe validation as the search (`validation.
validate_in_worker`, every candidate of the file, one deadline for the program) in a confined
isolated worker (no network, writes only in its scratch directory) and returns one `Verdict`
per loss function (or a single one named "" for a problem of the whole file). With
`train=True`, each valid function also trains on the default benchmark (or the given
`PrepareConfig`) as long as one search candidate does (its search part of the forget split, its
epochs docstring or 5 epochs; `train_steps=N` / `--steps N` stops after N steps) in
an isolated worker with the training guards on (`sandbox.guards`): a loss that behaves on the
probes but not on the real batches, or only after some steps, is stopped there; one loss call
running past its hard deadline is killed from outside the worker ("step deadline").
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..sandbox import IsolatedWorker, interface_of
from .validation import validate_in_worker

__all__ = ["TRAIN_JOB", "Verdict", "check_file", "train_job"]

TRAIN_JOB = "evounlearn.search.loss_check:train_job"
# a whole candidate's training on a busy machine must fit: the per-call hard deadline, not this
# wall limit, is what stops a runaway loss within seconds
TRAIN_LIMITS: dict[str, Any] = {"wall_limit_s": 1800.0, "cpu_limit_s": 3600.0, "memory_limit_mb": 8192}


@dataclass(frozen=True)
class Verdict:
    """The outcome for one function: `stage` is "validation" or "training"."""

    name: str
    ok: bool
    reason: str
    stage: str = "validation"

    def line(self) -> str:
        what = self.name or "(program)"
        return f"{what}: {'ok' if self.ok else 'rejected'} ({self.stage}): {self.reason}"


def check_file(
    path: str | Path,
    train: bool = False,
    *,
    prepare_config: Any = None,
    train_steps: int | None = None,
    **limits: Any,
) -> list[Verdict]:
    """Validate every loss function of the file at `path`; with `train`, also a short guarded training."""
    try:
        code = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        return [Verdict("", False, f"cannot read {path}: {type(e).__name__}: {e}")]
    interface = interface_of(code)
    records = validate_in_worker(code, interface, None, all_functions=True, **limits)
    verdicts = [Verdict(str(r.get("name") or ""), bool(r.get("ok")), str(r.get("reason"))) for r in records]
    if not train:
        return verdicts
    return [
        _train_verdict(code, v, prepare_config, train_steps) if v.ok else v for v in verdicts
    ]


def _train_verdict(code: str, v: Verdict, prepare_config: Any, steps: int | None) -> Verdict:
    """A short training of function `v.name` in a confined worker (writes: its run dir, the cache)."""
    from ..benchmarks.base import default_cache_dir
    from ..benchmarks.tofu import PrepareConfig

    prep = prepare_config if prepare_config is not None else PrepareConfig()
    with tempfile.TemporaryDirectory(prefix="evounlearn-check-") as run_dir:
        cache = Path(prep.cache_dir).expanduser() if prep.cache_dir else default_cache_dir()
        writable = [run_dir, str(cache.resolve())]
        with IsolatedWorker(**TRAIN_LIMITS, isolate_network=True, write_paths=writable) as w:
            # the cache resolved HERE: the worker runs in its scratch directory, where a relative
            # default (./cache) would name an empty cache and prepare the benchmark again
            plain = {**_plain(prep), "cache_dir": str(cache.resolve())}
            res = w.run(TRAIN_JOB, {"code": code, "function": v.name, "run_dir": run_dir,
                                    "prepare": plain, "steps": steps})
    if res.ok:
        return Verdict(v.name, True, f"trained {res.value.get('steps')} steps with the guards on", "training")
    first = (res.error or res.killed_reason or "training failed").splitlines()[0]
    return Verdict(v.name, False, first, "training")


def _plain(cfg: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(cfg)


def train_job(code: str, function: str, run_dir: str, prepare: dict[str, Any], steps: int | None = None
              ) -> dict[str, Any]:
    """Worker job: train `function` of `code` like a search candidate (method `evolved`, guards on,
    the search part of the forget split, the program's epochs), or only `steps` steps."""
    from ..benchmarks.tofu import PrepareConfig, build_config, run_unlearning
    from ..config import apply_overrides

    cfg = build_config("evolved", None, [])
    cfg.prepare = apply_overrides(PrepareConfig(), prepare)
    cfg.data, cfg.forget_split = cfg.prepare.data, cfg.prepare.forget_split
    cfg.loss.update(code=code, function=function)
    from ..methods.evolved import check_loss_program
    from .config import SearchConfig

    _, _, epochs = check_loss_program(code, "auto", function)
    cfg.train.epochs = int(epochs or SearchConfig.default_epochs)  # as the search: docstring, else its default
    cfg.forget_part = "search"  # what a search candidate trains on
    if steps is not None:
        cfg.train.max_steps = int(steps)
    cfg.run_dir = run_dir
    record = run_unlearning(cfg, evaluate=False)
    return {"steps": int(record.get("steps", 0)), "loss_history": list(record.get("loss_history") or [])}


def command(args: Any) -> int:
    """The CLI: print a verdict per function; exit 0 when all are valid, 2 otherwise."""
    steps = getattr(args, "steps", None)
    verdicts = check_file(args.loss_file, train=bool(args.train) or steps is not None, train_steps=steps)
    for v in verdicts:
        print(v.line())
    return 0 if verdicts and all(v.ok for v in verdicts) else 2
