"""Model-based tuning of a structure's constants: an Optuna TPE study per structure.

A structure is a loss tree with its constants abstracted (`structure_key`); its parameters are the
constants in tree order, the retain weight and the epochs. The (parameters, fitness) points of
that structure found in the request (parents, history, leaderboard) are added to a fresh study as
finished trials; TPE then asks for the next parameters. Optuna is optional (`pip install
evounlearn[tune]`): without it, or with too few points, `propose` returns None and the proposer
falls back to random jitter.

Search space, per constant position, from the values seen: a positive constant stays positive
(log scale over [min / 2, max * 2]), a negative one negative; a constant seen with both signs
gets a linear range. Signs are what keeps a tree monotone, so they are never flipped.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .render import tree_from_code
from .tree import LossTree, Node, constants, rc

SPREAD = 2.0  # range factor around the values seen (each tune round may widen it again)
GOOD_SHARE = 0.25  # TPE's "good" share of the points (Optuna's default 10% is 1 point of 10)
PRIOR_WEIGHT = 0.25  # less weight on the flat prior: few points, exploit them


def _skeleton(node: Node | None) -> Any:
    if isinstance(node, float):
        return "#"
    if isinstance(node, tuple):
        return [node[0], *(_skeleton(x) if isinstance(x, (float, tuple)) else x for x in node[1:])]
    return node


def structure_key(tree: LossTree) -> str:
    """The tree with every constant replaced by "#" (weight and epochs left out)."""
    return json.dumps([_skeleton(tree.forget), _skeleton(tree.retain)], separators=(",", ":"))


def constant_vector(tree: LossTree) -> list[float]:
    """The tunable constants in tree order, then the retain weight (when there is a retain term)."""
    out = constants(tree.forget) + (constants(tree.retain) if tree.retain is not None else [])
    return out + ([tree.weight] if tree.retain is not None else [])


def _put(node: Node, values: Iterator[float]) -> Node:
    if isinstance(node, float):
        return rc(next(values))
    if not isinstance(node, tuple):
        return node
    items = [_put(x, values) if isinstance(x, (float, tuple)) else x for x in node[1:]]
    if node[0] == "clamp" and items[1] is not None and items[2] is not None and items[1] > items[2]:
        items[1], items[2] = items[2], items[1]
    return (node[0], *items)


def with_constants(tree: LossTree, values: Iterable[float], epochs: int | None = None) -> LossTree:
    """`tree` with its constants (in `constant_vector` order) replaced by `values`."""
    it = iter(list(values))
    forget = _put(tree.forget, it)
    retain = _put(tree.retain, it) if tree.retain is not None else None
    weight = rc(next(it)) if tree.retain is not None else tree.weight
    return LossTree(forget, retain, weight, tree.epochs if epochs is None else int(epochs))


def structure_history(tree: LossTree, points: Iterable[Mapping[str, Any]]) -> list[tuple[LossTree, float]]:
    """The evaluated trees of `tree`'s structure among `points` ({code, fitness}), one per code."""
    key, seen, out = structure_key(tree), set(), []
    for p in points:
        code, fit = str(p.get("code") or ""), p.get("fitness")
        if code in seen or isinstance(fit, bool) or not isinstance(fit, (int, float)) or not math.isfinite(fit):
            continue
        t = tree_from_code(code)
        if t is not None and structure_key(t) == key:
            seen.add(code)
            out.append((t, float(fit)))
    return out


def _distributions(optuna: Any, vectors: list[list[float]]) -> dict[str, Any]:
    dists: dict[str, Any] = {}
    for i, column in enumerate(zip(*vectors)):
        lo, hi = min(column), max(column)
        if lo > 0:
            dists[f"c{i}"] = optuna.distributions.FloatDistribution(lo / SPREAD, hi * SPREAD, log=True)
        elif hi < 0:
            dists[f"c{i}"] = optuna.distributions.FloatDistribution(lo * SPREAD, hi / SPREAD)
        else:
            span = max(hi - lo, abs(lo), abs(hi), 0.5)
            dists[f"c{i}"] = optuna.distributions.FloatDistribution(lo - span, hi + span)
    dists["epochs"] = optuna.distributions.IntDistribution(1, 10)
    return dists


def _import_optuna() -> Any | None:
    try:
        import optuna
    except ImportError:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def optuna_available() -> bool:
    return _import_optuna() is not None


def propose(
    tree: LossTree, history: list[tuple[LossTree, float]], n: int, seed: int, min_points: int = 3,
    tries: int = 4,
) -> Iterator[LossTree]:
    """Up to `tries * n` trees of `tree`'s structure asked from a TPE study fed with `history`
    (higher fitness is better); nothing without optuna or with fewer than `min_points` points."""
    optuna = _import_optuna()
    if optuna is None or len(history) < min_points:
        return
    vectors = [constant_vector(t) for t, _ in history]
    dists = _distributions(optuna, vectors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-feature warnings (constant_liar)
        sampler = optuna.samplers.TPESampler(
            seed=seed % (2**31), n_startup_trials=0, constant_liar=True, prior_weight=PRIOR_WEIGHT,
            gamma=lambda k: max(2, math.ceil(GOOD_SHARE * k)),
        )
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for (t, fit), vec in zip(history, vectors):
            params: dict[str, Any] = {f"c{i}": v for i, v in enumerate(vec)}
            params["epochs"] = t.epochs
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=fit))
        for _ in range(tries * n):
            trial = study.ask(dists)
            values = [trial.params[f"c{i}"] for i in range(len(vectors[0]))]
            yield with_constants(tree, values, trial.params["epochs"])


def best_of(history: list[tuple[LossTree, float]]) -> float | None:
    return max((f for _, f in history), default=None)


__all__ = ["best_of", "constant_vector", "optuna_available", "propose", "structure_history",
           "structure_key", "with_constants"]
