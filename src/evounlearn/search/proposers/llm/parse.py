"""Pull candidate loss functions out of a raw LLM response.

An LLM answer mixes prose, markdown fences, a reasoning block (`<think>...</think>`,
`<reasoning>...</reasoning>`, or an orphan `</think>` when the chat template opened the block),
an `<answer>...</answer>` block, and several `def loss_fn_k(...)` functions that may call helpers.
`extract_functions` returns one self-contained source per candidate:

- the candidate is renamed to `loss_fn` (also in recursive calls);
- helper functions it calls (transitively) are attached before it, in order of appearance;
  a helper that is itself a candidate (`loss_fn_1` called by `loss_fn_2`) is attached under the
  name `_helper_loss_fn_1`;
- simple module-level numeric constants it uses (`BETA = 0.5`) are copied into the top of each
  function body that reads them, since a loss program may only hold functions;
- code inside a reasoning block is ignored when an answer block exists; if there is no answer
  block and nothing is found outside the reasoning, the reasoning is searched too;
- a missing closing fence or closing tag means "to the end of the text";
- a function that does not parse is trimmed line by line from its end until it does (trailing
  prose; at most 40 lines); if it never parses it is still returned (renamed) so that the validator can report the
  syntax error and the search can ask for a repair. Pass `keep_broken=False` to drop it instead.

Nothing here executes code: parsing uses `ast` only.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

__all__ = ["extract_functions", "is_candidate_name", "strip_reasoning", "answer_text"]

_CANDIDATE_RE = re.compile(r"^loss_fn(?:_[A-Za-z0-9_]+)?$")
_FIRST_PARAMS = ("log_probs_forget", "tok_logp_forget")
_REASONING_TAGS = ("think", "thinking", "reasoning")
_DEF_RE = re.compile(r"^(?P<indent>[ \t]*)(?:async\s+)?def\s+(?P<name>[A-Za-z_]\w*)\s*\(")
_ASSIGN_RE = re.compile(r"^(?P<name>[A-Za-z_]\w*)\s*(?::[^=]+)?=(?!=)")
_FENCE_RE = re.compile(r"^\s*(```|~~~)")
_MAX_FUNCTION_CHARS = 50_000
_MAX_TRIM_LINES = 40  # trailing lines dropped at most when looking for a parsable prefix  # longer blocks are not parsed (the sandbox rejects them anyway)


def is_candidate_name(name: str) -> bool:
    """True for `loss_fn` and `loss_fn_<k>`."""
    return bool(_CANDIDATE_RE.match(name))


def strip_reasoning(text: str) -> tuple[str, str]:
    """Split `text` into (text outside reasoning blocks, text inside them).

    Handles `<think>`, `<thinking>` and `<reasoning>` blocks (case-insensitive), an unclosed
    opening tag (reasoning runs to the end) and an orphan closing tag (reasoning starts at the
    beginning of the text, as when the chat template already emitted the opening tag).
    """
    outside = text
    inside: list[str] = []
    for tag in _REASONING_TAGS:
        open_re = re.compile(rf"<{tag}>", re.IGNORECASE)
        close_re = re.compile(rf"</{tag}>", re.IGNORECASE)
        # Orphan closing tag before any opening one: everything before it is reasoning.
        first_close = close_re.search(outside)
        first_open = open_re.search(outside)
        if first_close and (first_open is None or first_close.start() < first_open.start()):
            inside.append(outside[: first_close.start()])
            outside = outside[first_close.end() :]
        pieces: list[str] = []
        pos = 0
        while True:
            m_open = open_re.search(outside, pos)
            if m_open is None:
                pieces.append(outside[pos:])
                break
            pieces.append(outside[pos : m_open.start()])
            m_close = close_re.search(outside, m_open.end())
            if m_close is None:
                inside.append(outside[m_open.end() :])
                break
            inside.append(outside[m_open.end() : m_close.start()])
            pos = m_close.end()
        outside = "".join(pieces)
    return outside, "\n".join(inside)


def answer_text(text: str) -> str | None:
    """The contents of all `<answer>` blocks joined (unclosed: to the end), or None if there is none."""
    open_re = re.compile(r"<answer>", re.IGNORECASE)
    close_re = re.compile(r"</answer>", re.IGNORECASE)
    blocks: list[str] = []
    pos = 0
    while True:
        m_open = open_re.search(text, pos)
        if m_open is None:
            break
        m_close = close_re.search(text, m_open.end())
        if m_close is None:
            blocks.append(text[m_open.end() :])
            break
        blocks.append(text[m_open.end() : m_close.start()])
        pos = m_close.end()
    if not blocks:
        return None
    return "\n".join(blocks)


@dataclass
class _Func:
    name: str
    source: str  # dedented
    segment: int  # which code region it came from (fences split regions)
    order: int
    tree: ast.FunctionDef | None = None
    params: list[str] = field(default_factory=list)
    calls: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)


def _dedent_block(lines: list[str], indent: str) -> list[str]:
    out = []
    for line in lines:
        if line.startswith(indent):
            out.append(line[len(indent) :])
        else:
            out.append(line.lstrip(" \t") if not line.strip() else line)
    return out


def _parse_function(source: str) -> ast.FunctionDef | None:
    if len(source) > _MAX_FUNCTION_CHARS:
        return None
    try:
        mod = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if len(mod.body) == 1 and isinstance(mod.body[0], ast.FunctionDef):
        return mod.body[0]
    return None


def _trim_to_parse(lines: list[str]) -> tuple[str, ast.FunctionDef | None]:
    """Drop trailing lines until the block parses; return the full block if it never does."""
    full = "\n".join(lines).rstrip() + "\n"
    node = _parse_function(full)
    if node is not None:
        return full, node
    tried = 0
    for end in range(len(lines) - 1, 0, -1):
        if not lines[end - 1].strip():
            continue
        tried += 1
        if tried > _MAX_TRIM_LINES:
            break
        src = "\n".join(lines[:end]).rstrip() + "\n"
        node = _parse_function(src)
        if node is not None:
            return src, node
    return full, None


def _header_done(header: str) -> bool:
    """True once a (possibly multi-line) `def` header is complete."""
    depth = sum(header.count(c) for c in "([{") - sum(header.count(c) for c in ")]}")
    if depth > 0:
        return False
    last = header.splitlines()[-1].split("#", 1)[0].rstrip()
    return last.endswith(":") or re.search(r"\)\s*(->[^:]*)?:", last) is not None


def _scan(text: str) -> tuple[list[_Func], dict[str, str]]:
    """Find top-level function blocks and simple constant assignments in free text."""
    lines = text.splitlines()
    funcs: list[_Func] = []
    consts: dict[str, str] = {}
    segment = 0  # code fences seen so far: functions in one fence belong together
    i = 0
    while i < len(lines):
        line = lines[i]
        if _FENCE_RE.match(line):
            segment += 1
            i += 1
            continue
        m = _DEF_RE.match(line)
        if m is None:
            name = _constant_name(line)
            if name is not None:
                consts[name] = line.strip()
            i += 1
            continue
        indent = m.group("indent")
        block, i = _function_block(lines, i, indent)
        src, node = _trim_to_parse(_dedent_block(block, indent))
        funcs.append(_function(m.group("name"), src, node, segment, len(funcs)))
    return funcs, consts


def _constant_name(line: str) -> str | None:
    """NAME when the line is `NAME = <numeric expression>` (a module-level constant a loss may read)."""
    m = _ASSIGN_RE.match(line)
    if m is None:
        return None
    try:
        mod = ast.parse(line.strip())
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if (
        len(mod.body) == 1
        and isinstance(mod.body[0], (ast.Assign, ast.AnnAssign))
        and _is_numeric_expr(mod.body[0].value)
    ):
        return m.group("name")
    return None


def _function_block(lines: list[str], i: int, indent: str) -> tuple[list[str], int]:
    """The lines of the function whose `def` is `lines[i]`, and the index of the line after it."""
    n = len(lines)
    block = [lines[i]]
    header = lines[i]
    j = i + 1
    # A multi-line signature may put its closing parenthesis at column 0.
    while not _header_done(header) and j < n and j - i < 30 and not _FENCE_RE.match(lines[j]):
        block.append(lines[j])
        header += "\n" + lines[j]
        j += 1
    in_string: str | None = None
    while j < n:
        nxt = lines[j]
        if in_string is None and _FENCE_RE.match(nxt):
            break
        if in_string is None and nxt.strip():
            lead = len(nxt) - len(nxt.lstrip(" \t"))
            if lead <= len(indent):
                break
        block.append(nxt)
        for q in ('"""', "'''"):
            count = nxt.count(q)
            if count % 2 == 1 and (in_string is None or in_string == q):
                in_string = None if in_string == q else q
        j += 1
    while block and not block[-1].strip():
        block.pop()
    return block, j


def _function(name: str, src: str, node: ast.FunctionDef | None, segment: int, order: int) -> _Func:
    """A scanned function with its parameters, the names it calls and the names it reads."""
    f = _Func(name=name, source=src, segment=segment, order=order, tree=node)
    if node is not None:
        args = node.args
        f.params = [a.arg for a in args.posonlyargs + args.args]
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name):
                f.calls.add(sub.func.id)
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load):
                f.names.add(sub.id)
    else:
        body = "\n".join(src.splitlines()[1:])
        f.calls = set(re.findall(r"\b([A-Za-z_]\w*)\s*\(", body))
        f.names = set(re.findall(r"\b([A-Za-z_]\w*)\b", body))
    return f


def _is_numeric_expr(node: ast.AST | None) -> bool:
    if node is None:
        return False
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant):
            if isinstance(sub.value, bool) or not isinstance(sub.value, (int, float)):
                return False
        elif not isinstance(sub, (ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop)):
            return False
    return True


def _rename(source: str, old: str, new: str) -> str:
    return re.sub(rf"\b{re.escape(old)}\b", new, source)


def _inject_constants(func: _Func, consts: dict[str, str], source: str) -> str:
    """Copy module-level constants the function reads into the top of its body."""
    if func.tree is None or not consts:
        return source
    params = set(func.params)
    assigned = {
        t.id
        for sub in ast.walk(func.tree)
        for t in (sub.targets if isinstance(sub, ast.Assign) else [])
        if isinstance(t, ast.Name)
    }
    needed = [c for c in consts if c in func.names and c not in params and c not in assigned]
    if not needed:
        return source
    node = _parse_function(source)
    if node is None or not node.body or node.body[0].lineno == node.lineno:
        return source  # one-line function: leave it alone
    first = node.body[0]
    insert_after = first.lineno - 1  # 0-based line index before which we insert
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
        and first.end_lineno is not None
    ):
        insert_after = first.end_lineno
        pad_node = node.body[1] if len(node.body) > 1 else first
    else:
        pad_node = first
    lines = source.splitlines()
    pad = " " * pad_node.col_offset
    new_lines = lines[:insert_after] + [pad + consts[c] for c in needed] + lines[insert_after:]
    return "\n".join(new_lines).rstrip() + "\n"


def _assemble(cand: _Func, funcs: list[_Func], consts: dict[str, str]) -> str:
    by_name: dict[str, list[_Func]] = {}
    for f in funcs:
        by_name.setdefault(f.name, []).append(f)

    def resolve(name: str, near: _Func) -> _Func | None:
        options = [f for f in by_name.get(name, []) if f is not near]
        if not options:
            return None
        same = [f for f in options if f.segment == near.segment]
        pool = same or options
        before = [f for f in pool if f.order < near.order]
        return before[-1] if before else pool[0]

    helpers: list[_Func] = []
    seen = {id(cand)}
    stack = [cand]
    while stack:
        cur = stack.pop()
        for name in sorted(cur.calls):
            if name == cand.name:
                continue
            h = resolve(name, cur)
            if h is not None and id(h) not in seen:
                seen.add(id(h))
                helpers.append(h)
                stack.append(h)
    helpers.sort(key=lambda f: f.order)
    renames = {h.name: f"_helper_{h.name}" for h in helpers if is_candidate_name(h.name)}
    parts = []
    for h in helpers:
        src = _inject_constants(h, consts, h.source)
        for old, new in renames.items():
            src = _rename(src, old, new)
        parts.append(src.rstrip() + "\n")
    main = _inject_constants(cand, consts, cand.source)
    for old, new in renames.items():
        main = _rename(main, old, new)
    if cand.name != "loss_fn":
        main = _rename(main, cand.name, "loss_fn")
    parts.append(main.rstrip() + "\n")
    return "\n\n".join(parts)


def _candidates(funcs: list[_Func]) -> list[_Func]:
    named = [f for f in funcs if is_candidate_name(f.name)]
    if named:
        return named
    # No loss_fn* name: accept top-level functions with the interface's first parameter
    # that no other function calls.
    called = set().union(*(f.calls for f in funcs)) if funcs else set()
    return [f for f in funcs if f.params[:1] and f.params[0] in _FIRST_PARAMS and f.name not in called]


def _extract_from(text: str, keep_broken: bool) -> list[str]:
    funcs, consts = _scan(text)
    out: list[str] = []
    seen: set[str] = set()
    for cand in _candidates(funcs):
        if cand.tree is None and not keep_broken:
            continue
        src = _assemble(cand, funcs, consts)
        try:
            key = ast.dump(ast.parse(src)) if len(src) <= _MAX_FUNCTION_CHARS else src
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            key = src
        if key in seen:
            continue
        seen.add(key)
        out.append(src)
    return out


def extract_functions(response: str, *, keep_broken: bool = True) -> list[str]:
    """Return the source of each candidate loss function in `response`, renamed to `loss_fn`.

    Each returned string is a self-contained program: the helpers the candidate calls, then the
    candidate itself. Duplicates (same AST) are returned once. See the module docstring.
    """
    if not response:
        return []
    outside, inside = strip_reasoning(response)
    answer = answer_text(outside)
    if answer is not None:
        return _extract_from(answer, keep_broken)
    found = _extract_from(outside, keep_broken)
    if found or not inside.strip():
        return found
    inner_answer = answer_text(inside)
    return _extract_from(inner_answer if inner_answer is not None else inside, keep_broken)
