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
  syntax error and the search can ask for a repair. Pass `keep_broken=False` to drop it instead;
- `extract_programs` bounds the work: at most `limit` candidates and at most `max_functions`
  functions per program (the candidate and its nearest helpers), the cut counted in `dropped`.

Extraction is linear in the length of the reply: every function is scanned once, each name is
looked up in an index built once (never a scan over all functions per candidate), and no line
longer than `_MAX_CONSTANT_CHARS` is parsed as a constant. Nothing here executes code: parsing
uses `ast` only.
"""

from __future__ import annotations

import ast
import bisect
import re
from dataclasses import dataclass, field

from ....reports.safe_text import clean_text

__all__ = [
    "Extracted",
    "answer_text",
    "clean_reply",
    "extract_functions",
    "extract_programs",
    "is_candidate_name",
    "strip_reasoning",
]

_CANDIDATE_RE = re.compile(r"^loss_fn(?:_[A-Za-z0-9_]+)?$")
_FIRST_PARAMS = ("log_probs_forget", "tok_logp_forget")
_REASONING_TAGS = ("think", "thinking", "reasoning")
_DEF_RE = re.compile(r"^(?P<indent>[ \t]*)(?:async\s+)?def\s+(?P<name>[A-Za-z_]\w*)\s*\(")
_ASSIGN_RE = re.compile(r"^(?P<name>[A-Za-z_]\w*)\s*(?::[^=]+)?=(?!=)")
_FENCE_RE = re.compile(r"^\s*(```|~~~)")
_WORD_RE = re.compile(r"\w+")
_MAX_FUNCTION_CHARS = 50_000  # longer blocks are not parsed (the sandbox rejects them anyway)
_MAX_TRIM_LINES = 40  # trailing lines dropped at most when looking for a parsable prefix
_MAX_CONSTANT_CHARS = 200  # `NAME = <number expression>` lines longer than this are prose, not constants


@dataclass(frozen=True)
class Extracted:
    """One candidate program and how many of its helper functions were cut (`max_functions`)."""

    code: str
    functions: int  # functions in the program as found (the candidate and the helpers it calls)
    dropped: int = 0  # helpers left out to keep `max_functions`


def clean_reply(text: str) -> str:
    """`text` without terminal escape sequences and C0/C1 control characters (tab and newline
    kept; CRLF and CR become LF, as Python's parser reads them): `reports.safe_text.clean_text`."""
    return clean_text(text)


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
    if len(line) > _MAX_CONSTANT_CHARS:
        return None
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


def _rename(source: str, renames: dict[str, str]) -> str:
    """Rename whole-word occurrences of every key of `renames`, in one pass over `source`."""
    if not renames:
        return source
    # `\bname\b` matches exactly the maximal word runs equal to `name`: one precompiled pattern
    # (compiling one per name would dominate the time on replies with thousands of functions).
    return _WORD_RE.sub(lambda m: renames.get(m.group(0), m.group(0)), source)


def _inject_constants(func: _Func, consts: _Constants, source: str) -> str:
    """Copy module-level constants the function reads into the top of its body."""
    if func.tree is None or not consts.lines:
        return source
    params = set(func.params)
    assigned = {
        t.id
        for sub in ast.walk(func.tree)
        for t in (sub.targets if isinstance(sub, ast.Assign) else [])
        if isinstance(t, ast.Name)
    }
    # Over the names the function reads (few), not over every constant of the reply (many).
    needed = [c for c in func.names if c in consts.lines and c not in params and c not in assigned]
    needed.sort(key=consts.order.__getitem__)
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
    new_lines = lines[:insert_after] + [pad + consts.lines[c] for c in needed] + lines[insert_after:]
    return "\n".join(new_lines).rstrip() + "\n"


@dataclass
class _Constants:
    """Module-level numeric constants of a reply: NAME -> its line, and NAME -> first position."""

    lines: dict[str, str]
    order: dict[str, int]


class _Index:
    """The functions of one reply by name, in order of appearance, for the helper lookups.

    Built once per reply, so resolving a call costs a bisection, not a scan over all functions
    (a reply with thousands of functions would otherwise take quadratic time).
    """

    def __init__(self, funcs: list[_Func]) -> None:
        self.by_name: dict[str, list[_Func]] = {}
        self.by_segment: dict[tuple[str, int], list[_Func]] = {}
        for f in funcs:  # in order of appearance: every list is sorted by `order`
            self.by_name.setdefault(f.name, []).append(f)
            self.by_segment.setdefault((f.name, f.segment), []).append(f)

    def resolve(self, name: str, near: _Func) -> _Func | None:
        """The function `name` that a call inside `near` means.

        The last definition before `near` in its own fence, else the first one after it there;
        when the fence holds none (but `near`), the same rule over the whole reply.
        """
        for pool in (self.by_segment.get((name, near.segment), []), self.by_name.get(name, [])):
            i = bisect.bisect_left(pool, near.order, key=lambda f: f.order)
            if i > 0:
                return pool[i - 1]  # orders are unique: nothing before i is `near`
            rest = pool[1:] if pool and pool[0] is near else pool
            if rest:
                return rest[0]
        return None


def _helpers(cand: _Func, index: _Index, max_helpers: int | None) -> tuple[list[_Func], int]:
    """The functions `cand` calls, transitively: (the nearest `max_helpers` in order, how many were cut).

    Breadth-first, so a cut drops the most distant helpers (by call depth).
    """
    found: list[_Func] = []  # also the queue of the walk: found[walked:] are still to visit
    seen = {id(cand)}
    walked = 0
    cur = cand
    while True:
        for name in sorted(cur.calls):
            if name == cand.name:
                continue
            h = index.resolve(name, cur)
            if h is not None and id(h) not in seen:
                seen.add(id(h))
                found.append(h)
        if walked == len(found):
            break
        cur = found[walked]
        walked += 1
    keep = found if max_helpers is None else found[:max_helpers]
    return sorted(keep, key=lambda f: f.order), len(found) - len(keep)


def _assemble(cand: _Func, index: _Index, consts: _Constants, max_functions: int | None) -> Extracted:
    max_helpers = None if max_functions is None else max(0, int(max_functions) - 1)
    helpers, dropped = _helpers(cand, index, max_helpers)
    renames = {h.name: f"_helper_{h.name}" for h in helpers if is_candidate_name(h.name)}
    parts = [_rename(_inject_constants(h, consts, h.source), renames).rstrip() + "\n" for h in helpers]
    if cand.name != "loss_fn":
        renames[cand.name] = "loss_fn"  # never a helper's name: helpers named like cand are skipped
    main = _rename(_inject_constants(cand, consts, cand.source), renames)
    parts.append(main.rstrip() + "\n")
    return Extracted("\n\n".join(parts), functions=len(helpers) + dropped + 1, dropped=dropped)


def _candidates(funcs: list[_Func]) -> list[_Func]:
    named = [f for f in funcs if is_candidate_name(f.name)]
    if named:
        return named
    # No loss_fn* name: accept top-level functions with the interface's first parameter
    # that no other function calls.
    called = set().union(*(f.calls for f in funcs)) if funcs else set()
    return [f for f in funcs if f.params[:1] and f.params[0] in _FIRST_PARAMS and f.name not in called]


def _extract_from(text: str, keep_broken: bool, limit: int | None, max_functions: int | None) -> list[Extracted]:
    funcs, lines = _scan(text)
    consts = _Constants(lines, {name: i for i, name in enumerate(lines)})
    index = _Index(funcs)
    out: list[Extracted] = []
    seen: set[str] = set()
    for cand in _candidates(funcs):
        if limit is not None and len(out) >= limit:
            break
        if cand.tree is None and not keep_broken:
            continue
        program = _assemble(cand, index, consts, max_functions)
        src = program.code
        try:
            key = ast.dump(ast.parse(src)) if len(src) <= _MAX_FUNCTION_CHARS else src
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            key = src
        if key in seen:
            continue
        seen.add(key)
        out.append(program)
    return out


def extract_programs(
    response: str, *, keep_broken: bool = True, limit: int | None = None, max_functions: int | None = None
) -> list[Extracted]:
    """The candidate programs in `response`: at most `limit`, each of at most `max_functions` functions.

    See `extract_functions` and the module docstring; `Extracted.dropped` counts the helpers cut.
    """
    if not response:
        return []
    outside, inside = strip_reasoning(response)
    answer = answer_text(outside)
    if answer is not None:
        return _extract_from(answer, keep_broken, limit, max_functions)
    found = _extract_from(outside, keep_broken, limit, max_functions)
    if found or not inside.strip():
        return found
    inner_answer = answer_text(inside)
    text = inner_answer if inner_answer is not None else inside
    return _extract_from(text, keep_broken, limit, max_functions)


def extract_functions(response: str, *, keep_broken: bool = True) -> list[str]:
    """Return the source of each candidate loss function in `response`, renamed to `loss_fn`.

    Each returned string is a self-contained program: the helpers the candidate calls, then the
    candidate itself. Duplicates (same AST) are returned once. See the module docstring.
    """
    return [p.code for p in extract_programs(response, keep_broken=keep_broken)]
