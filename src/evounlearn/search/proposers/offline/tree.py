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

Token-level nodes (extended interface only; `TOKEN_SEEDS` shows them in use): ("tmean", side, tok) is
the masked mean over the answer tokens of a per-token expression `tok`, whose leaves are the
per-token log-probs "tlpf" / "tlpr", the reference's "trpf" / "trpr" and "tdF" / "tdR" (token
log-prob minus reference, an UnDIAL-like target), and which may be weighted by ("focal", tok,
gamma), ("entw", tok) or ("refmask", tok, threshold) (detached weights: monotonicity is kept).

Trees are built so that the forget term increases with lpf and the retain term decreases with lpr
(monotone primitives composed with positive scales, retain terms written over -lpr / -dR), and
`check_tree` verifies this numerically on probe tensors (gradients of the interpreted tree, our own
code, nothing is exec-ed). The rendered Python (`render`) ends with a `# tree: {...}` comment
holding the compact JSON of the tree, so offline candidates can be parsed back (`tree_from_code`)
and mutated again; the comment is only trusted when re-rendering it gives the same code.
"""

from __future__ import annotations

import ast
import json
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Union

Node = Union[float, str, tuple]  # noqa: UP007 - recursive alias, readable on 3.10

MEAN_LEAVES = ("lpf", "lpr", "rpf", "rpr", "dF", "dR")
TOKEN_LEAVES = ("tlpf", "tlpr", "trpf", "trpr", "tdF", "tdR")
LEAVES = MEAN_LEAVES + TOKEN_LEAVES
FORGET_LEAVES = ("lpf", "dF")
RETAIN_LEAVES = ("lpr", "dR")
TOKEN_FORGET_LEAVES = ("tlpf", "tdF")
TOKEN_RETAIN_LEAVES = ("tlpr", "tdR")
TOKEN_WEIGHTS = ("focal", "entw", "refmask")  # detached, non-negative per-token weights
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

_VAR = {
    "lpf": "log_probs_forget",
    "lpr": "log_probs_retain",
    "rpf": "ref_log_probs_forget",
    "rpr": "ref_log_probs_retain",
    "dF": "d_forget",
    "dR": "d_retain",
    "tlpf": "tok_logp_forget",
    "tlpr": "tok_logp_retain",
    "trpf": "ref_tok_logp_forget",
    "trpr": "ref_tok_logp_retain",
    "tdF": "tok_d_forget",
    "tdR": "tok_d_retain",
}
FAITHFUL_ARGS = "log_probs_forget, log_probs_retain, ref_log_probs_forget=None, ref_log_probs_retain=None"
EXTENDED_ARGS = "tok_logp_forget, mask_forget, tok_logp_retain, mask_retain, ref_tok_logp_forget=None, ref_tok_logp_retain=None"
_TREE_RE = re.compile(r"^\s*#\s*tree:\s*(\{.*\})\s*$")


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
        if op == "entw" and len(obj) == 2:
            return ("entw", _from_json(obj[1], depth + 1))
        if op in ("focal", "refmask") and len(obj) == 3:
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
    if op in ("clamp", "focal", "refmask"):
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


def constants(node: Node) -> list[float]:
    if isinstance(node, float):
        return [node]
    out: list[float] = []
    if isinstance(node, tuple):  # children and parameters in tuple order (clamp: child, lo, hi)
        for item in node[1:]:
            if isinstance(item, (float, tuple)):
                out += constants(item)
    return out


def _is_atomic(node: Node) -> bool:
    """Units that mutation treats as leaves: a leaf, or a negated retain leaf (-lpr, -dR)."""
    return isinstance(node, (str, float)) or (
        isinstance(node, tuple) and node[0] == "neg" and isinstance(node[1], str)
    )


def paths(node: Node, prefix: tuple[int, ...] = ()) -> Iterator[tuple[int, ...]]:
    """Paths (child indices into the tuple) of every node, not descending into atomic units."""
    yield prefix
    if _is_atomic(node) or not isinstance(node, tuple):
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


# ---------------------------------------------------------------------------------------------
# Rendering to Python source
# ---------------------------------------------------------------------------------------------

_ATOM, _UNARY_PREC, _MUL, _ADD = 100, 90, 80, 70
_PREC = {"+": _ADD, "-": _ADD, "*": _MUL, "/": _MUL}
_FUNC = {
    "softplus": "F.softplus",
    "logsigmoid": "F.logsigmoid",
    "sigmoid": "torch.sigmoid",
    "relu": "F.relu",
    "abs": "torch.abs",
    "square": "torch.square",
    "tanh": "torch.tanh",
}


def _fmt(c: float) -> str:
    return repr(float(c))


_SIDE_NAME = {"f": "forget", "r": "retain"}


def _render_token(node: tuple, side: str | None) -> tuple[str, int]:
    """Source of a token-level node (tmean or a detached weight; see `_token_preamble`)."""
    op = node[0]
    if op == "tmean":
        s = _SIDE_NAME[node[1]]
        inner, p = render_expr(node[2], node[1])
        inner = inner if p >= _MUL else f"({inner})"
        return f"({inner} * mask_{s}).sum(-1) / mask_{s}.sum(-1).clamp(min=1.0)", _MUL
    s = _SIDE_NAME[side or "f"]
    inner, p = render_expr(node[1], side)
    inner = inner if p > _MUL else f"({inner})"
    if op == "focal":
        return f"torch.pow(1.0 - p_tok_{s}, {_fmt(node[2])}) * {inner}", _MUL
    if op == "entw":
        return f"ent_tok_{s} * {inner}", _MUL
    return f"(ref_tok_logp_{s} > {_fmt(node[2])}).float() * {inner}", _MUL


def render_expr(node: Node, side: str | None = None) -> tuple[str, int]:
    """(source, precedence) of an element-wise expression (`side`: inside a token mean of it)."""
    if isinstance(node, float):
        s = _fmt(node)
        return (f"({s})", _ATOM) if node < 0 else (s, _ATOM)
    if isinstance(node, str):
        return _VAR[node], _ATOM
    op = node[0]
    if op == "tmean" or op in TOKEN_WEIGHTS:
        return _render_token(node, side)
    if op == "neg":
        inner, p = render_expr(node[1], side)
        return ("-" + (inner if p >= _UNARY_PREC else f"({inner})"), _UNARY_PREC)
    if op in _FUNC:
        return f"{_FUNC[op]}({render_expr(node[1], side)[0]})", _ATOM
    if op == "exp":
        return f"torch.exp(torch.clamp({render_expr(node[1], side)[0]}, max={_fmt(EXP_MAX)}))", _ATOM
    if op == "log":
        return f"torch.log(torch.clamp({render_expr(node[1], side)[0]}, min={_fmt(LOG_EPS)}))", _ATOM
    if op == "clamp":
        args = [render_expr(node[1], side)[0]]
        if node[2] is not None:
            args.append(f"min={_fmt(node[2])}")
        if node[3] is not None:
            args.append(f"max={_fmt(node[3])}")
        return f"torch.clamp({', '.join(args)})", _ATOM
    if op in _PREC:
        p = _PREC[op]
        left, lp = render_expr(node[1], side)
        right, rp = render_expr(node[2], side)
        if lp < p:
            left = f"({left})"
        if rp <= p:
            right = f"({right})"
        return f"{left} {op} {right}", p
    raise ValueError(f"unknown op {op!r}")


def _ops_used(node: Node | None) -> set[str]:
    if not isinstance(node, tuple):
        return set()
    out = {node[0]}
    for c in children(node):
        out |= _ops_used(c)
    return out


def _token_preamble(tree: LossTree) -> list[str]:
    """The per-token locals a token tree needs: differences to the reference and the detached
    probabilities / binary entropies of the weights."""
    used = leaves_used(tree.forget) | leaves_used(tree.retain)
    lines = []
    for leaf, cur, ref in (("tdF", "tlpf", "trpf"), ("tdR", "tlpr", "trpr")):
        if leaf in used:
            lines.append(f"    {_VAR[leaf]} = {_VAR[cur]} - {_VAR[ref]}")
    for side, term in (("forget", tree.forget), ("retain", tree.retain)):
        ops = _ops_used(term)
        if ops & {"focal", "entw"}:
            lines.append(f"    p_tok_{side} = torch.exp(tok_logp_{side}.detach())")
        if "entw" in ops:
            lines.append(
                f"    ent_tok_{side} = -(p_tok_{side} * tok_logp_{side}.detach() + (1.0 - p_tok_{side}) "
                f"* torch.log(torch.clamp(1.0 - p_tok_{side}, min={_fmt(LOG_EPS)})))"
            )
    return lines


def render(tree: LossTree, interface: str = "faithful", with_tree: bool = True) -> str:
    """Python source of one `def loss_fn(...)` for the interface, ending with the `# tree:` comment.
    Token-level trees exist in the extended interface only (ValueError for "faithful")."""
    used = leaves_used(tree.forget) | leaves_used(tree.retain)
    lines: list[str] = []
    if interface != "extended" and uses_tokens(tree):
        raise ValueError("a token-level loss tree needs the extended interface")
    if interface == "extended":
        lines.append(f"def loss_fn({EXTENDED_ARGS}):")
        lines.append(f'    """epochs: {tree.epochs}"""')
        need = used & set(MEAN_LEAVES)
        if "dF" in used:
            need |= {"lpf", "rpf"}
        if "dR" in used:
            need |= {"lpr", "rpr"}
        src = {
            "lpf": ("tok_logp_forget", "mask_forget"),
            "rpf": ("ref_tok_logp_forget", "mask_forget"),
            "lpr": ("tok_logp_retain", "mask_retain"),
            "rpr": ("ref_tok_logp_retain", "mask_retain"),
        }
        for leaf in ("lpf", "rpf", "lpr", "rpr"):
            if leaf in need:
                tok, mask = src[leaf]
                lines.append(f"    {_VAR[leaf]} = ({tok} * {mask}).sum(-1) / {mask}.sum(-1).clamp(min=1.0)")
        lines += _token_preamble(tree)
    else:
        lines.append(f"def loss_fn({FAITHFUL_ARGS}):")
        lines.append(f'    """epochs: {tree.epochs}"""')
    if "dF" in used:
        lines.append("    d_forget = log_probs_forget - ref_log_probs_forget")
    if "dR" in used:
        lines.append("    d_retain = log_probs_retain - ref_log_probs_retain")
    lines.append(f"    forget_term = {render_expr(tree.forget)[0]}")
    if tree.retain is not None:
        lines.append(f"    retain_term = {render_expr(tree.retain)[0]}")
        lines.append(f"    return forget_term.mean() + {_fmt(tree.weight)} * retain_term.mean()")
    else:
        lines.append("    return forget_term.mean()")
    if with_tree:
        lines.append(f"    # tree: {tree.to_json()}")
    return "\n".join(lines) + "\n"


def _normalised(code: str) -> str | None:
    try:
        return ast.dump(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def tree_from_code(code: str, verify: bool = True) -> LossTree | None:
    """The tree stored in a `# tree: {...}` comment, or None.

    With `verify`, the tree is returned only if rendering it (for the interface of the code's
    signature) gives the same program as `code` (comments and formatting aside), so a tree
    comment left in code that someone edited is not trusted.
    """
    if not code:
        return None
    found = None
    for line in code.splitlines():
        m = _TREE_RE.match(line)
        if m:
            found = m.group(1)
    if found is None:
        return None
    try:
        tree = LossTree.from_json(found)
    except (ValueError, TypeError, RecursionError):
        return None
    if not verify:
        return tree
    want = _normalised(code)
    if want is None:
        return None
    for interface in ("faithful", "extended"):
        try:
            rendered = render(tree, interface)
        except ValueError:  # a token tree has no faithful rendering
            continue
        if _normalised(rendered) == want:
            return tree
    return None


# ---------------------------------------------------------------------------------------------
# Interpreter and numeric check (our own trees only: nothing is exec-ed)
# ---------------------------------------------------------------------------------------------


def _evaluate_token(node: tuple, env: dict[str, Any], side: str | None) -> Any:
    """A token mean or a detached token weight (what `_render_token` writes)."""
    import torch

    op = node[0]
    if op == "tmean":
        mask = env[f"mask_{node[1]}"]
        return (evaluate(node[2], env, node[1]) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    s = side or "f"
    x = evaluate(node[1], env, side)
    cur = env[f"tlp{s}"].detach()
    p = torch.exp(cur)
    if op == "focal":
        return torch.pow(1.0 - p, node[2]) * x
    if op == "entw":
        return -(p * cur + (1.0 - p) * torch.log(torch.clamp(1.0 - p, min=LOG_EPS))) * x
    return (env[f"trp{s}"] > node[2]).float() * x


def evaluate(node: Node, env: dict[str, Any], side: str | None = None) -> Any:
    """Evaluate an element-wise node with torch; `env` maps the leaf names to tensors (token trees:
    also "mask_f" / "mask_r"); `side`: inside a token mean of that side."""
    import torch
    import torch.nn.functional as F

    if isinstance(node, float):
        return node
    if isinstance(node, str):
        return env[node]
    op = node[0]
    if op == "tmean" or op in TOKEN_WEIGHTS:
        return _evaluate_token(node, env, side)
    if op == "clamp":
        x = evaluate(node[1], env, side)
        return torch.clamp(x, min=node[2], max=node[3])
    if op in UNARY:
        x = evaluate(node[1], env, side)
        if op == "softplus":
            return F.softplus(x)
        if op == "logsigmoid":
            return F.logsigmoid(x)
        if op == "sigmoid":
            return torch.sigmoid(x)
        if op == "exp":
            return torch.exp(torch.clamp(x, max=EXP_MAX))
        if op == "log":
            return torch.log(torch.clamp(x, min=LOG_EPS))
        if op == "relu":
            return F.relu(x)
        if op == "abs":
            return torch.abs(x)
        if op == "square":
            return torch.square(x)
        if op == "tanh":
            return torch.tanh(x)
        if op == "neg":
            return -x
    a = evaluate(node[1], env, side)
    b = evaluate(node[2], env, side)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a / b
    raise ValueError(f"unknown op {op!r}")


def loss_value(tree: LossTree, lpf: Any, lpr: Any, rpf: Any, rpr: Any) -> Any:
    """The scalar loss of `tree` on 1-D tensors (what the rendered faithful code computes)."""
    env = {"lpf": lpf, "lpr": lpr, "rpf": rpf, "rpr": rpr, "dF": lpf - rpf, "dR": lpr - rpr}
    return _loss_from_env(tree, env)


def token_env(tlpf: Any, mask_f: Any, tlpr: Any, mask_r: Any, trpf: Any, trpr: Any) -> dict[str, Any]:
    """The leaves of a token tree from [B, T] per-token tensors (the means as the extended render)."""

    def mean(t: Any, m: Any) -> Any:
        return (t * m).sum(-1) / m.sum(-1).clamp(min=1.0)

    lpf, lpr, rpf, rpr = mean(tlpf, mask_f), mean(tlpr, mask_r), mean(trpf, mask_f), mean(trpr, mask_r)
    return {
        "tlpf": tlpf, "tlpr": tlpr, "trpf": trpf, "trpr": trpr, "tdF": tlpf - trpf, "tdR": tlpr - trpr,
        "mask_f": mask_f, "mask_r": mask_r,
        "lpf": lpf, "lpr": lpr, "rpf": rpf, "rpr": rpr, "dF": lpf - rpf, "dR": lpr - rpr,
    }


def _loss_from_env(tree: LossTree, env: dict[str, Any]) -> Any:
    out = evaluate(tree.forget, env).mean()
    if tree.retain is not None:
        out = out + tree.weight * evaluate(tree.retain, env).mean()
    return out


def probe_inputs(batch: int = 64, seed: int = 0) -> dict[str, Any]:
    """Probe tensors spanning the range of mean answer log-probs (<= 0, down to about -30)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.05, 0.5, 2.0, 6.0, 15.0, 30.0]).repeat(batch // 6 + 1)[:batch]

    def lp() -> torch.Tensor:
        return -(torch.rand(batch, generator=g) * scale + 1e-3)

    lpf, lpr = lp(), lp()
    # Half of the references near the current values (early training), half independent (late).
    near = torch.arange(batch) % 2 == 0
    rpf = torch.where(near, (lpf + 0.8 * torch.randn(batch, generator=g)).clamp(max=-1e-3), lp())
    rpr = torch.where(near, (lpr + 0.8 * torch.randn(batch, generator=g)).clamp(max=-1e-3), lp())
    return {"lpf": lpf, "lpr": lpr, "rpf": rpf, "rpr": rpr}


def token_probe_inputs(batch: int = 16, length: int = 8, seed: int = 0) -> dict[str, Any]:
    """[B, T] probe tensors for token trees: per-token log-probs (0 on padding) and masks."""
    import torch

    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.05, 0.5, 2.0, 6.0, 15.0]).repeat(batch // 5 + 1)[:batch, None]

    def lp() -> torch.Tensor:
        return -(torch.rand(batch, length, generator=g) * scale + 1e-3)

    def mask() -> torch.Tensor:
        lengths = torch.randint(1, length + 1, (batch,), generator=g)
        lengths[0] = length
        return (torch.arange(length)[None, :] < lengths[:, None]).float()

    mf, mr = mask(), mask()
    tlpf, tlpr = lp(), lp()
    near = (torch.arange(batch) % 2 == 0)[:, None]
    trpf = torch.where(near, (tlpf + 0.8 * torch.randn(batch, length, generator=g)).clamp(max=-1e-3), lp())
    trpr = torch.where(near, (tlpr + 0.8 * torch.randn(batch, length, generator=g)).clamp(max=-1e-3), lp())
    return {"tlpf": tlpf * mf, "tlpr": tlpr * mr, "trpf": trpf * mf, "trpr": trpr * mr, "mask_f": mf, "mask_r": mr}


def _probe_sets(tree: LossTree, seeds: tuple[int, ...]) -> list[tuple[dict[str, Any], bool]]:
    """(probe, at_init) pairs; at the first step the reference equals the current model."""
    if uses_tokens(tree):
        probes = [(token_probe_inputs(seed=seed), False) for seed in seeds]
        init = dict(token_probe_inputs(seed=seeds[0] if seeds else 0))
        init.update(trpf=init["tlpf"], trpr=init["tlpr"])
    else:
        probes = [(probe_inputs(seed=seed), False) for seed in seeds]
        init = dict(probe_inputs(seed=seeds[0] if seeds else 0))
        init.update(rpf=init["lpf"], rpr=init["lpr"])
    return probes + [(init, True)]


def _loss_and_grads(tree: LossTree, p: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(loss, d loss / d forget log-probs, d loss / d retain log-probs) on one probe."""
    import torch

    tokens = "tlpf" in p
    f = p["tlpf" if tokens else "lpf"].clone().requires_grad_(True)
    r = p["tlpr" if tokens else "lpr"].clone().requires_grad_(True)
    with torch.enable_grad():
        if tokens:
            loss = _loss_from_env(tree, token_env(f, p["mask_f"], r, p["mask_r"], p["trpf"], p["trpr"]))
        else:
            loss = loss_value(tree, f, r, p["rpf"], p["rpr"])
        if not torch.is_tensor(loss) or loss.dim() != 0 or not torch.isfinite(loss):
            return loss, None, None
        gf, gr = torch.autograd.grad(loss, (f, r), allow_unused=True)
    return loss, gf, gr


def check_tree(tree: LossTree, seeds: tuple[int, ...] = (0, 1)) -> str | None:
    """None if the loss is a finite scalar, non-decreasing in every forget log-prob (increasing
    somewhere, also when the reference equals the current model) and non-increasing in every
    retain log-prob (decreasing somewhere); else a reason. Token trees are checked per token."""
    import torch

    problem = structure_problem(tree)
    if problem:
        return problem
    for p, at_init in _probe_sets(tree, seeds):
        loss, gf, gr = _loss_and_grads(tree, p)
        if not torch.is_tensor(loss) or loss.dim() != 0:
            return "the loss is not a scalar tensor"
        if not torch.isfinite(loss):
            return "the loss is not finite on probe inputs"
        if gf is None or not torch.isfinite(gf).all():
            return "no finite gradient reaches the forget log-probs"
        tol = 1e-7
        if (gf < -tol).any() or gf.sum() <= tol:
            return "the loss is not increasing in the forget log-probs"
        if tree.retain is not None:
            if gr is None or not torch.isfinite(gr).all():
                return "no finite gradient reaches the retain log-probs"
            if (gr > tol).any() or (not at_init and gr.sum() >= -tol):
                return "the loss is not decreasing in the retain log-probs"
    return None


# ---------------------------------------------------------------------------------------------
# Literature seeds (written in the faithful interface, mean answer log-probs)
# ---------------------------------------------------------------------------------------------


def _npo(beta: float = 0.1, alpha: float = 1.0) -> LossTree:
    # NPO: -(2/beta) logsigmoid(-beta (lp - ref)) = (2/beta) softplus(beta (lp - ref)); retain NLL.
    return LossTree(("*", rc(2.0 / beta), ("softplus", ("*", rc(beta), "dF"))), ("neg", "lpr"), rc(alpha), 5)


def _simnpo(beta: float = 4.5, gamma: float = 0.125, alpha: float = 1.0) -> LossTree:
    # SimNPO: -(2/beta) logsigmoid(-beta * mean_lp - gamma) = (2/beta) softplus(beta * mean_lp + gamma).
    return LossTree(
        ("*", rc(2.0 / beta), ("softplus", ("+", ("*", rc(beta), "lpf"), rc(gamma)))),
        ("neg", "lpr"),
        rc(alpha),
        5,
    )


SEEDS: tuple[tuple[str, LossTree], ...] = (
    # Gradient ascent: minimising -NLL, i.e. the mean forget log-prob.
    ("GA", LossTree("lpf", None, 1.0, 3)),
    # Gradient difference: ascent on forget + NLL on retain.
    ("GradDiff", LossTree("lpf", ("neg", "lpr"), 1.0, 5)),
    ("NPO", _npo()),
    ("SimNPO", _simnpo()),
    # EvoMU-style fallback templates.
    ("hinge_margin", LossTree(("relu", ("+", "dF", 0.5)), ("neg", "lpr"), 1.0, 5)),
    ("softplus_scaled", LossTree(("softplus", ("*", 2.0, "lpf")), ("neg", "lpr"), 1.0, 5)),
    # Focal weighting: still-remembered examples (high lpf) weigh more; a product of two positive
    # increasing factors, so monotone (sigmoid(k*lpf) * lpf itself is not, for lpf < -1/k).
    (
        "focal",
        LossTree(
            ("*", ("sigmoid", ("*", 1.0, "lpf")), ("softplus", ("*", 2.0, "dF"))), ("neg", "lpr"), 1.0, 5
        ),
    ),
    (
        "bounded_sigmoid",
        LossTree(("sigmoid", ("*", 2.0, "dF")), ("softplus", ("*", 2.0, ("neg", "dR"))), 1.0, 5),
    ),
    ("prob_ratio", LossTree(("exp", ("*", 1.0, "dF")), ("neg", "lpr"), 0.5, 4)),
    ("ref_ratio", LossTree(("/", "lpf", ("+", ("abs", "rpf"), 1.0)), ("relu", ("neg", "dR")), 2.0, 5)),
)


# Token-level templates (extended interface only).
TOKEN_SEEDS: tuple[tuple[str, LossTree], ...] = (
    # UnDIAL-like: push each token's log-prob down to `margin` below the reference's, then stop.
    ("token_undial", LossTree(("tmean", "f", ("relu", ("+", "tdF", 2.0))), ("neg", "lpr"), 1.0, 5)),
    # NPO per token, with a focal retain NLL ((1-p)^gamma: badly predicted retain tokens first).
    (
        "token_npo_focal_retain",
        LossTree(
            ("tmean", "f", ("*", 2.0, ("softplus", ("*", 1.0, "tdF")))),
            ("tmean", "r", ("focal", ("neg", "tlpr"), 2.0)),
            1.0,
            5,
        ),
    ),
    # Ascent weighted by the token's binary entropy: uncertain tokens move first.
    ("token_entropy", LossTree(("tmean", "f", ("entw", ("softplus", ("*", 2.0, "tdF")))), ("neg", "lpr"), 1.0, 5)),
    # Only the tokens the reference was confident on (log-prob above -1): the memorised ones.
    (
        "token_refmask",
        LossTree(("tmean", "f", ("refmask", ("softplus", ("*", 1.0, "tdF")), -1.0)), ("neg", "lpr"), 1.0, 5),
    ),
)


def seed_trees(interface: str = "faithful") -> list[tuple[str, LossTree]]:
    return list(SEEDS) + (list(TOKEN_SEEDS) if interface == "extended" else [])


# ---------------------------------------------------------------------------------------------
# Random generation and variation operators
# ---------------------------------------------------------------------------------------------


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
    if w < 0.25:
        inner = ("focal", inner, rc(rng.uniform(0.5, 3.0)))
    elif w < 0.45:
        inner = ("entw", inner)
    elif w < 0.6:
        inner = ("refmask", inner, rc(-rng.uniform(0.2, 3.0)))
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
        and not _is_atomic(get_at(term, p))
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


# ---------------------------------------------------------------------------------------------
# Constant tuning of foreign code (no tree): AST constant perturbation, source text preserved
# ---------------------------------------------------------------------------------------------

_EPOCHS_RE = re.compile(r'("""|\'\'\')(\s*epochs\s*:\s*)(\d+)')


def tunable_constants(code: str) -> list[ast.Constant]:
    """Float literals, and int literals used as operands of + - * / (not exponents, not dims)."""
    try:
        mod = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    out: list[ast.Constant] = []
    parents: dict[int, ast.AST] = {}
    for node in ast.walk(mod):
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
    for node in ast.walk(mod):
        if not isinstance(node, ast.Constant) or isinstance(node.value, bool):
            continue
        if not isinstance(node.value, (int, float)) or node.value == 0:
            continue
        parent = parents.get(id(node))
        while isinstance(parent, ast.UnaryOp):
            parent = parents.get(id(parent))
        if isinstance(node.value, float):
            if isinstance(parent, ast.keyword) and parent.arg in ("dim", "axis"):
                continue
            out.append(node)
        elif isinstance(parent, ast.BinOp) and isinstance(parent.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            out.append(node)
    return out


def shift_code_epochs(code: str, delta: int) -> tuple[str, str] | None:
    """(code with its epochs docstring moved by `delta` within 1..10, "epochs a -> b"), or None
    when the code has no epochs docstring or is already at the bound."""
    m = _EPOCHS_RE.search(code)
    if not m:
        return None
    old = int(m.group(3))
    new = min(10, max(1, old + delta))
    if new == old:
        return None
    out = code[: m.start(3)] + str(new) + code[m.end(3) :]
    out = "\n".join(ln for ln in out.splitlines() if not _TREE_RE.match(ln)) + "\n"  # the tree is stale
    return out, f"epochs {old} -> {new}"


def perturb_code_constants(code: str, rng: random.Random, sigma: float = 0.35, epochs_p: float = 0.3) -> str:
    """Multiply tunable literals by log-normal factors, editing the source text in place (comments
    and layout kept); maybe shift the epochs docstring by one. Returns `code` unchanged if there is
    nothing to tune. A stale `# tree:` comment is dropped."""
    consts = tunable_constants(code)
    lines = code.split("\n")  # the line numbering of `ast` (not str.splitlines)
    edits: list[tuple[int, int, int, str]] = []  # (line index, start byte, end byte, text)
    for node in consts:
        if node.end_lineno != node.lineno or node.end_col_offset is None:
            continue
        value = float(node.value) * math.exp(rng.gauss(0.0, sigma))
        new = repr(rc(value))
        edits.append((node.lineno - 1, node.col_offset, node.end_col_offset, new))
    for li, start, end, text in sorted(edits, key=lambda e: (e[0], -e[1])):
        raw = lines[li].encode("utf-8")
        lines[li] = (raw[:start] + text.encode("utf-8") + raw[end:]).decode("utf-8")
    out = "\n".join(lines)
    if rng.random() < epochs_p:
        m = _EPOCHS_RE.search(out)
        if m:
            k = min(10, max(1, int(m.group(3)) + rng.choice((-1, 1))))
            out = out[: m.start(3)] + str(k) + out[m.end(3) :]
    if out != code:
        out = "\n".join(ln for ln in out.splitlines() if not _TREE_RE.match(ln)) + "\n"
    return out
