"""The one candidate job: train and evaluate one candidate on any benchmark.

The driver submits `evaluate_candidate(...)` through an `executor.Executor`; generated code is only
checked, compiled and run here, in the worker process. One job = one training run (or, with
`train_seeds` n > 1, n trainings on shared seeds scored by their mean, search/seed_mean.py: the
instrument's resolving setting, benchmarks/results/noise.json), reaching the benchmark only through the
`benchmarks.base.Benchmark` protocol:

1. the loss program is validated again (`validate.validate_source`: whitelist, probe tensors) and
   its self-contained text is written to `RUN_DIR/loss.py`; a baseline is a registered `method`;
2. `benchmark.prepare(unlearn)` (cached), then `benchmark.run(...)` on the run's part of the forget
   set, with method `evolved` for a program (the benchmark writes what reproduces the run);
3. staged evaluation (multi-fidelity, successive-halving style): with `stage1_epochs` k smaller
   than the run's epochs, the model is evaluated after epoch k of its own schedule; the stage-1
   fitness is ranked against `promote_cutoff` (the driver's quantile of the stage-1 scores of the
   candidates evaluated so far) and a candidate below it stops there (not trained to full length);
   the others continue and are evaluated again at the end. The evaluation in between does not
   change the training (no randomness, no state), so the full-length result equals a plain run;
4. the result is a `CandidateResult`, returned as a plain JSON-ready dict (the worker boundary);
   the model and checkpoint folders are deleted unless `keep_model`.

A failure is the candidate's (fitness -inf) or the infrastructure's (`infra: true`, `error` =
the reason, e.g. a corrupt prepared model naming its file): `classify_failure` holds the rule.
The driver never charges an infrastructure fault to the candidate.

`target_info` prepares (or fetches from cache) the benchmark and reports the target model's and
the retain oracle's metrics and fitness on both parts with the search's evaluation settings.

Fitness: the job optimises one of the benchmark's fitnesses (`fitness=`, a name; empty = the
benchmark's default) but reports all of them in the summary as ``fitness_<name>`` (None where one
cannot be computed), so that leaderboards show them side by side whatever the search optimised.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..benchmarks.base import (
    DEFAULT_BENCHMARK,
    FAILED,
    Benchmark,
    FitnessSpec,
    TargetInfo,
    fitness_values,
    get_benchmark,
    metric,
    rank_score,
    utility,
)
from ..benchmarks.references import cached_reference
from ..errors import DataError, EvoUnlearnError, ModelError
from ..files import ArtifactError, atomic_write_json, atomic_write_text, read_json
from .seed_mean import mean_over_seeds, training_seeds

if TYPE_CHECKING:
    from ..sandbox import JobResult

__all__ = ["INFRA_RETRIES", "STAGE_FULL", "STAGE_SHORT", "CandidateResult", "JobOutcome", "StageResult", "classify_failure",
           "evaluate_candidate", "target_info"]

STAGE_SHORT = 1  # stopped after the first stage (not promoted)
STAGE_FULL = 2  # trained to full length
#: re-runs of a job lost to an infrastructure fault before `evolve` / `tune` stops (InfrastructureError)
INFRA_RETRIES = 2

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    stage: int
    epochs: int
    summary: dict[str, Any]
    fitness: float
    score: float


@dataclass
class CandidateResult:
    """What one candidate job reports (`to_dict()` crosses the worker boundary)."""

    run_dir: str
    ok: bool = False
    error: str | None = None
    stage: int = 0
    promoted: bool | None = None
    stages: list[StageResult] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    fitness: float = FAILED
    loss_history: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    epochs: int | None = None
    infra: bool = False  # failed for the infrastructure, not the candidate (`error` says why)
    timings: dict[str, float] = field(default_factory=lambda: {"validate": 0.0, "train": 0.0, "eval": 0.0})
    # the fitness `fitness` is (the job's choice, named) and the summary key its utility floor reads:
    # the reader scores with the same ones ("" from an older or fake job: the reader's own choice)
    fitness_name: str = ""
    utility_key: str = ""
    # a job with train_seeds > 1: each training's fitness (`fitness` is their mean); else empty
    seed_fitness: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_value(cls, value: Mapping[str, Any]) -> CandidateResult:
        """The worker's JSON-ready dict back as a `CandidateResult` (unknown keys ignored)."""
        data = known_fields(cls, value)
        data["stages"] = [StageResult(**known_fields(StageResult, s)) for s in value.get("stages") or []]
        data["timings"] = dict(value.get("timings") or {})
        return cls(**data)

    def utility(self, summary: Mapping[str, Any] | None = None, default_key: str = "") -> float | None:
        """The utility of `summary` (None: the final one) under this result's utility key (else
        `default_key`): what the utility floor compares with the target's."""
        key = self.utility_key or default_key
        summary = self.summary if summary is None else summary
        if not summary or not key:
            return None
        try:
            return metric(summary, key)
        except (KeyError, ValueError, TypeError):
            return None


def known_fields(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def first_line(text: str | None, limit: int = 300) -> str:
    line = str(text or "").strip().splitlines()[0] if str(text or "").strip() else ""
    return line if len(line) <= limit else line[:limit] + "..."


@dataclass
class JobOutcome:
    """A finished worker job, typed: THE one reader of a candidate job's result (`evolve`'s
    driver and `tune`'s runner both read jobs through it, so they agree on what a fault is).

    `result` is the candidate job's `CandidateResult` (None when the job itself failed: a crash,
    a limit, an exception); `error` the job-level failure, or the infrastructure's reason; `infra`
    a fault of the infrastructure, reported by the executor (a lost node or worker) OR by the job
    (`CandidateResult.infra`: a corrupt prepared model, a full disk): never charged to the run."""

    result: CandidateResult | None
    error: str | None
    infra: bool
    detail: str = ""  # the first line of the job's own error text
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    value: Any = None  # the raw value, for jobs that are not candidate jobs (target_info)

    @classmethod
    def from_future(cls, fut: Future[JobResult], candidate_job: bool = True) -> JobOutcome:
        try:
            res = fut.result()
        except Exception as e:  # the executor itself failed, not the job: infrastructure
            from ..sandbox import JobResult

            res = JobResult(False, error=f"{type(e).__name__}: {e}", infra=True)
        return cls.from_job(res, candidate_job)

    @classmethod
    def from_job(cls, res: JobResult, candidate_job: bool = True) -> JobOutcome:
        times = {"wall_seconds": float(res.wall_seconds), "cpu_seconds": float(res.cpu_seconds)}
        if not res.ok:
            why = res.killed_reason or "job failed"
            error = f"{why}: {first_line(res.error)}" if res.error else why
            return cls(None, error, bool(res.infra), detail=first_line(res.error), **times)
        if not candidate_job or not isinstance(res.value, Mapping):
            return cls(None, None, bool(res.infra), value=res.value, **times)
        result = CandidateResult.from_value(res.value)
        infra = bool(res.infra or result.infra)  # e.g. a missing or corrupt prepared artifact
        return cls(result, result.error if infra else None, infra, value=res.value, **times)


class _StageStop(Exception):
    """Raised from the stage-1 evaluation hook to stop a candidate below the cutoff."""


def _short(e: BaseException, limit: int = 400) -> str:
    msg = " ".join(str(e).split())
    if len(msg) > limit:
        msg = msg[:limit] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


# Errors that only a file, a folder or the disk produce: the sandboxed loss cannot open files, so
# when one of these is raised while the candidate runs, a prepared artifact or the disk is at fault.
# DataError / ModelError mean bad or missing data / model files (errors.py), never a loss's output.
_ARTIFACT_ERRORS: tuple[type[BaseException], ...] = (ArtifactError, DataError, ModelError, OSError,
                                                     json.JSONDecodeError)
_NO_SPACE = "No space left on device"


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and the exceptions it was raised from (`__cause__` / `__context__`)."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def classify_failure(error: BaseException, *, candidate_ran: bool) -> str | None:
    """Whose fault a failed candidate job is: the infrastructure reason, or None for the candidate.

    The rule (in this order):
    1. out of disk (`OSError` ENOSPC, or "No space left on device", anywhere in the exception's
       cause chain): infrastructure, whenever it happens;
    2. raised before the candidate's own code ran (`candidate_ran` False: the benchmark lookup,
       `benchmark.prepare`, `benchmark.reference`, the check of the prepared artifacts, writing
       the run's files): infrastructure, since nothing of the candidate has run yet;
    3. raised while the candidate is validated, trains or is evaluated: a missing or corrupt file
       (a prepared model folder, tokenizer, data split, results JSON, cache info: `ArtifactError`,
       `DataError`, `ModelError`, any `OSError`, `json.JSONDecodeError`, a corrupt safetensors
       file) is infrastructure;
    4. anything else raised while the candidate's loss runs (`RuntimeError`, `ValueError`,
       `ConfigError` for its parameters, NaN checks...) is the candidate's failure.
    """
    chain = list(_chain(error))
    if any((isinstance(e, OSError) and e.errno == errno.ENOSPC) or _NO_SPACE in str(e) for e in chain):
        return f"out of disk: {_short(error)}"
    if not candidate_ran:
        return f"infrastructure fault before the candidate ran: {_short(error)}"
    if any(isinstance(e, _ARTIFACT_ERRORS) or type(e).__name__ == "SafetensorError" for e in chain):
        return f"missing or corrupt prepared artifact: {_short(error)}"
    return None


def check_model_folder(path: str | Path) -> None:
    """A prepared model folder (a `save_pretrained` output) is complete and readable: config.json
    is a JSON object, weights and a tokenizer are there; else `ArtifactError` naming the file. A
    path that is not a local folder (a Hub id) is left to the loader."""
    folder = Path(path)
    if not folder.is_dir():
        return
    if not isinstance(read_json(folder / "config.json", "prepared model config"), dict):
        raise ArtifactError(f"prepared model config {folder / 'config.json'} is corrupt (not a JSON object)",
                            folder / "config.json")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")) \
            and not (folder / "adapter_config.json").exists():
        raise ArtifactError(f"prepared model {folder} has no weights file", folder)
    if not any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise ArtifactError(f"prepared model {folder} has no tokenizer", folder)


def _prepared(bench: Benchmark, spec: FitnessSpec, options: dict[str, Any], part: str,
              target_utility: float | None) -> tuple[Any, dict[str, Any] | None]:
    """The prepared benchmark (checked) and what the fitness reads of the target (`_target_summary`)."""
    prepared = bench.prepare(options)
    _check_prepared(bench, prepared)
    return prepared, _target_summary(bench, spec, prepared, part, target_utility)


def fitness_options(spec: FitnessSpec, part: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The run's options with what the fitness needs on this part (`FitnessSpec.part_options`, e.g.
    the `robust` fitness's attacks) layered under them: the search's own options win."""
    from ..config import nest

    extra = spec.part_options.get(part) if spec.part_options else None
    return _under(nest(dict(extra)), nest(dict(options))) if extra else dict(options)


def _under(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _under(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _check_prepared(bench: Benchmark, prepared: Any) -> None:
    """The prepared models are complete (`check_model_folder`), checked before the candidate runs
    so that a damaged cache entry is reported as such, naming the file."""
    import torch

    threads = torch.get_num_threads()
    try:
        paths = bench.paths(prepared)  # TOFU prepares here (lazily), setting its own thread count
    finally:
        torch.set_num_threads(threads)  # the run keeps the job's thread count, as without the check
    for path in paths.values():
        if path:
            check_model_folder(path)


def safe_fitness(spec: FitnessSpec, summary: Mapping[str, Any] | None, target: Mapping[str, Any] | None) -> float:
    """The fitness, or -inf when the summary is missing or incomplete."""
    if not summary:
        return FAILED
    try:
        f = float(spec.fn(summary, target))
    except (KeyError, ValueError, TypeError, EvoUnlearnError):
        return FAILED
    return f if math.isfinite(f) else FAILED


def with_fitnesses(bench: Benchmark, summary: Mapping[str, Any] | None,
                   target: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The summary plus every fitness of the benchmark (``fitness_<name>``)."""
    if not summary:
        return dict(summary) if summary is not None else None
    return {**summary, **fitness_values(bench, summary, target)}


def _target_summary(bench: Benchmark, spec: FitnessSpec, prepared: Any, part: str,
                    target_utility: float | None) -> dict[str, Any] | None:
    """What the fitnesses read of the target: its full summary on the part when the chosen fitness
    needs it (an evaluation of the reference models), else only its utility when the driver knows
    it (the utility is measured off the forget set, the same on every part), else None."""
    if spec.needs_target or (spec.needs_target_utility and target_utility is None):
        return dict(bench.reference(prepared, part).target)
    if target_utility is not None:
        return {spec.utility_key: float(target_utility)}
    return None


@dataclass
class _StageGate:
    """The stage-1 hook: evaluate once, score, stop below the cutoff."""

    bench: Benchmark
    spec: FitnessSpec
    target: dict[str, Any] | None
    epochs: int
    cutoff: float | None
    target_utility: float | None
    floor: float
    result: StageResult | None = None
    seconds: float = 0.0

    def __call__(self, model: Any, evaluate: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        if self.result is not None:
            return {}
        te = time.time()
        s = evaluate(model)
        self.seconds = time.time() - te
        fit = safe_fitness(self.spec, s, self.target)
        score = rank_score(fit, utility(self.bench, s, self.spec.name), self.target_utility, self.floor)
        self.result = StageResult(1, self.epochs, with_fitnesses(self.bench, s, self.target) or {}, fit, score)
        if self.cutoff is not None and score < self.cutoff:
            raise _StageStop()
        return s


def _loss_history_from_checkpoint(run_dir: Path) -> tuple[list[float], list[float]]:
    p = run_dir / "checkpoint" / "state.pt"
    if not p.exists():
        return [], []
    try:
        import torch

        state = torch.load(p, map_location="cpu", weights_only=False).get("state", {})
        return list(state.get("loss_history", [])), list(state.get("epoch_losses", []))
    except Exception:  # a damaged checkpoint only loses the curve
        return [], []


@contextlib.contextmanager
def _captured_output(path: Path | None) -> Iterator[None]:
    """Progress bars, warnings and logs of a job go to its own log file, not the driver's terminal."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh, contextlib.redirect_stderr(fh), contextlib.redirect_stdout(fh):
        yield


def _logged_in_run_dir(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Run a job with its output (progress bars, warnings) sent to RUN_DIR/job.log."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> dict[str, Any]:
        run_dir = kwargs.get("run_dir", args[0] if args else None)
        with _captured_output(Path(run_dir) / "job.log" if run_dir else None):
            return fn(*args, **kwargs)

    return wrapper


def _method_run(out: CandidateResult, rd: Path, code: str | None, method: str | None, function: str,
                interface: str, epochs: int | None) -> Any:
    """The candidate as a `MethodRun` (a validated program through `evolved`, or a registered
    method), or None with `out.error` set."""
    from ..training.resolve import MethodRun

    train = {"epochs": int(epochs)} if epochs is not None else {}
    if code is not None:
        from ..sandbox import validate_source
        from ..sandbox.program import checked_program

        tv = time.time()
        records = validate_source(code, interface, function=function or None)
        out.timings["validate"] = time.time() - tv
        rec = next((r for r in records if not function or r.get("name") == function), records[0] if records else None)
        if rec is None or not rec.get("ok"):
            out.error = f"validation: {rec.get('reason') if rec else 'no loss function'}"
            return None
        program = rec.get("program") or code
        # the file holds the checked functions re-generated from their syntax trees, never raw text
        atomic_write_text(rd / "loss.py", checked_program(program, interface, rec.get("name") or function) or "")
        return MethodRun("evolved", {"code": program, "interface": interface,
                                     "function": rec.get("name") or function}, train)
    if not method:
        out.error = "nothing to evaluate (neither code nor method)"
        return None
    return MethodRun(method, {}, train)


def _record_run(out: CandidateResult, bench: Benchmark, spec: FitnessSpec, res: Any, gate: _StageGate,
                target: dict[str, Any] | None, stage1_epochs: int) -> None:
    """A finished (full-length) run into the result: metrics, fitness, curves, timings."""
    staged = gate.result is not None or (res.epochs is not None and 0 < stage1_epochs < res.epochs)
    out.epochs = res.epochs if res.epochs is not None else out.epochs
    out.summary = with_fitnesses(bench, res.summary, target)
    out.loss_history = list(res.train.get("loss_history", []))
    out.epoch_losses = list(res.train.get("epoch_losses", []))
    out.timings["train"] = float(res.train.get("seconds", 0.0)) - gate.seconds
    out.timings["eval"] = float(res.eval_seconds) + gate.seconds
    out.stage, out.promoted = STAGE_FULL, (True if staged else None)
    out.fitness = safe_fitness(spec, res.summary, target)
    out.ok = math.isfinite(out.fitness)
    if not out.ok:
        out.error = "evaluation gave no usable metrics"


@_logged_in_run_dir
def evaluate_candidate(
    run_dir: str,
    code: str | None = None,
    method: str | None = None,
    function: str = "",
    interface: str = "faithful",
    epochs: int | None = None,
    seed: int = 0,
    forget_part: str = "search",
    unlearn: Mapping[str, Any] | None = None,
    stage1_epochs: int = 0,
    promote_cutoff: float | None = None,
    benchmark: str = DEFAULT_BENCHMARK,
    target_utility: float | None = None,
    utility_floor: float = 0.9,
    keep_model: bool = False,
    fitness: str = "",
    train_seeds: int = 1,
) -> dict[str, Any]:
    """Train and evaluate one candidate (loss program `code`, or registered `method`) and score it
    with the benchmark's fitness `fitness` (empty: its default); see the module docstring.
    `train_seeds` n > 1: the candidate is trained n times (`seed_mean.training_seeds`) and scored by
    the mean (`seed_mean.mean_over_seeds`). Returns `CandidateResult.to_dict()`; never raises for what the
    candidate does."""
    job = {"run_dir": str(run_dir), "code": code, "method": method, "function": function, "interface": interface,
           "epochs": epochs, "seed": seed, "forget_part": forget_part, "unlearn": unlearn,
           "stage1_epochs": stage1_epochs, "promote_cutoff": promote_cutoff, "benchmark": benchmark,
           "target_utility": target_utility, "utility_floor": utility_floor, "keep_model": keep_model,
           "fitness": fitness}
    if int(train_seeds) <= 1:
        return _evaluate_once(**job)
    if int(stage1_epochs) > 0:  # one stage gate per training would promote or stop each seed alone
        return CandidateResult(run_dir=str(run_dir), epochs=epochs, infra=True,
                               error="train_seeds > 1 does not combine with staged evaluation (stage1_epochs)").to_dict()
    results = []
    for s in training_seeds(seed, int(train_seeds)):
        results.append(CandidateResult.from_value(_evaluate_once(
            **{**job, "run_dir": str(Path(run_dir) / f"train-seed{s}"), "seed": s, "promote_cutoff": None})))
        if not results[-1].ok:  # a failed training (the candidate's or the infrastructure's) decides the run
            break
    return mean_over_seeds(results, str(run_dir)).to_dict()


def _evaluate_once(
    run_dir: str,
    code: str | None,
    method: str | None,
    function: str,
    interface: str,
    epochs: int | None,
    seed: int,
    forget_part: str,
    unlearn: Mapping[str, Any] | None,
    stage1_epochs: int,
    promote_cutoff: float | None,
    benchmark: str,
    target_utility: float | None,
    utility_floor: float,
    keep_model: bool,
    fitness: str,
) -> dict[str, Any]:
    """One training of the candidate with `seed` (`evaluate_candidate`'s arguments)."""
    t0 = time.time()
    rd = Path(run_dir)
    rd.mkdir(parents=True, exist_ok=True)
    out = CandidateResult(run_dir=str(rd), epochs=epochs)
    options = dict(unlearn or {})
    gate: _StageGate | None = None
    candidate_ran = False  # for classify_failure: has any of the candidate's own code run yet?
    try:
        bench = get_benchmark(benchmark)
        spec = bench.fitness_spec(fitness)
        out.fitness_name, out.utility_key = spec.name, spec.utility_key
        candidate_ran = True  # validation runs the program on probe tensors
        run = _method_run(out, rd, code, method, function, interface, epochs)
        candidate_ran = False
        if run is None:
            out.timings["total"] = time.time() - t0
            return out.to_dict()
        atomic_write_json(rd / "candidate.json", {"benchmark": bench.name, "part": forget_part, "seed": seed,
                                                  "candidate": asdict(run)}, default=str)
        options = fitness_options(spec, forget_part, options)
        prepared, target = _prepared(bench, spec, options, forget_part, target_utility)
        gate = _StageGate(bench, spec, target, int(stage1_epochs), promote_cutoff, target_utility, utility_floor)
        candidate_ran = True
        res = bench.run(prepared, run, part=forget_part, seed=seed, run_dir=rd,
                        stage1_epochs=int(stage1_epochs), on_stage=gate)
        _record_run(out, bench, spec, res, gate, target, int(stage1_epochs))
    except _StageStop:
        assert gate is not None and gate.result is not None
        out.ok, out.stage, out.promoted, out.fitness = True, STAGE_SHORT, False, gate.result.fitness
        out.loss_history, out.epoch_losses = _loss_history_from_checkpoint(rd)
        out.timings["eval"] = gate.seconds
    except Exception as e:  # the candidate's own failure (runtime error in the loss, ...) or the infrastructure's
        reason = classify_failure(e, candidate_ran=candidate_ran)
        out.error, out.infra = (reason, True) if reason else (_short(e), False)
    return _finish(out, rd, gate, keep_model, t0)


def _finish(out: CandidateResult, rd: Path, gate: _StageGate | None, keep_model: bool, t0: float) -> dict[str, Any]:
    """Attach the stage-1 result, delete the model folders (unless kept), stamp the time."""
    if gate is not None and gate.result is not None:
        out.stages.append(gate.result)
    if not keep_model:
        for sub in ("model", "adapter", "checkpoint", "checkpoint.tmp"):
            shutil.rmtree(rd / sub, ignore_errors=True)
    out.timings["total"] = time.time() - t0
    return out.to_dict()


def target_info(unlearn: Mapping[str, Any] | None = None, benchmark: str = DEFAULT_BENCHMARK,
                log_file: str | None = None, fitness: str = "") -> dict[str, Any]:
    """Prepare (cached) the benchmark; evaluate the target and the retain oracle on the search
    and report parts with the search's evaluation settings. Runs in a worker; returns
    `TargetInfo` as a dict: {data, paths, parts, target: {part: {summary, fitness}}, retain
    (absent without an oracle), target_utility, seconds}; `fitness` = the benchmark's fitness
    `fitness` (empty: its default), every fitness in the summaries (``fitness_<name>``)."""
    with _captured_output(Path(log_file) if log_file else None):
        bench = get_benchmark(benchmark)
        info = _target_info(bench, bench.fitness_spec(fitness), dict(unlearn or {}))
    data = asdict(info)
    if not data["retain"]:
        del data["retain"]
    return data


def _target_info(bench: Benchmark, spec: FitnessSpec, options: dict[str, Any]) -> TargetInfo:
    t0 = time.time()
    bench.check_data(options)  # bad data: one line naming file, row and column, before training
    prepared = bench.prepare(options)
    bench.paths(prepared)  # the models exist from here (a lazy benchmark trains them now): timed
    prepare_seconds = time.time() - t0
    target: dict[str, dict[str, Any]] = {}
    retain: dict[str, dict[str, Any]] = {}
    for part in ("search", "report"):
        # what the fitness needs on the part (e.g. `robust`'s attacks), as the candidates' runs get it
        popts = fitness_options(spec, part, options)
        ref = cached_reference(bench, prepared if popts == options else bench.prepare(popts), part, popts)
        target[part] = {"summary": with_fitnesses(bench, ref.target, ref.target),
                        "fitness": safe_fitness(spec, ref.target, ref.target)}
        if ref.retain is not None:
            retain[part] = {"summary": with_fitnesses(bench, ref.retain, ref.target),
                            "fitness": safe_fitness(spec, ref.retain, ref.target)}
    fraction = float(options.get("search_fraction", 0.5))
    try:  # for realistic probes only: a benchmark that cannot say keeps the probes' default ranges
        lengths = bench.probe_lengths(prepared, "search")
    except Exception as e:  # noqa: BLE001 - never a reason to stop a search
        log.info("probe lengths unavailable (%s): the probes use their default ranges", e)
        lengths = None
    return TargetInfo(data=bench.data_name(prepared), paths=bench.paths(prepared),
                      parts={p: {"fraction": fraction} for p in ("search", "report")}, target=target,
                      retain=retain or None, target_utility=utility(bench, target["search"]["summary"], spec.name),
                      seconds=time.time() - t0, prepare_seconds=prepare_seconds, probe_lengths=lengths)
