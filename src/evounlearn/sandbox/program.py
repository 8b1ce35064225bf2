"""A loss program as a whole: split into functions, check each, resolve helpers, read epochs.

A loss program is Python source holding top-level functions named `loss_fn` / `loss_fn_<k>` (the
candidates) and helpers with other names. `check_program` splits it, checks every function
(`checker.check_function`) and gives each candidate a final reason: "ok", its own rejection, or
the rejection of a helper it needs; recursion (a helper calling itself, directly or through
others) and a candidate calling another candidate are rejected here. Nothing here runs code.

Lines are cut where Python's parser cuts them (`\n`, `\r\n`, `\r`), never with
`str.splitlines()`, which also breaks at form feeds and other separators the parser treats as
ordinary characters: the text cut out for a function is exactly what the parser saw.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Collection
from dataclasses import dataclass, field

from .checker import CheckResult, check_function, syntax_message
from .node_checker import docstring_node
from .policy import EPOCHS_RANGE, MAX_FUNCTIONS, MAX_SOURCE_CHARS, SandboxError, interface_args, is_loss_name

__all__ = [
    "FunctionSource",
    "ProgramCheck",
    "check_program",
    "helper_closure",
    "interface_of",
    "parse_epochs",
    "source_lines",
    "split_functions",
]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def source_lines(text: str) -> list[str]:
    """`text` cut into lines exactly where Python's tokenizer ends a line (see module docstring)."""
    return _LINE_BREAK.split(text)


def interface_of(code: str) -> str:
    """'extended' when the code's loss_fn takes token-level arguments, else 'faithful'."""
    return "extended" if re.search(r"def\s+loss_fn\w*\s*\(\s*tok_logp_forget", code) else "faithful"


# --------------------------------------------------------------------------------------------
# splitting



@dataclass(frozen=True)
class FunctionSource:
    """One top-level function of a program: its name, text, first line (1-based) and, when the
    text does not parse on its own, the syntax error."""

    name: str
    source: str
    lineno: int
    error: str | None = None



_TOP_DEF_RE = re.compile(r"^(?:async\s+)?def\s+([A-Za-z_]\w*)")
_TOP_START_RE = re.compile(r"^(?:@|(?:async\s+)?def\b|class\b)")

def _node_first_line(node: ast.AST) -> int:
    lines = [node.lineno]  # type: ignore[attr-defined]
    for dec in getattr(node, "decorator_list", []):
        lines.append(dec.lineno)
    return min(lines)


def split_functions(source: str) -> list[FunctionSource]:
    """Every top-level `def` of `source`, each with its own text (decorators included).

    Other top-level statements (imports, constants, prose) are ignored: they are never run.
    When the whole text does not parse, it is cut at top-level `def` / decorator / class lines
    and each piece is parsed on its own (trailing top-level lines are trimmed until it parses), so
    one broken function does not drop the others; a piece that never parses is returned with
    `error` set.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return _split_recover(source)
    lines = source_lines(source)
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = _node_first_line(node)
            text = "\n".join(lines[first - 1 : node.end_lineno]) + "\n"
            out.append(FunctionSource(node.name, text, first))
    return out


def _split_recover(source: str) -> list[FunctionSource]:
    lines = source_lines(source)
    starts = [i for i, line in enumerate(lines) if _TOP_START_RE.match(line)]
    out: list[FunctionSource] = []
    k = 0
    while k < len(starts):
        begin = starts[k]
        # decorators belong to the next def
        j = k
        while j < len(starts) and lines[starts[j]].startswith("@"):
            j += 1
        if j >= len(starts):
            break
        def_line = starts[j]
        m = _TOP_DEF_RE.match(lines[def_line])
        end = starts[j + 1] if j + 1 < len(starts) else len(lines)
        k = j + 1
        if m is None:  # a class: skipped
            continue
        chunk = lines[begin:end]
        text, err = _parse_chunk(chunk)
        out.append(FunctionSource(m.group(1), text, begin + 1, err))
    return out


def _function_only(chunk: list[str], tree: ast.Module) -> str | None:
    """The text of the chunk's leading function definition, or None."""
    if not tree.body or not isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    return "\n".join(chunk[: tree.body[0].end_lineno]).rstrip() + "\n"


def _parse_chunk(chunk: list[str]) -> tuple[str, str | None]:
    """The function at the start of `chunk`, cut at the longest column-0 prefix that parses,
    or the whole chunk and its syntax error."""
    full = "\n".join(chunk).rstrip() + "\n"
    try:
        text = _function_only(chunk, ast.parse(full))
        if text is not None:
            return text, None
        return full, "expected a function definition"
    except SyntaxError as e:
        first_err = e
    except (ValueError, RecursionError, MemoryError) as e:
        return full, f"syntax error: {type(e).__name__}"
    cuts = [i for i in range(1, len(chunk)) if chunk[i][:1] not in ("", " ", "\t", ")", "]", "}", "#")]
    for cut in reversed(cuts):
        try:
            text = _function_only(chunk[:cut], ast.parse("\n".join(chunk[:cut])))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        if text is not None:
            return text, None
    return full, syntax_message(first_err)


# --------------------------------------------------------------------------------------------
# epochs


_EPOCHS_RE = re.compile(r"^\s*epochs?\s*[:=]\s*([+-]?\d+)\b", re.IGNORECASE)


def parse_epochs(src: str) -> int | None:
    """K from a first-line docstring `\"\"\"epochs: K\"\"\"`, clamped to [1, 10]; None if absent.

    `src` is one function or a whole program (then the first candidate's docstring is read,
    or the first function's when no function is named `loss_fn*`).
    """
    doc: str | None = None
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        m = re.search(r"def\s+\w+\s*\([^)]*\)[^:]*:\s*(?:\"\"\"|''')(.*?)(?:\"\"\"|''')", src, re.S)
        doc = m.group(1) if m else None
    else:
        fns = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        losses = [f for f in fns if is_loss_name(f.name)]
        target = (losses or fns or [None])[0]
        if target is not None:
            node = docstring_node(target)
            doc = node.value if node is not None else None  # type: ignore[attr-defined]
    if not doc:
        return None
    first = source_lines(doc.strip())[0]
    m = _EPOCHS_RE.match(first)
    if m is None:
        return None
    lo, hi = EPOCHS_RANGE
    return max(lo, min(hi, int(m.group(1))))


# --------------------------------------------------------------------------------------------
# programs


def helper_closure(name: str, calls: dict[str, Collection[str]]) -> list[str]:
    """Helpers reachable from `name` through `calls` (name -> called names), in discovery order.

    Raises SandboxError on a cycle (recursion).
    """
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = in progress, 2 = done

    def visit(n: str, path: tuple[str, ...]) -> None:
        for c in sorted(calls.get(n, ())):
            if state.get(c) == 1 or c == name:
                raise SandboxError(f"recursive helper calls not allowed: {' -> '.join(path + (c,))}")
            if state.get(c) == 2:
                continue
            state[c] = 1
            visit(c, path + (c,))
            state[c] = 2
            order.append(c)

    state[name] = 1
    visit(name, (name,))
    return order


@dataclass
class ProgramCheck:
    """Static check of a whole program: per function results and the helper dependency graph."""

    functions: list[FunctionSource]
    results: dict[str, CheckResult] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # final reason per candidate
    helpers: dict[str, list[str]] = field(default_factory=dict)  # candidate -> helpers it needs
    error: str | None = None  # program-level problem (too long, no candidate, ...)
    duplicates: list[FunctionSource] = field(default_factory=list)  # later definitions, dropped

    @property
    def losses(self) -> list[FunctionSource]:
        return [f for f in self.functions if is_loss_name(f.name)]

    def program_text(self, name: str) -> str:
        """The self-contained text of candidate `name`: the helpers it needs, then itself."""
        by_name = {f.name: f for f in self.functions}
        parts = [by_name[h].source.rstrip() + "\n" for h in self.helpers.get(name, [])]
        parts.append(by_name[name].source.rstrip() + "\n")
        return "\n\n".join(parts)


def check_program(source: str, interface: str = "faithful") -> ProgramCheck:
    """Split a program and statically check each function; each candidate gets a final reason
    ("ok", its own rejection, or the rejection of a helper it needs)."""
    interface_args(interface)
    if len(source) > MAX_SOURCE_CHARS:
        return ProgramCheck(
            [], error=f"program too long ({len(source)} characters, limit {MAX_SOURCE_CHARS})"
        )
    unique, duplicates = _first_definitions(split_functions(source))
    pc = ProgramCheck(unique, duplicates=duplicates)
    if len(unique) > MAX_FUNCTIONS:
        pc.error = f"too many functions ({len(unique)}, limit {MAX_FUNCTIONS})"
        return pc
    if not pc.losses:
        pc.error = "no loss function found (expected def loss_fn(...) or def loss_fn_<k>(...))"
        return pc
    calls = _check_each_function(pc, interface)
    for f in pc.losses:
        pc.reasons[f.name] = _candidate_reason(pc, f.name, calls)
    return pc


def _first_definitions(funcs: list[FunctionSource]) -> tuple[list[FunctionSource], list[FunctionSource]]:
    """(first definition of each name, the later duplicates, which are dropped)."""
    seen: set[str] = set()
    unique: list[FunctionSource] = []
    duplicates: list[FunctionSource] = []
    for f in funcs:
        (duplicates if f.name in seen else unique).append(f)
        seen.add(f.name)
    return unique, duplicates


def _check_each_function(pc: ProgramCheck, interface: str) -> dict[str, tuple[str, ...]]:
    """Fill `pc.results` for every function; returns the helpers each checked function calls."""
    loss_names = [f.name for f in pc.functions if is_loss_name(f.name)]
    helper_names = [f.name for f in pc.functions if not is_loss_name(f.name)]
    calls: dict[str, tuple[str, ...]] = {}
    for f in pc.functions:
        if f.error is not None:
            pc.results[f.name] = CheckResult(False, _shift_line(f.error, f.lineno - 1), f.name,
                                             is_loss=is_loss_name(f.name))
            continue
        res = check_function(
            f.source, interface, helpers=helper_names, loss_names=loss_names, line_offset=f.lineno - 1
        )
        pc.results[f.name] = res
        calls[f.name] = res.calls
    return calls


def _shift_line(message: str, offset: int) -> str:
    """`line N: ...` -> `line N+offset: ...` (other messages unchanged)."""
    m = re.match(r"line (\d+): (.*)", message, re.S)
    return f"line {int(m.group(1)) + offset}: {m.group(2)}" if m else message


def _candidate_reason(pc: ProgramCheck, name: str, calls: dict[str, tuple[str, ...]]) -> str:
    """Why candidate `name` cannot run, or "ok" (then `pc.helpers[name]` is set)."""
    res = pc.results[name]
    if not res.ok:
        return res.reason
    try:
        needed = helper_closure(name, calls)
    except SandboxError as e:
        return str(e)
    bad = [h for h in needed if not pc.results[h].ok]
    if bad:
        return f"helper '{bad[0]}' rejected: {pc.results[bad[0]].reason}"
    pc.helpers[name] = needed
    return "ok"


def checked_program(code: str | None, interface: str = "faithful", function: str | None = None) -> str | None:
    """The candidate `function` (default: the first accepted one) of a loss program and the
    helpers it needs, re-generated from their syntax trees (`ast.unparse`) after the sandbox's
    check: top-level statements, comments and anything the sandbox ignores are gone. None when
    no candidate of the program passes the check."""
    if not code:
        return None
    pc = check_program(code, interface or "faithful")
    ok = [n for n, reason in pc.reasons.items() if reason == "ok"]
    name = function if function and function in pc.reasons else next(iter(ok), None)
    if name not in ok:
        return None
    by_name = {f.name: f for f in pc.functions}
    parts = []
    for n in [*pc.helpers.get(name, []), name]:
        body = ast.parse(by_name[n].source).body
        if len(body) != 1 or not isinstance(body[0], ast.FunctionDef):
            return None
        parts.append(ast.unparse(body[0]))
    return "\n\n\n".join(parts) + "\n"
