"""The static check of one loss-program function against the allow-lists of `policy.py`.

`check_function(src, interface)` parses one function, checks its size and signature here, and walks
its AST with `node_checker.NodeChecker` (the per-node rules); the first violation
becomes the reason, reading `line N: <message>` (N counted in the text given, shifted by
`line_offset`), e.g. `line 3: import not allowed`, `line 2: forbidden name 'eval'`,
`line 4: dunder attribute '__class__' not allowed`, `line 2: attribute 'torch.load' not allowed`,
`line 5: integer constant 1000000000 too large (limit 1000000)`, `line 2: positional argument 2 of
'F.relu' is its in-place flag 'inplace'`; problems of the whole function read without a line
(`wrong signature: expected loss_fn(...)`, `function too long (...)`).
Nothing here executes candidate code.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Collection
from dataclasses import dataclass

from .node_checker import NodeChecker, Rejection
from .policy import (
    FORBIDDEN_NAMES,
    MAX_DEPTH,
    MAX_FUNCTION_LINES,
    MAX_FUNCTION_NODES,
    MAX_SOURCE_CHARS,
    MODULE_NAMES,
    SAFE_BUILTIN_NAMES,
    interface_args,
    is_loss_name,
)

__all__ = [
    "CheckResult",
    "check_function",
    "format_reason",
    "parse_single_function",
    "syntax_message",
]


def syntax_message(err: SyntaxError, line_offset: int = 0) -> str:
    line = (err.lineno or 1) + line_offset
    return f"line {line}: syntax error: {err.msg}"



@dataclass(frozen=True)
class CheckResult:
    """Outcome of the static check of one function: `ok`, and `reason` ("ok" or why not)."""

    ok: bool
    reason: str
    name: str = ""
    calls: tuple[str, ...] = ()  # other program functions it calls (helpers)
    is_loss: bool = False

    def __bool__(self) -> bool:
        return self.ok


def _measure(tree: ast.AST) -> tuple[int, int]:
    """(number of nodes, maximum depth), computed without recursion."""
    count = 0
    depth = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 1)]
    while stack:
        node, d = stack.pop()
        count += 1
        depth = max(depth, d)
        if count > MAX_FUNCTION_NODES * 4:
            break
        for child in ast.iter_child_nodes(node):
            stack.append((child, d + 1))
    return count, depth


def parse_single_function(src: str) -> ast.FunctionDef:
    if len(src) > MAX_SOURCE_CHARS:
        raise Rejection(None, f"function too long ({len(src)} characters, limit {MAX_SOURCE_CHARS})")
    try:
        tree = ast.parse(src)
    except SyntaxError as e:
        raise Rejection(None, syntax_message(e)) from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise Rejection(None, f"syntax error: {type(e).__name__}") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        bad = next((n for n in tree.body if not isinstance(n, ast.FunctionDef)), None)
        if isinstance(bad, (ast.Import, ast.ImportFrom)):
            raise Rejection(bad, "import not allowed")
        raise Rejection(bad, "expected exactly one function definition")
    fn = tree.body[0]
    if isinstance(fn, ast.AsyncFunctionDef):
        raise Rejection(fn, "async code not allowed")
    return fn


def _check_signature(fn: ast.FunctionDef, interface: str) -> None:
    names, n_required = interface_args(interface)
    args = fn.args
    got = [a.arg for a in args.posonlyargs + args.args]
    expected = ", ".join(n if i < n_required else f"{n}=None" for i, n in enumerate(names))
    if (
        got != list(names)
        or args.vararg is not None
        or args.kwarg is not None
        or args.kwonlyargs
        or args.posonlyargs
    ):
        raise Rejection(None, f"wrong signature: expected {fn.name}({expected}), got ({', '.join(got)})")
    defaults = args.defaults
    first_default = len(names) - len(defaults)
    if first_default < n_required:
        raise Rejection(
            None, f"wrong signature: expected {fn.name}({expected}) (only ref arguments may have defaults)"
        )
    for d in defaults:
        if not (isinstance(d, ast.Constant) and d.value is None):
            raise Rejection(None, f"wrong signature: expected {fn.name}({expected}) (defaults must be None)")


def format_reason(err: Rejection, line_offset: int) -> str:
    if err.node is not None and hasattr(err.node, "lineno"):
        return f"line {err.node.lineno + line_offset}: {err.message}"  # type: ignore[attr-defined]
    msg = err.message
    if line_offset and msg.startswith("line "):
        m = re.match(r"line (\d+): (.*)", msg, re.S)
        if m:
            return f"line {int(m.group(1)) + line_offset}: {m.group(2)}"
    return msg


def _check_tree(
    fn: ast.FunctionDef,
    src: str,
    interface: str,
    helpers: Collection[str],
    loss_names: Collection[str],
    role: str | None,
) -> NodeChecker:
    is_loss = is_loss_name(fn.name) if role is None else role == "loss"
    if fn.name.startswith("__"):
        raise Rejection(fn, f"dunder name '{fn.name}' not allowed")
    if fn.name in FORBIDDEN_NAMES or fn.name in MODULE_NAMES or fn.name in SAFE_BUILTIN_NAMES:
        raise Rejection(fn, f"function name '{fn.name}' shadows a reserved name")
    n_lines = (fn.end_lineno or fn.lineno) - fn.lineno + 1
    if n_lines > MAX_FUNCTION_LINES:
        raise Rejection(None, f"function too long ({n_lines} lines, limit {MAX_FUNCTION_LINES})")
    n_nodes, depth = _measure(fn)
    if n_nodes > MAX_FUNCTION_NODES:
        raise Rejection(None, f"function too large ({n_nodes} syntax nodes, limit {MAX_FUNCTION_NODES})")
    if depth > MAX_DEPTH:
        raise Rejection(None, f"expression nested too deeply (depth {depth}, limit {MAX_DEPTH})")
    if is_loss:
        _check_signature(fn, interface)
    checker = NodeChecker(fn, is_loss=is_loss, helpers=helpers, loss_names=loss_names)
    checker.run()
    return checker


def check_function(
    src: str,
    interface: str = "faithful",
    *,
    helpers: Collection[str] = (),
    loss_names: Collection[str] = (),
    role: str | None = None,
    line_offset: int = 0,
) -> CheckResult:
    """Statically check the source of one function against the whitelist.

    `helpers`: names of the other (helper) functions of the program, which it may call;
    `loss_names`: names of the program's candidates (which it may not call);
    `role`: "loss" or "helper" (default: "loss" when the name is `loss_fn` / `loss_fn_<k>`);
    `line_offset`: added to line numbers in the reason (the function's position in its program).
    """
    interface_args(interface)
    try:
        fn = parse_single_function(src)
    except Rejection as e:
        return CheckResult(False, format_reason(e, line_offset))
    try:
        checker = _check_tree(fn, src, interface, helpers, loss_names, role)
    except Rejection as e:
        return CheckResult(False, format_reason(e, line_offset), fn.name, is_loss=is_loss_name(fn.name))
    except RecursionError:
        return CheckResult(False, "program nested too deeply", fn.name)
    return CheckResult(True, "ok", fn.name, tuple(sorted(checker.calls)), checker.is_loss)


