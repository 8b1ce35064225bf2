"""Rendering a loss tree to the Python source of a `loss_fn`, and reading the tree back.

The source ends with a `# tree: {...}` comment holding the tree's compact JSON (`TREE_COMMENT_RE`
finds it); `tree_from_code` trusts that comment only when re-rendering the tree gives the same program,
so a tree comment left in code that someone edited is ignored.
"""

from __future__ import annotations

import ast
import re

from .tree import (
    EXP_MAX,
    LOG_EPS,
    MEAN_LEAVES,
    TOKEN_WEIGHTS,
    LossTree,
    Node,
    leaves_used,
    ops_used,
    uses_tokens,
)

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
TREE_COMMENT_RE = re.compile(r"^\s*#\s*tree:\s*(\{.*\})\s*$")

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
    if op == "wga":
        return f"torch.exp({_fmt(node[2])} * tok_logp_{s}.detach()) * {inner}", _MUL
    if op == "ceu":
        return f"odds_tok_{s} * {inner}", _MUL
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


def _token_preamble(tree: LossTree) -> list[str]:
    """The per-token locals a token tree needs: differences to the reference and the detached
    probabilities / binary entropies / odds of the weights."""
    used = leaves_used(tree.forget) | leaves_used(tree.retain)
    lines = []
    for leaf, cur, ref in (("tdF", "tlpf", "trpf"), ("tdR", "tlpr", "trpr")):
        if leaf in used:
            lines.append(f"    {_VAR[leaf]} = {_VAR[cur]} - {_VAR[ref]}")
    for side, term in (("forget", tree.forget), ("retain", tree.retain)):
        ops = ops_used(term)
        if ops & {"focal", "entw", "ceu"}:
            lines.append(f"    p_tok_{side} = torch.exp(tok_logp_{side}.detach())")
        if "ceu" in ops:  # CE-U's logit-gradient is p/(1-p) * d log p (see tree.py)
            lines.append(f"    odds_tok_{side} = p_tok_{side} / torch.clamp(1.0 - p_tok_{side}, min={_fmt(LOG_EPS)})")
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
        m = TREE_COMMENT_RE.match(line)
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
