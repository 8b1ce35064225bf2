"""Compiling checked loss code into a callable (inside the isolated worker only).

`compile_function` / `compile_program` re-check the code, then compile it with restricted
builtins (abs, min, max, float, int, len, range capped at MAX_RANGE elements, sum, bool) and
globals holding only torch, F (= torch.nn.functional) and math. `x += y` is rewritten to
`x = x + y` (so that a candidate cannot modify its input tensors in place) and annotations are
dropped. Both refuse to run outside an isolated worker (`worker_process.py` sets WORKER_ENV) unless the
caller passes `allow_in_process=True` (trusted code only: tests, a user's own loss file).
"""

from __future__ import annotations

import ast
import math
import os
from collections.abc import Callable, Collection, Sequence
from typing import Any

from .checker import check_function, format_reason, parse_single_function
from .node_checker import Rejection
from .policy import MAX_RANGE, SandboxError
from .program import check_program, helper_closure
from .worker_process import WORKER_ENV

__all__ = ["compile_function", "compile_program", "sandbox_globals"]


class _Rewrite(ast.NodeTransformer):
    """`x += y` -> `x = x + y`; annotations dropped."""

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        tgt = node.target
        assert isinstance(tgt, ast.Name)
        new = ast.Assign(
            targets=[ast.Name(tgt.id, ast.Store())],
            value=ast.BinOp(ast.Name(tgt.id, ast.Load()), node.op, self.visit(node.value)),
        )
        return ast.copy_location(new, node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.returns = None
        for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs:
            a.annotation = None
        self.generic_visit(node)
        return node


def _bounded_range(*args: Any) -> range:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise ValueError(f"range of {len(r)} elements exceeds the sandbox limit {MAX_RANGE}")
    return r


_IMPORTABLE_ROOTS = frozenset({"torch", "numpy", "math"})


def _internal_import(
    name: str,
    globals: Any = None,  # noqa: A002 - the signature of __import__
    locals: Any = None,  # noqa: A002
    fromlist: Any = (),
    level: int = 0,
) -> Any:
    """`__import__` for C code called from candidate frames (torch.tensor imports torch
    internals through the caller's builtins). Candidate code itself can never reach it (dunder
    names are rejected); only torch / numpy / math are importable."""
    if level != 0 or name.partition(".")[0] not in _IMPORTABLE_ROOTS:
        raise ImportError(f"import of {name!r} is not allowed in the sandbox")
    import builtins

    return builtins.__import__(name, None, None, fromlist, 0)


def _safe_builtins() -> dict[str, Any]:
    return {
        "__import__": _internal_import,
        "abs": abs,
        "min": min,
        "max": max,
        "float": float,
        "int": int,
        "len": len,
        "range": _bounded_range,
        "sum": sum,
        "bool": bool,
        "True": True,
        "False": False,
        "None": None,
    }


def sandbox_globals() -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    return {
        "__builtins__": _safe_builtins(),
        "torch": torch,
        "F": F,
        "math": math,
        "__name__": "evounlearn_loss",
    }


def _require_worker(allow_in_process: bool) -> None:
    if not allow_in_process and os.environ.get(WORKER_ENV) != "1":
        raise SandboxError(
            "untrusted loss code may only be compiled inside an isolated worker "
            "(evounlearn.sandbox.workers); pass allow_in_process=True only for trusted code"
        )


def compile_function(
    src: str,
    helpers: Sequence[str] = (),
    *,
    interface: str = "faithful",
    allow_in_process: bool = False,
) -> Callable[..., Any]:
    """Check and compile one function (plus the sources of the helpers it may call) with
    restricted builtins and globals {torch, F, math}; returns the function object.

    Raises SandboxError when any function is rejected, and when called outside the isolated
    worker (unless `allow_in_process=True`).
    """
    _require_worker(allow_in_process)
    helper_trees: list[ast.FunctionDef] = []
    helper_names: list[str] = []
    for h in helpers:
        try:
            helper_trees.append(parse_single_function(h))
        except Rejection as e:
            raise SandboxError(f"helper rejected: {format_reason(e, 0)}") from None
        helper_names.append(helper_trees[-1].name)
    main_res = check_function(src, interface, helpers=helper_names)
    if not main_res.ok:
        raise SandboxError(main_res.reason)
    calls: dict[str, Collection[str]] = {main_res.name: main_res.calls}
    for h, tree in zip(helpers, helper_trees):
        res = check_function(h, interface, helpers=helper_names, role="helper")
        if not res.ok:
            raise SandboxError(f"helper '{tree.name}' rejected: {res.reason}")
        calls[tree.name] = res.calls
    helper_closure(main_res.name, calls)  # raises on recursion
    main_tree = parse_single_function(src)
    module = ast.Module(body=[*helper_trees, main_tree], type_ignores=[])
    module = _Rewrite().visit(module)
    ast.fix_missing_locations(module)
    code = compile(module, f"<loss:{main_res.name}>", "exec", dont_inherit=True)
    env = sandbox_globals()
    exec(code, env)  # noqa: S102 - checked code, restricted globals, isolated worker
    return env[main_res.name]


def compile_program(
    source: str,
    name: str | None = None,
    *,
    interface: str = "faithful",
    allow_in_process: bool = False,
) -> Callable[..., Any]:
    """Compile candidate `name` (default: the first candidate) of a whole program, with the
    helpers it needs. Raises SandboxError when it (or a helper it needs) is rejected."""
    _require_worker(allow_in_process)
    pc = check_program(source, interface)
    if pc.error:
        raise SandboxError(pc.error)
    names = [f.name for f in pc.losses]
    if name is None:
        name = names[0]
    if name not in names:
        raise SandboxError(f"no loss function named {name!r} in the program (found: {', '.join(names)})")
    if pc.reasons.get(name) != "ok":
        raise SandboxError(pc.reasons.get(name, "rejected"))
    by_name = {f.name: f for f in pc.functions}
    return compile_function(
        by_name[name].source,
        [by_name[h].source for h in pc.helpers[name]],
        interface=interface,
        allow_in_process=allow_in_process,
    )
