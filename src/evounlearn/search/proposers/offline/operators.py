"""Random generation and variation operators over loss trees: random increasing expressions and
trees, constant perturbation, retain-weight and epochs changes, subtree / point mutation and
crossover. Every random expression is non-decreasing in its side's main variable by construction.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from .tree import (
    FORGET_LEAVES,
    INCREASING_UNARY,
    POSITIVE_UNARY,
    RETAIN_LEAVES,
    TOKEN_FORGET_LEAVES,
    TOKEN_RETAIN_LEAVES,
    TOKEN_WEIGHTS,
    UNARY,
    LossTree,
    Node,
    get_at,
    is_atomic,
    is_const,
    map_constants,
    paths,
    rc,
    set_at,
)


def _pos_const(rng: random.Random, lo: float = 0.1, hi: float = 5.0) -> float:
    return rc(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _main_leaf(rng: random.Random, side: str, token: bool = False) -> Node:
    if side == "forget":
        return rng.choice(TOKEN_FORGET_LEAVES if token else FORGET_LEAVES)
    return ("neg", rng.choice(TOKEN_RETAIN_LEAVES if token else RETAIN_LEAVES))  # increases in -lpr


def _ref_leaf(side: str, token: bool = False) -> Node:
    return ("t" if token else "") + ("rpf" if side == "forget" else "rpr")


def random_increasing(rng: random.Random, side: str, max_depth: int = 3, token: bool = False) -> Node:
    """A random expression non-decreasing in the side's main variable, by construction
    (`token`: over the per-token leaves, to sit inside a token mean)."""
    node, _ = _rand_inc(rng, side, max_depth, token)
    return node


def random_token_term(rng: random.Random, side: str, max_depth: int = 2) -> Node:
    """("tmean", side, expr) with a random per-token expression, maybe under a detached weight."""
    inner = random_increasing(rng, side, max_depth, token=True)
    w = rng.random()
    if w < 0.15:
        inner = ("focal", inner, rc(rng.uniform(0.5, 3.0)))
    elif w < 0.27:
        inner = ("entw", inner)
    elif w < 0.39:
        inner = ("refmask", inner, rc(-rng.uniform(0.2, 3.0)))
    elif w < 0.51:  # WGA's confidence weight p^beta
        inner = ("wga", inner, rc(rng.uniform(0.5, 5.0)))
    elif w < 0.59:  # SatImp's p^b1 (1 - p)^b2
        inner = ("focal", ("wga", inner, rc(rng.uniform(1.0, 6.0))), rc(rng.uniform(0.5, 2.0)))
    elif w < 0.7:  # CE-U's true-token-masked target (its gradient: p / (1 - p) * d log p)
        inner = ("ceu", inner)
    return ("tmean", side[0], inner)


def _rand_inc(rng: random.Random, side: str, d: int, token: bool = False) -> tuple[Node, bool]:
    """(node, strictly positive?)"""
    if d <= 0 or rng.random() < 0.25:
        leaf = _main_leaf(rng, side, token)
        if rng.random() < 0.5:
            return ("*", _pos_const(rng), leaf), False
        return leaf, False
    choice = rng.random()
    if choice < 0.45:
        child, pos = _rand_inc(rng, side, d - 1, token)
        op = rng.choice(INCREASING_UNARY)
        if op == "exp":
            child = ("*", _pos_const(rng, 0.1, 2.0), child)
        return (op, child), op in POSITIVE_UNARY
    if choice < 0.55:
        child, pos = _rand_inc(rng, side, d - 1, token)
        if not pos:
            child, pos = ("softplus", child), True
        return (rng.choice(("square", "log", "abs")), child), False
    if choice < 0.7:
        a, pa = _rand_inc(rng, side, d - 1, token)
        b, pb = _rand_inc(rng, side, d - 1, token)
        if rng.random() < 0.5 or not (pa and pb):
            return ("+", a, b), pa and pb
        return ("*", a, b), True  # product of positive increasing factors
    if choice < 0.8:
        child, pos = _rand_inc(rng, side, d - 1, token)
        c = rc(rng.uniform(-1.0, 1.0))
        return ("+", child, c), pos and c >= 0
    if choice < 0.9:
        child, pos = _rand_inc(rng, side, d - 1, token)
        if rng.random() < 0.5:
            return ("*", _pos_const(rng), child), pos
        return ("/", child, _pos_const(rng, 0.5, 5.0)), pos
    child, pos = _rand_inc(rng, side, d - 1, token)
    if rng.random() < 0.5:  # ratio to the reference magnitude (constant in the current model)
        return ("/", child, ("+", ("abs", _ref_leaf(side, token)), _pos_const(rng, 0.5, 2.0))), pos
    lo = rc(-rng.uniform(0.5, 10.0))
    return ("clamp", child, lo, None), False


def random_tree(rng: random.Random, max_depth: int = 3, tokens: bool = False) -> LossTree:
    """A random tree; with `tokens` (extended interface) its terms may be token means."""
    if tokens and rng.random() < 0.5:
        forget = random_token_term(rng, "forget", max(1, max_depth - 1))
    else:
        forget = random_increasing(rng, "forget", max_depth)
    retain = random_increasing(rng, "retain", max(1, max_depth - 1)) if rng.random() < 0.9 else None
    if retain is not None and tokens and rng.random() < 0.3:
        retain = random_token_term(rng, "retain", 1)
    return LossTree(forget, retain, _pos_const(rng, 0.25, 4.0), rng.randint(1, 10))


def perturb_constants(
    tree: LossTree, rng: random.Random, sigma: float = 0.35, epochs_p: float = 0.3
) -> LossTree:
    """Multiply every constant (and the retain weight) by a log-normal factor; maybe shift epochs."""

    def f(c: float) -> float:
        return c * math.exp(rng.gauss(0.0, sigma))

    forget = map_constants(tree.forget, f)
    retain = map_constants(tree.retain, f) if tree.retain is not None else None
    weight = rc(f(tree.weight)) if tree.retain is not None else tree.weight
    epochs = tree.epochs
    if rng.random() < epochs_p:
        epochs = min(10, max(1, epochs + rng.choice((-1, 1))))
    return LossTree(forget, retain, weight, epochs)


def change_retain_weight(tree: LossTree, rng: random.Random, sigma: float = 0.7) -> LossTree:
    if tree.retain is None:
        return replace(tree, retain=("neg", "lpr"), weight=rng.choice((0.5, 1.0, 2.0)))
    return replace(tree, weight=rc(tree.weight * math.exp(rng.gauss(0.0, sigma))))


def change_epochs(tree: LossTree, rng: random.Random) -> LossTree:
    options = [e for e in range(max(1, tree.epochs - 2), min(10, tree.epochs + 2) + 1) if e != tree.epochs]
    return replace(tree, epochs=rng.choice(options))


def _pick_side(tree: LossTree, rng: random.Random) -> str:
    if tree.retain is None:
        return "forget"
    return "forget" if rng.random() < 0.7 else "retain"


def _inside_token_mean(term: Node, path: tuple[int, ...]) -> bool:
    node = term
    for i in path:
        if isinstance(node, tuple) and node[0] == "tmean":
            return True
        node = node[i]  # type: ignore[index]
    return False


def subtree_mutation(tree: LossTree, rng: random.Random, max_depth: int = 2, tokens: bool = False) -> LossTree:
    """Replace a random node of one term by a random small increasing subtree (a per-token one
    inside a token mean; with `tokens`, sometimes a new token mean)."""
    side = _pick_side(tree, rng)
    term = tree.forget if side == "forget" else tree.retain
    assert term is not None
    path = rng.choice(list(paths(term)))
    depth_ = rng.randint(1, max_depth)
    if _inside_token_mean(term, path):
        sub = random_increasing(rng, side, depth_, token=True)
    elif tokens and rng.random() < 0.3:
        sub = random_token_term(rng, side, depth_)
    else:
        sub = random_increasing(rng, side, depth_)
    new = set_at(term, path, sub)
    return replace(tree, forget=new) if side == "forget" else replace(tree, retain=new)


def point_mutation(tree: LossTree, rng: random.Random) -> LossTree:
    """Swap one operator: a unary for another increasing one, or a binary for a compatible one."""
    side = _pick_side(tree, rng)
    term = tree.forget if side == "forget" else tree.retain
    assert term is not None
    op_paths = [
        p
        for p in paths(term)
        if isinstance(get_at(term, p), tuple)
        and not is_atomic(get_at(term, p))
        and get_at(term, p)[0] not in ("tmean", *TOKEN_WEIGHTS)  # structural, kept
    ]
    if not op_paths:  # a bare leaf: wrap it in a monotone function
        new_term: Node = (rng.choice(INCREASING_UNARY), term)
    else:
        path = rng.choice(op_paths)
        node = get_at(term, path)
        op = node[0]
        if op in UNARY:
            pool = (
                [u for u in INCREASING_UNARY if u != op] if op in INCREASING_UNARY else list(INCREASING_UNARY)
            )
            new_node: Node = (rng.choice(pool), node[1])
        elif op == "clamp":
            new_node = (rng.choice(INCREASING_UNARY), node[1])
        else:
            swap = {"+": "*", "*": "+", "-": "+", "/": "*"}
            new_op = swap[op]
            a, b = node[1], node[2]
            if op == "*" and is_const(a):
                new_node = ("/", b, rc(1.0 / a) if a != 0 else 1.0)
            elif op == "/" and is_const(b):
                new_node = ("*", rc(1.0 / b) if b != 0 else 1.0, a)
            else:
                new_node = (new_op, a, b)
        new_term = set_at(term, path, new_node)
    return replace(tree, forget=new_term) if side == "forget" else replace(tree, retain=new_term)


def crossover(a: LossTree, b: LossTree, rng: random.Random) -> LossTree:
    """Child of two trees: swap whole terms (a's forget term with b's retain term, or the reverse),
    or graft a random subtree of b's term into the same term of a."""
    mode = rng.random()
    if mode < 0.4:
        if rng.random() < 0.5 or a.retain is None:
            return LossTree(a.forget, b.retain, b.weight, rng.choice((a.epochs, b.epochs)))
        return LossTree(b.forget, a.retain, a.weight, rng.choice((a.epochs, b.epochs)))
    side = "forget" if (mode < 0.8 or a.retain is None or b.retain is None) else "retain"
    ta = a.forget if side == "forget" else a.retain
    tb = b.forget if side == "forget" else b.retain
    assert ta is not None and tb is not None
    donor = get_at(tb, rng.choice(list(paths(tb))))
    target = rng.choice(list(paths(ta)))
    new = set_at(ta, target, donor)
    epochs = rng.choice((a.epochs, b.epochs))
    if side == "forget":
        return LossTree(new, a.retain, a.weight, epochs)
    return LossTree(a.forget, new, a.weight, epochs)
