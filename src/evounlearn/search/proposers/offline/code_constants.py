"""Constant tuning of foreign code, which carries no (trusted) loss tree, e.g. a loss written by
an LLM: its numeric literals are perturbed through the AST and edited in the source text in place
(comments and layout kept), and its epochs docstring may be shifted.
"""

from __future__ import annotations

import ast
import math
import random
import re

from .render import TREE_COMMENT_RE
from .tree import rc

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
    out = "\n".join(ln for ln in out.splitlines() if not TREE_COMMENT_RE.match(ln)) + "\n"  # the tree is stale
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
        out = "\n".join(ln for ln in out.splitlines() if not TREE_COMMENT_RE.match(ln)) + "\n"
    return out
