"""A candidate run on several training seeds (`train_seeds` k > 1): which seeds, and how the k
trainings' results become the run's one result (the candidate job, search/candidate.py, trains
them; evolve and tune pass `train_seeds` to it through `job_option`).

Why: one training's fitness moves between seeds about as much as two reasonable losses differ
(benchmarks/results/noise.json); a run scored as the mean of k trainings has 1/sqrt(k) of that sd,
and the datasheet says which k a benchmark needs (`trainings_per_candidate`).
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any, TypeVar

# the candidate job's result dataclass (search/candidate.py `CandidateResult`), generic here so
# that this module does not import the job that imports it
Result = TypeVar("Result")

#: the distance between the training seeds of one run: larger than any seed a search, a race or a
#: report re-run uses, so that two runs' trainings never share a seed
SEED_STRIDE = 1_000_003


def training_seeds(seed: int, n: int) -> list[int]:
    """The training seeds of a run with seed `seed` and `train_seeds` n: seed, seed + stride, ...
    (n = 1: just `seed`, so a one-seed run is the plain run). Runs with the same seed share them
    (candidates compared under shared seeds); a race's or a report's next seed gets new ones."""
    return [int(seed) + j * SEED_STRIDE for j in range(max(1, int(n)))]


def job_option(train_seeds: int) -> dict[str, Any]:
    """The candidate job's keyword for `train_seeds` (none for 1: a one-seed run is the plain
    call, which any evaluator takes)."""
    return {"train_seeds": int(train_seeds)} if int(train_seeds) > 1 else {}


def mean_over_seeds(results: list[Result], run_dir: str) -> Result:
    """One result from the trainings of one candidate (at least one): a failed training's result
    as it is (the first failure decides); else fitness = the mean of the trainings' fitnesses,
    summary = each numeric metric's mean (so the utility floor reads the mean utility and every
    `fitness_<name>` is the mean of that fitness), timings summed, curves of the first training;
    `seed_fitness` = the per-training fitnesses."""
    if not results:
        raise ValueError("mean_over_seeds needs at least one training's result")
    per_seed = [r.fitness for r in results]
    failed = next((r for r in results if not r.ok), None)
    if failed is not None:
        return replace(failed, run_dir=run_dir, seed_fitness=per_seed)
    summaries = [r.summary or {} for r in results]
    summary: dict[str, Any] = {}
    for key, value in summaries[0].items():
        vals = [s.get(key) for s in summaries]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        summary[key] = statistics.fmean(float(v) for v in vals) if numeric else value  # type: ignore[arg-type]
    timings: dict[str, float] = {}
    for r in results:
        for key, value in r.timings.items():
            timings[key] = timings.get(key, 0.0) + float(value)
    first = results[0]
    return replace(first, run_dir=run_dir, summary=summary, fitness=statistics.fmean(per_seed),
                   loss_history=list(first.loss_history), epoch_losses=list(first.epoch_losses),
                   timings=timings, stages=list(first.stages), seed_fitness=per_seed)
