"""Directed mutations: change a loss tree in the direction its parent's metrics call for.

- under-forgetting: a stronger forget side (scale the forget term up, lower the retain weight),
  an unbounded forget term (drop the outermost saturating function), more epochs;
- over-forgetting: a bounded forget term (softplus saturation), an NPO-style reference ratio
  (the current log-prob measured against the reference's), a larger retain weight, a retain
  anchor on the reference (relu(ref - current) on the retain set), fewer epochs;
- utility loss: the retain-side moves first (weight, anchor), then fewer epochs and a bound.

Each action returns the child and a short description of the change ("retain weight 1.0 -> 0.5"),
or None where it does not apply (e.g. no saturating function to remove).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

from .diagnosis import OVER, UNDER, UTILITY, Diagnosis
from .tree import LossTree, Node, child_indices, get_at, is_atomic, is_const, leaves_used, rc, set_at

Action = Callable[[LossTree, random.Random], "tuple[LossTree, str] | None"]

SATURATING = ("sigmoid", "tanh", "logsigmoid", "softplus", "clamp")
GAINS = (1.5, 2.0, 3.0)


def _fmt(x: float) -> str:
    return f"{x:g}"


def forget_scale(tree: LossTree) -> float:
    """The constant factor of the forget term (1.0 when it has none at the top)."""
    f = tree.forget
    if isinstance(f, tuple) and f[0] == "*" and is_const(f[1]):
        return float(f[1])
    return 1.0


def _scale_forget(tree: LossTree, k: float) -> LossTree:
    f = tree.forget
    if isinstance(f, tuple) and f[0] == "*" and is_const(f[1]):
        return replace(tree, forget=("*", rc(f[1] * k), f[2]))
    return replace(tree, forget=("*", rc(k), f))


def forget_up(tree: LossTree, rng: random.Random) -> tuple[LossTree, str] | None:
    k = rng.choice(GAINS)
    child = _scale_forget(tree, k)
    return child, f"forget scale {_fmt(forget_scale(tree))} -> {_fmt(forget_scale(child))}"


def retain_weight_down(tree: LossTree, rng: random.Random) -> tuple[LossTree, str] | None:
    if tree.retain is None:
        return None
    w = rc(tree.weight / rng.choice(GAINS))
    return replace(tree, weight=w), f"retain weight {_fmt(tree.weight)} -> {_fmt(w)}"


def retain_weight_up(tree: LossTree, rng: random.Random) -> tuple[LossTree, str] | None:
    if tree.retain is None:
        return replace(tree, retain=("neg", "lpr"), weight=1.0), "retain NLL term added (weight 1)"
    w = rc(tree.weight * rng.choice(GAINS))
    return replace(tree, weight=w), f"retain weight {_fmt(tree.weight)} -> {_fmt(w)}"


def epochs_up(tree: LossTree, rng: random.Random) -> tuple[LossTree, str] | None:
    e = min(10, tree.epochs + rng.choice((1, 2)))
    return (replace(tree, epochs=e), f"epochs {tree.epochs} -> {e}") if e != tree.epochs else None


def epochs_down(tree: LossTree, rng: random.Random) -> tuple[LossTree, str] | None:
    e = max(1, tree.epochs - rng.choice((1, 2)))
    return (replace(tree, epochs=e), f"epochs {tree.epochs} -> {e}") if e != tree.epochs else None


def _first_saturating(node: Node) -> tuple[int, ...] | None:
    """Path of the outermost saturating function (breadth first), or None."""
    queue: list[tuple[tuple[int, ...], Node]] = [((), node)]
    while queue:
        path, n = queue.pop(0)
        if isinstance(n, tuple) and n[0] in SATURATING:
            return path
        if isinstance(n, tuple) and not is_atomic(n):
            queue += [(path + (i,), n[i]) for i in child_indices(n)]
    return None


def unbound_forget(tree: LossTree, rng: random.Random) -> tuple[LossTree, str] | None:
    path = _first_saturating(tree.forget)
    if path is None:
        return None
    node = get_at(tree.forget, path)
    return replace(tree, forget=set_at(tree.forget, path, node[1])), f"forget term unbounded ({node[0]} removed)"


def bound_forget(tree: LossTree, rng: random.Random) -> tuple[LossTree, str] | None:
    f = tree.forget
    top = f[2] if isinstance(f, tuple) and f[0] == "*" and is_const(f[1]) else f  # past a scale
    if isinstance(top, tuple) and top[0] in ("softplus", "sigmoid"):
        return None  # already saturating at the top
    beta = rng.choice((0.5, 1.0, 2.0))
    child = replace(tree, forget=("*", rc(2.0 / beta), ("softplus", ("*", beta, f))))
    return child, f"forget term bounded: {_fmt(rc(2.0 / beta))} * softplus({_fmt(beta)} * forget)"


def _swap_leaf(node: Node, old: str, new: str) -> Node:
    if node == old:
        return new
    if not isinstance(node, tuple):
        return node
    return (node[0],) + tuple(_swap_leaf(c, old, new) if i in child_indices(node) else c
                              for i, c in enumerate(node) if i > 0)


def reference_ratio(tree: LossTree, rng: random.Random) -> tuple[LossTree, str] | None:
    """NPO-style: measure the forget log-prob against the reference's (lpf -> lpf - ref)."""
    used = leaves_used(tree.forget)
    for old, new in (("lpf", "dF"), ("tlpf", "tdF")):
        if old in used:
            return replace(tree, forget=_swap_leaf(tree.forget, old, new)), f"forget term as a reference ratio ({old} -> {new})"
    return None


def retain_anchor(tree: LossTree, rng: random.Random) -> tuple[LossTree, str] | None:
    """Add relu(ref - current) on the retain set: a penalty for drifting below the reference."""
    anchor: Node = ("relu", ("neg", "dR"))
    if tree.retain is None:
        return replace(tree, retain=anchor, weight=1.0), "retain reference anchor relu(-dR) added"
    if "dR" in leaves_used(tree.retain):
        return None
    return replace(tree, retain=("+", tree.retain, anchor)), "retain reference anchor + relu(-dR)"


ACTIONS: dict[str, tuple[Action, ...]] = {
    UNDER: (forget_up, retain_weight_down, unbound_forget, epochs_up),
    OVER: (bound_forget, reference_ratio, retain_weight_up, epochs_down, retain_anchor),
    UTILITY: (retain_weight_up, retain_anchor, epochs_down, bound_forget),
}


def directed_child(
    tree: LossTree, diagnosis: Diagnosis, rng: random.Random, first: int = 0
) -> tuple[LossTree, str, str] | None:
    """A child moved in the direction of the primary finding: (child, action name, change), the
    action being the `first`-th applicable one (cycling), with a random second action of the
    same direction half of the time; None without a finding or an applicable action."""
    if diagnosis.primary is None:
        return None
    actions = ACTIONS[diagnosis.primary]
    order = [actions[(first + i) % len(actions)] for i in range(len(actions))]
    for action in order:
        done = action(tree, rng)
        if done is None:
            continue
        child, change = done
        if rng.random() < 0.5:
            extra = rng.choice([a for a in actions if a is not action])(child, rng)
            if extra is not None:
                child, change = extra[0], f"{change}, {extra[1]}"
        return child, action.__name__, change
    return None
