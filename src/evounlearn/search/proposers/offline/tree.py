"""Loss expression trees: the search space of the offline proposer (no LLM needed).

A loss is `forget_term.mean() + w * retain_term.mean()` where each term is an element-wise
expression over the batch (a `Node`) and the retain term may be absent (gradient ascent).

Nodes (JSON-compatible, stored as tuples):
- a number: a constant (kept rounded to 4 significant digits, so the rendered source is exact);
- a leaf name: "lpf" / "lpr" (the current model's mean answer log-probs, forget / retain),
  "rpf" / "rpr" (the frozen reference model's), "dF" = lpf - rpf, "dR" = lpr - rpr;
- (op, child) with op in UNARY: softplus, logsigmoid, sigmoid, exp (argument clamped to <= 20),
  log (argument clamped to >= 1e-6), relu, abs, square, tanh, neg;
- ("clamp", child, lo, hi) with lo / hi a number or None;
- (op, a, b) with op in "+", "-", "*", "/".

Token-level nodes (extended interface only; `seed_trees.TOKEN_SEEDS` shows them in use):
("tmean", side, tok) is the masked mean over the answer tokens of a per-token expression `tok`, whose leaves are the
per-token log-probs "tlpf" / "tlpr", the reference's "trpf" / "trpr" and "tdF" / "tdR" (token
log-prob minus reference, an UnDIAL-like target), and which may be weighted by ("focal", tok,
gamma), ("entw", tok), ("refmask", tok, threshold), ("wga", tok, beta) or ("ceu", tok) (detached
weights: monotonicity is kept). The last two are the token-weighted terms of WGA / SatImp / CE-U
(methods/wga.py, satimp.py, ceu.py): `wga` weighs by `p^beta` (p = exp(token log-prob), detached),
so ("tmean", "f", ("wga", "tlpf", beta)) is WGA's forget term and ("focal", ("wga", tok, b1), b2)
SatImp's `p^b1 (1 - p)^b2`; `ceu` weighs by the odds `p / (1 - p)` (detached, 1 - p clamped at
1e-6): `p/(1-p) * log p` has exactly CE-U's gradient with respect to the logits (the
cross-entropy to the model's own detached distribution with the true token removed, whose
logit-gradient is `p/(1-p) * (onehot(y) - softmax(z))`), so ("tmean", "f", ("ceu", "tlpf")) trains
as CE-U does on the answer tokens, from per-token log-probs alone.

Trees are built so that the forget term increases with lpf and the retain term decreases with lpr
(monotone primitives composed with positive scales, retain terms written over -lpr / -dR), and
`interpret.check_tree` verifies this numerically on probe tensors (gradients of the interpreted
tree, our own code, nothing is exec-ed). The rendered Python (`render.render`) ends with a
`# tree: {...}` comment
holding the compact JSON of the tree, so offline candidates can be parsed back
(`render.tree_from_code`) and mutated again; the comment is only trusted when re-rendering it
gives the same code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Union

Node = Union[float, str, tuple]  # noqa: UP007 - recursive alias, readable on 3.10

MEAN_LEAVES = ("lpf", "lpr", "rpf", "rpr", "dF", "dR")
TOKEN_LEAVES = ("tlpf", "tlpr", "trpf", "trpr", "tdF", "tdR")
LEAVES = MEAN_LEAVES + TOKEN_LEAVES
FORGET_LEAVES = ("lpf", "dF")
RETAIN_LEAVES = ("lpr", "dR")
TOKEN_FORGET_LEAVES = ("tlpf", "tdF")
TOKEN_RETAIN_LEAVES = ("tlpr", "tdR")
TOKEN_WEIGHTS = ("focal", "entw", "refmask", "wga", "ceu")  # detached, non-negative per-token weights
TOKEN_WEIGHTS_WITH_PARAM = ("focal", "refmask", "wga")  # (op, tok, param); the others (op, tok)
SIDES = ("f", "r")
UNARY = ("softplus", "logsigmoid", "sigmoid", "exp", "log", "relu", "abs", "square", "tanh", "neg")
INCREASING_UNARY = ("softplus", "logsigmoid", "sigmoid", "exp", "relu", "tanh")
POSITIVE_UNARY = ("softplus", "sigmoid", "exp")  # strictly positive outputs
BINARY = ("+", "-", "*", "/")
EXP_MAX = 20.0
LOG_EPS = 1e-6
TREE_VERSION = 1
MAX_NODES = 60
MAX_DEPTH = 10


def rc(x: float) -> float:
    """Round a constant to 4 significant digits (what the rendered source shows)."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.4g}")


# ---------------------------------------------------------------------------------------------
# The genome
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossTree:
    """`forget.mean() + weight * retain.mean()`, trained for `epochs` epochs."""

    forget: Node
    retain: Node | None = None
    weight: float = 1.0
    epochs: int = 5

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": TREE_VERSION,
                "f": _to_json(self.forget),
                "r": _to_json(self.retain),
                "w": self.weight,
                "e": self.epochs,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> LossTree:
        """Parse and validate; raises ValueError on anything malformed."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("v") != TREE_VERSION:
            raise ValueError("not a loss tree (version mismatch)")
        forget = _from_json(data.get("f"))
        retain = None if data.get("r") is None else _from_json(data["r"])
        w = data.get("w", 1.0)
        e = data.get("e", 5)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError("bad retain weight")
        if isinstance(e, bool) or not isinstance(e, int) or not 1 <= e <= 10:
            raise ValueError("bad epochs")
        tree = cls(forget, retain, float(w), int(e))
        problem = structure_problem(tree)
        if problem:
            raise ValueError(problem)
        return tree

    def nodes(self) -> int:
        return count_nodes(self.forget) + (count_nodes(self.retain) if self.retain is not None else 0)


def _to_json(node: Node | None) -> Any:
    if isinstance(node, tuple):
        return [_to_json(x) for x in node]
    return node


def _from_json(obj: Any, depth: int = 0) -> Node:
    if depth > MAX_DEPTH + 2:
        raise ValueError("tree too deep")
    if isinstance(obj, bool):
        raise ValueError("booleans are not constants")
    if isinstance(obj, (int, float)):
        if not math.isfinite(obj):
            raise ValueError("non-finite constant")
        return float(obj)
    if isinstance(obj, str):
        if obj not in LEAVES:
            raise ValueError(f"unknown leaf {obj!r}")
        return obj
    if isinstance(obj, list) and obj and isinstance(obj[0], str):
        op = obj[0]
        if op in UNARY and len(obj) == 2:
            return (op, _from_json(obj[1], depth + 1))
        if op == "clamp" and len(obj) == 4:
            lo, hi = obj[2], obj[3]
            for b in (lo, hi):
                if b is not None and (
                    isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b)
                ):
                    raise ValueError("bad clamp bound")
            return (
                "clamp",
                _from_json(obj[1], depth + 1),
                None if lo is None else float(lo),
                None if hi is None else float(hi),
            )
        if op in BINARY and len(obj) == 3:
            return (op, _from_json(obj[1], depth + 1), _from_json(obj[2], depth + 1))
        if op == "tmean" and len(obj) == 3 and obj[1] in SIDES:
            return ("tmean", obj[1], _from_json(obj[2], depth + 1))
        if op in ("entw", "ceu") and len(obj) == 2:
            return (op, _from_json(obj[1], depth + 1))
        if op in TOKEN_WEIGHTS_WITH_PARAM and len(obj) == 3:
            param = obj[2]
            if isinstance(param, bool) or not isinstance(param, (int, float)) or not math.isfinite(param):
                raise ValueError(f"bad {op} parameter")
            return (op, _from_json(obj[1], depth + 1), float(param))
    raise ValueError(f"malformed node {obj!r}")


# ---------------------------------------------------------------------------------------------
# Tree utilities
# ---------------------------------------------------------------------------------------------


def is_const(node: Node) -> bool:
    return isinstance(node, float)


def child_indices(node: Node) -> list[int]:
    """Positions of the child nodes in an operator tuple (parameters excluded)."""
    if not isinstance(node, tuple):
        return []
    op = node[0]
    if op == "tmean":
        return [2]
    if op == "clamp" or op in TOKEN_WEIGHTS_WITH_PARAM:
        return [1]
    return list(range(1, len(node)))


def children(node: Node) -> list[Node]:
    return [node[i] for i in child_indices(node)]  # type: ignore[index]


def uses_tokens(tree: LossTree) -> bool:
    return bool((leaves_used(tree.forget) | leaves_used(tree.retain)) & set(TOKEN_LEAVES))


def count_nodes(node: Node) -> int:
    return 1 + sum(count_nodes(c) for c in children(node))


def depth(node: Node) -> int:
    return 1 + max((depth(c) for c in children(node)), default=0)


def has_var(node: Node) -> bool:
    if isinstance(node, str):
        return True
    return any(has_var(c) for c in children(node))


def leaves_used(node: Node | None) -> set[str]:
    if node is None:
        return set()
    if isinstance(node, str):
        return {node}
    out: set[str] = set()
    for c in children(node):
        out |= leaves_used(c)
    return out



def ops_used(node: Node | None) -> set[str]:
    if not isinstance(node, tuple):
        return set()
    out = {node[0]}
    for c in children(node):
        out |= ops_used(c)
    return out

def constants(node: Node) -> list[float]:
    if isinstance(node, float):
        return [node]
    out: list[float] = []
    if isinstance(node, tuple):  # children and parameters in tuple order (clamp: child, lo, hi)
        for item in node[1:]:
            if isinstance(item, (float, tuple)):
                out += constants(item)
    return out


def is_atomic(node: Node) -> bool:
    """Units that mutation treats as leaves: a leaf, or a negated retain leaf (-lpr, -dR)."""
    return isinstance(node, (str, float)) or (
        isinstance(node, tuple) and node[0] == "neg" and isinstance(node[1], str)
    )


def paths(node: Node, prefix: tuple[int, ...] = ()) -> Iterator[tuple[int, ...]]:
    """Paths (child indices into the tuple) of every node, not descending into atomic units."""
    yield prefix
    if is_atomic(node) or not isinstance(node, tuple):
        return
    for i in child_indices(node):
        yield from paths(node[i], prefix + (i,))


def get_at(node: Node, path: tuple[int, ...]) -> Node:
    for i in path:
        node = node[i]  # type: ignore[index]
    return node


def set_at(node: Node, path: tuple[int, ...], new: Node) -> Node:
    if not path:
        return new
    assert isinstance(node, tuple)
    i = path[0]
    items = list(node)
    items[i] = set_at(node[i], path[1:], new)
    return tuple(items)


def map_constants(node: Node, fn: Any) -> Node:
    """Apply `fn(value) -> value` to every constant (clamp bounds included)."""
    if isinstance(node, float):
        return rc(fn(node))
    if isinstance(node, str):
        return node
    if node[0] == "clamp":
        lo, hi = node[2], node[3]
        new_lo = None if lo is None else rc(fn(lo))
        new_hi = None if hi is None else rc(fn(hi))
        if new_lo is not None and new_hi is not None and new_lo > new_hi:
            new_lo, new_hi = new_hi, new_lo
        return ("clamp", map_constants(node[1], fn), new_lo, new_hi)
    if node[0] == "tmean":
        return ("tmean", node[1], map_constants(node[2], fn))
    return (node[0],) + tuple(map_constants(c, fn) for c in node[1:])


def structure_problem(tree: LossTree) -> str | None:
    """A reason why the tree is not a usable loss, or None."""
    for name, term in (("forget", tree.forget), ("retain", tree.retain)):
        if term is None:
            continue
        if not has_var(term):
            return f"the {name} term is constant"
        if count_nodes(term) > MAX_NODES or depth(term) > MAX_DEPTH:
            return f"the {name} term is too large"
        bad = _const_only_ops(term)
        if bad:
            return f"the {name} term applies {bad} to a constant"
        bad = _context_problem(term, None)
        if bad:
            return f"the {name} term {bad}"
    if not leaves_used(tree.forget) & {"lpf", "dF", "tlpf", "tdF"}:
        return "the forget term does not use the forget log-probs"
    if tree.retain is not None and not leaves_used(tree.retain) & {"lpr", "dR", "tlpr", "tdR"}:
        return "the retain term does not use the retain log-probs"
    if not 1 <= tree.epochs <= 10:
        return "epochs out of 1..10"
    return None


def _context_problem(node: Node, side: str | None) -> str | None:
    """Token leaves and weights only inside a ("tmean", side, ...) of their own side, mean leaves
    only outside one (a [B] tensor against a [B, T] one would broadcast wrongly)."""
    if isinstance(node, str):
        if side is None and node in TOKEN_LEAVES:
            return f"uses the token leaf {node} outside a token mean"
        if side is not None and node in MEAN_LEAVES:
            return f"uses the mean leaf {node} inside a token mean"
        if side is not None and node[-1].lower() != side:
            return f"uses {node} inside a token mean of the other side"
        return None
    if not isinstance(node, tuple):
        return None
    op = node[0]
    if op == "tmean":
        if side is not None:
            return "nests token means"
        side = node[1]
    elif op in TOKEN_WEIGHTS and side is None:
        return f"applies {op} outside a token mean"
    for c in children(node):
        bad = _context_problem(c, side)
        if bad:
            return bad
    return None


def _const_only_ops(node: Node) -> str | None:
    if not isinstance(node, tuple):
        return None
    op = node[0]
    kids = children(node)
    if op in UNARY or op in ("clamp", "tmean") or op in TOKEN_WEIGHTS:
        if not has_var(kids[0]):
            return op
    elif all(not has_var(k) for k in kids):
        return op
    for k in kids:
        bad = _const_only_ops(k)
        if bad:
            return bad
    return None
