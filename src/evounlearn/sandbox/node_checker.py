"""The walk over one function's syntax nodes (`NodeChecker`) that `checker.check_function` runs:
each node is held against the allow-lists of `policy.py`, and the first violation is raised as a
`Rejection` at that node. Constant expressions are folded (`_fold`) so that magnitudes are checked
without running anything.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Collection
from typing import Any

from .policy import (
    ALLOWED_MODULE_PATHS,
    ALLOWED_NODES,
    FINFO_ATTRIBUTES,
    FORBIDDEN_NAMES,
    MAX_FLOAT_CONSTANT,
    MAX_INT_CONSTANT,
    MODULE_NAMES,
    MODULE_VALUES,
    NODE_MESSAGES,
    OUTPUT_PARAMETERS,
    REDUCTIONS,
    SAFE_BUILTIN_NAMES,
    STRING_MESSAGE,
    TENSOR_ATTRIBUTES,
    output_parameter,
)


class Rejection(Exception):
    """A violation of the rules, at `node` (None: the function as a whole)."""

    def __init__(self, node: ast.AST | None, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message



_TOO_LARGE = object()


def _fold(node: ast.AST) -> Any:
    """Numeric value of a constant expression, `_TOO_LARGE`, or None when not constant."""
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        return v
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _fold(node.operand)
        if v is None or v is _TOO_LARGE:
            return v
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        a, b = _fold(node.left), _fold(node.right)
        if a is _TOO_LARGE or b is _TOO_LARGE:
            return _TOO_LARGE
        if a is None or b is None:
            return None
        try:
            if isinstance(node.op, ast.Pow):
                if abs(b) > 256 or (abs(a) > MAX_INT_CONSTANT and abs(b) > 1):
                    return _TOO_LARGE if abs(a) > 1 and b > 0 else None
                return a**b
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if isinstance(node.op, ast.Div):
                return a / b
            if isinstance(node.op, ast.FloorDiv):
                return a // b
            if isinstance(node.op, ast.Mod):
                return a % b
        except (ArithmeticError, ValueError, TypeError):
            return None
        return None
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("int", "float")
        and len(node.args) == 1
        and not node.keywords
    ):
        v = _fold(node.args[0])
        if v is None or v is _TOO_LARGE:
            return v
        try:
            return int(v) if node.func.id == "int" else float(v)
        except (ArithmeticError, ValueError):
            return _TOO_LARGE
    return None


def _dotted(node: ast.AST) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


def docstring_node(fn: ast.FunctionDef) -> ast.AST | None:
    if fn.body and isinstance(fn.body[0], ast.Expr):
        v = fn.body[0].value
        if isinstance(v, ast.Constant) and isinstance(v.value, str):
            return v
    return None



class NodeChecker:
    """Walks one function's AST and raises `Rejection` at the first node the policy forbids (names,
    attributes, calls, constants, assignment targets)."""

    def __init__(
        self,
        fn: ast.FunctionDef,
        *,
        is_loss: bool,
        helpers: Collection[str],
        loss_names: Collection[str],
    ) -> None:
        self.fn = fn
        self.is_loss = is_loss
        self.helpers = set(helpers) - {fn.name}
        self.loss_names = set(loss_names)
        self.calls: set[str] = set()
        self.parents: dict[int, ast.AST] = {}
        self.skip: set[int] = set()
        self.docstring = docstring_node(fn)
        self.params: set[str] = set()
        self.locals: set[str] = set()

    # -- helpers
    def parent(self, node: ast.AST) -> ast.AST | None:
        return self.parents.get(id(node))

    def severe_scan(self) -> None:
        """Report the most telling violation first: forbidden syntax, dunder / private /
        forbidden names and attributes, in source order (annotations are not scanned)."""
        nodes: list[ast.AST] = []
        roots: list[ast.AST] = [*self.fn.body, *self.fn.args.defaults, *self.fn.decorator_list]
        for root in roots:
            nodes.extend(ast.walk(root))
        nodes.sort(key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0)))
        allowed_strings = {id(self.docstring)} | {
            id(n.value)
            for n in nodes
            if isinstance(n, ast.keyword) and n.arg == "reduction" and isinstance(n.value, ast.Constant)
        }
        found: list[tuple[int, int, int, ast.AST, str]] = []

        def add(prio: int, node: ast.AST, msg: str) -> None:
            found.append((prio, getattr(node, "lineno", 0), getattr(node, "col_offset", 0), node, msg))

        for node in nodes:
            t = type(node)
            if t in NODE_MESSAGES and t not in (ast.LShift, ast.RShift):
                add(0, node, NODE_MESSAGES[t])
            elif isinstance(node, ast.Name):
                if node.id.startswith("__"):
                    add(1, node, f"dunder name '{node.id}' not allowed")
                elif node.id in FORBIDDEN_NAMES:
                    add(1, node, f"forbidden name '{node.id}'")
            elif isinstance(node, ast.Attribute):
                if node.attr.startswith("__"):
                    add(2, node, f"dunder attribute '{node.attr}' not allowed")
                elif node.attr.startswith("_"):
                    add(2, node, f"private attribute '{node.attr}' not allowed")
            elif isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
                if id(node) not in allowed_strings:
                    add(3, node, STRING_MESSAGE)
        if found:
            _, _, _, node, msg = min(found, key=lambda f: f[:3])
            raise Rejection(node, msg)

    def run(self) -> None:
        fn = self.fn
        self.severe_scan()
        if fn.decorator_list:
            raise Rejection(fn.decorator_list[0], "decorators not allowed")
        self.check_arguments(fn.args)
        # collect locals
        for node in ast.walk(fn):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                self.locals.add(node.id)
        for node in ast.walk(fn):
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
                and node is not fn
            ):
                msg = NODE_MESSAGES.get(type(node), "nested function definition not allowed")
                raise Rejection(node, msg)
        returns = [n for n in ast.walk(fn) if isinstance(n, ast.Return)]
        if not any(r.value is not None for r in returns):
            raise Rejection(fn, f"function '{fn.name}' has no 'return <value>' statement")
        roots: list[ast.AST] = list(fn.body)
        roots += [d for d in fn.args.defaults if d is not None]
        roots += [d for d in fn.args.kw_defaults if d is not None]
        for root in roots:
            self.parents[id(root)] = fn
            self.visit(root)

    def check_arguments(self, args: ast.arguments) -> None:
        if args.vararg is not None or args.kwarg is not None:
            raise Rejection(self.fn, "*args / **kwargs not allowed")
        if args.posonlyargs:
            raise Rejection(self.fn, "positional-only arguments not allowed")
        names = [a.arg for a in args.args + args.kwonlyargs]
        for a in names:
            if a.startswith("__"):
                raise Rejection(self.fn, f"dunder name '{a}' not allowed")
            if a in FORBIDDEN_NAMES or a in MODULE_NAMES or a in SAFE_BUILTIN_NAMES:
                raise Rejection(self.fn, f"argument name '{a}' shadows a reserved name")
        self.params = set(names)
        for d in list(args.defaults) + [d for d in args.kw_defaults if d is not None]:
            if (
                not (isinstance(d, ast.Constant) and not isinstance(d.value, (str, bytes)))
                and _fold(d) is None
            ):
                raise Rejection(d, "argument defaults must be numeric constants or None")

    def visit(self, node: ast.AST) -> None:
        if id(node) in self.skip:
            return
        t = type(node)
        if t not in ALLOWED_NODES:
            msg = NODE_MESSAGES.get(t)
            if msg is None:
                msg = f"syntax element '{t.__name__}' not allowed"
            raise Rejection(node, msg)
        meth = getattr(self, "visit_" + t.__name__, None)
        if meth is not None:
            meth(node)
        for child in ast.iter_child_nodes(node):
            self.parents[id(child)] = node
            self.visit(child)

    # -- statements
    def visit_Assign(self, node: ast.Assign) -> None:
        for tgt in node.targets:
            self.check_target(tgt)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if not isinstance(node.target, ast.Name):
            raise Rejection(node, "augmented assignment to an item or attribute not allowed")
        self.check_target(node.target)
        if isinstance(node.op, (ast.LShift, ast.RShift)):
            raise Rejection(node, "shift operator not allowed")

    def visit_For(self, node: ast.For) -> None:
        self.check_target(node.target)

    def check_target(self, tgt: ast.AST) -> None:
        if isinstance(tgt, ast.Name):
            if tgt.id.startswith("__"):
                raise Rejection(tgt, f"dunder name '{tgt.id}' not allowed")
            reserved = FORBIDDEN_NAMES | set(MODULE_NAMES) | set(SAFE_BUILTIN_NAMES) | self.helpers
            if tgt.id in reserved or tgt.id in self.loss_names or tgt.id == self.fn.name:
                raise Rejection(tgt, f"cannot assign to reserved name '{tgt.id}'")
            return
        if isinstance(tgt, (ast.Tuple, ast.List)):
            for elt in tgt.elts:
                self.check_target(elt)
            return
        if isinstance(tgt, ast.Subscript):
            raise Rejection(tgt, "item assignment not allowed")
        if isinstance(tgt, ast.Attribute):
            raise Rejection(tgt, "attribute assignment not allowed")
        if isinstance(tgt, ast.Starred):
            raise Rejection(tgt, "star-arguments not allowed")
        raise Rejection(tgt, "unsupported assignment target")

    def visit_Expr(self, node: ast.Expr) -> None:
        if node.value is self.docstring:
            self.skip.add(id(node.value))

    # -- expressions
    def visit_Constant(self, node: ast.Constant) -> None:
        v = node.value
        if isinstance(v, str):
            par = self.parent(node)
            if isinstance(par, ast.keyword) and par.arg == "reduction" and v in REDUCTIONS:
                return
            raise Rejection(node, STRING_MESSAGE)
        if isinstance(v, bytes):
            raise Rejection(node, "bytes constant not allowed")
        if isinstance(v, complex):
            raise Rejection(node, "complex constant not allowed")
        if v is None or v is Ellipsis or isinstance(v, bool):
            return
        self.check_magnitude(node, v)

    def check_magnitude(self, node: ast.AST, v: Any) -> None:
        if v is _TOO_LARGE:
            raise Rejection(node, f"numeric constant too large (limit {MAX_INT_CONSTANT})")
        if isinstance(v, bool) or v is None:
            return
        if isinstance(v, int) and abs(v) > MAX_INT_CONSTANT:
            shown = str(v) if abs(v) < 10**30 else f"~1e{len(str(abs(v))) - 1}"
            raise Rejection(node, f"integer constant {shown} too large (limit {MAX_INT_CONSTANT})")
        if isinstance(v, float) and math.isfinite(v) and abs(v) > MAX_FLOAT_CONSTANT:
            raise Rejection(node, f"numeric constant {v:g} too large (limit {MAX_FLOAT_CONSTANT:g})")
        if isinstance(v, float) and not math.isfinite(v):
            raise Rejection(node, "numeric constant too large (overflow)")

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, (ast.LShift, ast.RShift)):
            raise Rejection(node, "shift operator not allowed")
        v = _fold(node)
        if v is not None:
            self.check_magnitude(node, v)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        v = _fold(node)
        if v is not None:
            self.check_magnitude(node, v)

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if isinstance(node.ctx, ast.Store):
            return  # checked by check_target
        par = self.parent(node)
        if name.startswith("__"):
            raise Rejection(node, f"dunder name '{name}' not allowed")
        if name in FORBIDDEN_NAMES:
            raise Rejection(node, f"forbidden name '{name}'")
        if name in self.params or name in self.locals:
            return
        if name in MODULE_NAMES:
            if not (isinstance(par, ast.Attribute) and par.value is node):
                raise Rejection(node, f"module '{name}' may only be used as {name}.<function>")
            return
        is_called = isinstance(par, ast.Call) and par.func is node
        if name in SAFE_BUILTIN_NAMES:
            if not is_called:
                raise Rejection(node, f"builtin '{name}' may only be called")
            return
        if name == self.fn.name or (name in self.helpers and name in self.loss_names):
            raise Rejection(node, f"recursive or candidate-to-candidate call '{name}' not allowed")
        if name in self.loss_names:
            raise Rejection(node, f"calling another loss function '{name}' not allowed (use a helper)")
        if name in self.helpers:
            if not is_called:
                raise Rejection(node, f"function '{name}' may only be called")
            self.calls.add(name)
            return
        raise Rejection(node, f"unknown name '{name}'")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if attr.startswith("__"):
            raise Rejection(node, f"dunder attribute '{attr}' not allowed")
        if attr.startswith("_"):
            raise Rejection(node, f"private attribute '{attr}' not allowed")
        if not isinstance(node.ctx, ast.Load):
            raise Rejection(node, "attribute assignment not allowed")
        parts = _dotted(node)
        if parts is not None and parts[0] in MODULE_NAMES and parts[0] not in self.params | self.locals:
            for p in parts:
                if p.startswith("_"):
                    raise Rejection(node, f"private attribute '{p}' not allowed")
            path = ".".join(parts)
            norm = path
            if path.startswith("torch.nn.functional."):
                norm = "F." + path[len("torch.nn.functional.") :]
            if norm not in ALLOWED_MODULE_PATHS:
                raise Rejection(node, f"attribute '{path}' not allowed")
            par = self.parent(node)
            called = isinstance(par, ast.Call) and par.func is node
            if output_parameter(norm) is not None and not called:
                # an alias (`r = F.relu; r(x, True)`) would hide its in-place flag from visit_Call
                raise Rejection(node, f"function '{path}' may only be called (it has an in-place/out parameter)")
            if norm not in MODULE_VALUES and not called:
                # a function as a value (`key=torch.exp`, `f = torch.exp`) is a callback: C code
                # (a sort, a builtin) could call it back where no rule of this checker looks
                raise Rejection(node, f"function '{path}' may only be called, not used as a value")
            if norm == "torch.finfo":
                self.check_finfo(node)
            # the inner links of the chain (torch.nn, torch.nn.functional) and its root are covered
            inner = node.value
            while isinstance(inner, ast.Attribute):
                self.skip.add(id(inner))
                inner = inner.value
            return
        if attr.endswith("_"):
            raise Rejection(node, f"in-place method '.{attr}' not allowed")
        if attr not in TENSOR_ATTRIBUTES:
            raise Rejection(node, f"attribute '.{attr}' not allowed")
        self.check_receiver(node)

    def check_receiver(self, node: ast.Attribute) -> None:
        """Attributes by receiver type, where the syntax tells the type: a literal (number, list,
        tuple) has no allowed attribute (`[a, b].sort(key=...)`); the float-info
        attributes belong to `torch.finfo(...)` only (checked there)."""
        value = node.value
        if isinstance(value, (ast.Constant, ast.List, ast.Tuple)):
            kind = type(value).__name__.lower()
            raise Rejection(node, f"attribute '.{node.attr}' not allowed on a {kind} literal")
        if node.attr in FINFO_ATTRIBUTES and not _is_finfo_call(value):
            raise Rejection(node, f"attribute '.{node.attr}' only as torch.finfo(dtype).{node.attr}")

    def check_finfo(self, node: ast.Attribute) -> None:
        """`torch.finfo(dtype)` only as `torch.finfo(dtype).eps` / `.tiny`: its other fields (`max`
        3.4e38, `dtype` a string) would bring a constant over the cap or a string at run time."""
        call = self.parent(node)
        owner = self.parent(call) if call is not None else None
        if not (isinstance(owner, ast.Attribute) and owner.value is call and owner.attr in FINFO_ATTRIBUTES):
            allowed = " / ".join(f".{a}" for a in sorted(FINFO_ATTRIBUTES))
            raise Rejection(node, f"torch.finfo(...) only as torch.finfo(dtype){allowed}")

    def visit_Call(self, node: ast.Call) -> None:
        if not isinstance(node.func, (ast.Name, ast.Attribute)):
            raise Rejection(node, "only direct calls of allowed functions (f(...), torch.f(...), x.f(...))")
        for kw in node.keywords:
            if kw.arg is None:
                raise Rejection(node, "star-arguments not allowed")
            if kw.arg.startswith("_"):
                raise Rejection(node, f"keyword '{kw.arg}' not allowed")
            if kw.arg in OUTPUT_PARAMETERS:
                raise Rejection(node, f"keyword '{kw.arg}' not allowed (in-place write)")
        self.check_positional_output(node)
        v = _fold(node)
        if v is not None:
            self.check_magnitude(node, v)

    def check_positional_output(self, node: ast.Call) -> None:
        """Reject a positional argument that lands on an output or in-place parameter
        (`F.relu(x, True)`, `F.normalize(x, 2.0, 1, 1e-12, y)`)."""
        path = self.function_path(node.func)
        allowed = path is not None and (
            path in ALLOWED_MODULE_PATHS or (path.startswith("Tensor.") and path[7:] in TENSOR_ATTRIBUTES)
        )
        found = output_parameter(path) if allowed else None  # only allowed names are looked up
        if found is None or len(node.args) <= found[0]:
            return
        index, name = found
        what = "in-place flag" if name == "inplace" else "output"
        raise Rejection(node, f"positional argument {index + 1} of '{path}' is its {what} '{name}' (in-place write)")

    def function_path(self, func: ast.AST) -> str | None:
        """The called function's path: torch.f / F.f / math.f, Tensor.f for a method, else None."""
        if not isinstance(func, ast.Attribute):
            return None
        parts = _dotted(func)
        if parts is not None and parts[0] in MODULE_NAMES and parts[0] not in self.params | self.locals:
            path = ".".join(parts)
            if path.startswith("torch.nn.functional."):
                return "F." + path[len("torch.nn.functional.") :]
            return path
        return "Tensor." + func.attr

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if not isinstance(node.ctx, ast.Load):
            raise Rejection(node, "item assignment not allowed")



def _is_finfo_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    parts = _dotted(node.func)
    return parts is not None and ".".join(parts) == "torch.finfo"
