"""What a loss program may contain: the sandbox's allow-lists and size limits (docs/LOSS_PROGRAMS.md).

Pure data plus two small lookups (`interface_args`, `is_loss_name`) and the in-place / output
argument table derived from the allowed functions' own signatures (`output_parameter`). The AST
checker (`checker.py`) enforces these lists; nothing here parses or runs code.

The check is a self-contained AST whitelist (no `restrictedpython`):

- node types: function definitions (top level only), `return`, assignments (`x = ...`, `x += ...`,
  tuple unpacking), `if`, `for`, `break`/`continue`/`pass`, `assert`, expressions (arithmetic,
  comparisons, boolean ops, `a if c else b`, calls, attributes, subscripts/slices, tuple and list
  literals, numeric constants). Everything else is rejected: imports, lambdas, comprehensions and
  generator expressions, classes, `while`, `with`, `try`, `raise`, `global`/`nonlocal`, `yield`,
  `await`/async, `del`, `:=`, f-strings, dict/set literals, `match`, decorators, star-args
  (`*a`, `**k`), item/attribute assignment (`x[0] = ...`, `x.a = ...`) and nested functions;
- names: the function's arguments and locals, other functions of the program (helpers, only as
  `h(...)`), `torch`, `F` (= torch.nn.functional) and `math` (only as `torch.<name>` etc.), and the
  builtins abs, min, max, float, int, len, range, sum, bool (only called). Any name starting with
  `__`, and exec/eval/open/getattr/globals/... are rejected with their own message;
- attributes: `torch.<f>`, `torch.nn.functional.<f>`, `F.<f>`, `math.<c>` from fixed whitelists of
  numeric functions; on any other value (a tensor) a whitelist of numeric tensor methods and
  properties (mean, sum, clamp, exp, log, sigmoid, pow, abs, detach, shape, ...). No dunder or
  private (`_x`) attribute, no in-place method (`add_`), no `out=` / `inplace=` keyword, no
  positional argument that lands on an output or in-place parameter (`F.relu(x, True)`), and
  functions with such a parameter only called directly (no `r = F.relu`);
- constants: numbers (integers at most 1e6 in absolute value, floats at most 1e10, also after
  folding constant expressions such as `10 ** 9`), None/True/False, `...`; strings only as a
  function's docstring or as the value of `reduction=` ("mean", "sum", "none", "batchmean");
- size: at most MAX_FUNCTION_LINES lines, MAX_FUNCTION_NODES AST nodes and nesting depth
  MAX_DEPTH per function; at most MAX_SOURCE_CHARS characters and MAX_FUNCTIONS functions per
  program;
- signature: a candidate takes exactly the interface's arguments in order (ref arguments may
  default to None); helpers take plain positional arguments (defaults must be constants); no
  annotations are evaluated (they are dropped before compiling); at least one `return <value>`;
- recursion (a helper calling itself, directly or through others) and a candidate calling another
  candidate are rejected when a program is assembled.

Rejection reasons are described in `checker.py`; compiling in `compiler.py`.
"""

from __future__ import annotations

import ast
import inspect
import re
from functools import cache

from ..errors import EvoUnlearnError

# --------------------------------------------------------------------------------------------
# size limits

MAX_SOURCE_CHARS = 20_000
MAX_FUNCTIONS = 32
MAX_FUNCTION_LINES = 150
MAX_FUNCTION_NODES = 1_500
MAX_DEPTH = 40
MAX_INT_CONSTANT = 10**6
MAX_FLOAT_CONSTANT = 1e10
MAX_RANGE = 10**6
EPOCHS_RANGE = (1, 10)

INTERFACES: dict[str, tuple[tuple[str, ...], int]] = {
    # interface -> (argument names in order, number of required arguments)
    "faithful": (("log_probs_forget", "log_probs_retain", "ref_log_probs_forget", "ref_log_probs_retain"), 2),
    "extended": (
        (
            "tok_logp_forget",
            "mask_forget",
            "tok_logp_retain",
            "mask_retain",
            "ref_tok_logp_forget",
            "ref_tok_logp_retain",
        ),
        4,
    ),
}

_LOSS_NAME_RE = re.compile(r"^loss_fn(?:_[A-Za-z0-9_]+)?$")

MODULE_NAMES = ("torch", "F", "math")
SAFE_BUILTIN_NAMES = ("abs", "min", "max", "float", "int", "len", "range", "sum", "bool")

# --------------------------------------------------------------------------------------------
# allowed names and attributes

TORCH_FUNCTIONS = frozenset(
    """
    abs absolute add amax amin arange argmax argmin argsort as_tensor atan atan2 cat ceil clamp
    clamp_max clamp_min clip cos cosh cumprod cumsum diag diff digamma div dot eq erf erfc exp exp2
    expm1 eye finfo flatten flip floor fmod full full_like ge gt isfinite isinf isnan le lerp lgamma
    linspace log log10 log1p log2 log_softmax logaddexp logcumsumexp logical_and logical_not
    logical_or logit logsumexp lt masked_fill matmul max maximum mean median min minimum mul
    multiply nan_to_num nanmean nansum ne neg negative norm ones ones_like outer pow prod reciprocal
    relu remainder round rsqrt sigmoid sign sin sinh softmax sort sqrt square squeeze stack std
    sub subtract sum tanh tensor topk tril triu trunc unsqueeze var where xlogy zeros zeros_like
    """.split()
)
TORCH_CONSTANTS = frozenset(
    "float32 float64 float16 bfloat16 float double half long int64 int32 bool pi e inf nan".split()
)
F_FUNCTIONS = frozenset(
    """
    softplus logsigmoid relu relu6 gelu silu elu selu celu leaky_relu sigmoid tanh hardtanh
    hardsigmoid softsign mish softmax log_softmax softmin normalize mse_loss l1_loss smooth_l1_loss
    huber_loss binary_cross_entropy binary_cross_entropy_with_logits kl_div cosine_similarity
    pairwise_distance softshrink hardshrink tanhshrink
    """.split()
)
MATH_ATTRIBUTES = frozenset(
    """
    pi e tau inf log log2 log10 log1p exp expm1 sqrt pow tanh sin cos atan floor ceil fabs
    isfinite isnan erf lgamma
    """.split()
)
TENSOR_ATTRIBUTES = frozenset(
    """
    abs add sub mul div neg negative pow exp exp2 expm1 log log1p log2 log10 sqrt rsqrt square
    sigmoid tanh relu softmax log_softmax logsumexp logit clamp clamp_min clamp_max clip mean nanmean
    sum nansum prod std var norm max min amax amin argmax argmin median sort argsort topk cumsum
    cumprod sign reciprocal floor ceil round trunc frac erf erfc lgamma digamma lerp masked_fill
    where detach clone contiguous float double long int bool type_as view view_as reshape
    reshape_as flatten squeeze unsqueeze expand expand_as t T transpose permute size dim ndim numel
    shape dtype device item eq ne gt ge lt le logical_not logical_and logical_or isfinite isnan
    isinf nan_to_num any all maximum minimum values indices matmul dot diff flip new_zeros new_ones
    new_full new_tensor sin cos atan sinh cosh diag tril triu gather index_select narrow chunk
    split unbind eps tiny xlogy
    """.split()
)
#: module attributes that are values (constants), not functions: the only ones usable uncalled
MODULE_VALUES = frozenset(
    [f"torch.{n}" for n in TORCH_CONSTANTS] + [f"math.{n}" for n in ("pi", "e", "tau", "inf")]
)
#: what `torch.finfo(dtype)` may be read for (small positive floats: within the constant cap)
FINFO_ATTRIBUTES = frozenset({"eps", "tiny"})
ALLOWED_MODULE_PATHS = frozenset(
    [f"torch.{n}" for n in TORCH_FUNCTIONS | TORCH_CONSTANTS]
    + [f"F.{n}" for n in F_FUNCTIONS]
    + [f"math.{n}" for n in MATH_ATTRIBUTES]
)
REDUCTIONS = frozenset({"mean", "sum", "none", "batchmean"})
STRING_MESSAGE = (
    "string constant not allowed (only a docstring or reduction='mean'/'sum'/'none'/'batchmean')"
)

FORBIDDEN_NAMES = frozenset(
    """
    exec eval compile open getattr setattr delattr hasattr globals locals vars dir type object
    input print breakpoint help exit quit super memoryview id callable isinstance issubclass
    classmethod staticmethod property iter next aiter anext format repr ascii chr ord bytes
    bytearray str dict set list tuple frozenset slice map filter zip enumerate reversed sorted
    hash os sys subprocess builtins importlib shutil socket pathlib pickle ctypes signal resource
    io numpy np gc inspect threading multiprocessing weakref code codeop marshal
    """.split()
)


# --------------------------------------------------------------------------------------------
# allowed syntax

_BASE_ALLOWED_NODES: tuple[type, ...] = (
    ast.Module,
    ast.FunctionDef,
    ast.arguments,
    ast.arg,
    ast.Return,
    ast.Assign,
    ast.AugAssign,
    ast.Expr,
    ast.If,
    ast.For,
    ast.Break,
    ast.Continue,
    ast.Pass,
    ast.Assert,
    ast.BoolOp,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
    ast.IfExp,
    ast.Call,
    ast.keyword,
    ast.Attribute,
    ast.Subscript,
    ast.Slice,
    ast.Name,
    ast.Constant,
    ast.Tuple,
    ast.List,
    ast.Load,
    ast.Store,
    ast.And,
    ast.Or,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Pow,
    ast.MatMult,
    ast.BitAnd,
    ast.BitOr,
    ast.BitXor,
    ast.Invert,
    ast.UAdd,
    ast.USub,
    ast.Not,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.Is,
    ast.IsNot,
    ast.In,
    ast.NotIn,
)
ALLOWED_NODES = frozenset(_BASE_ALLOWED_NODES)


def _node_messages() -> dict[type, str]:
    table: list[tuple[str, str]] = [
        ("Import", "import not allowed"),
        ("ImportFrom", "import not allowed"),
        ("Lambda", "lambda not allowed"),
        ("ListComp", "comprehension not allowed"),
        ("SetComp", "comprehension not allowed"),
        ("DictComp", "comprehension not allowed"),
        ("GeneratorExp", "generator expression not allowed"),
        ("ClassDef", "class definition not allowed"),
        ("While", "while loop not allowed"),
        ("With", "with statement not allowed"),
        ("AsyncWith", "with statement not allowed"),
        ("Try", "try statement not allowed"),
        ("TryStar", "try statement not allowed"),
        ("Raise", "raise not allowed"),
        ("Global", "global statement not allowed"),
        ("Nonlocal", "nonlocal statement not allowed"),
        ("Yield", "yield not allowed"),
        ("YieldFrom", "yield not allowed"),
        ("Await", "async code not allowed"),
        ("AsyncFunctionDef", "async code not allowed"),
        ("AsyncFor", "async code not allowed"),
        ("Starred", "star-arguments not allowed"),
        ("JoinedStr", "f-string not allowed"),
        ("FormattedValue", "f-string not allowed"),
        ("NamedExpr", "assignment expression (:=) not allowed"),
        ("Delete", "del statement not allowed"),
        ("Dict", "dict literal not allowed"),
        ("Set", "set literal not allowed"),
        ("Match", "match statement not allowed"),
        ("AnnAssign", "annotated assignment not allowed"),
        ("LShift", "shift operator not allowed"),
        ("RShift", "shift operator not allowed"),
    ]
    return {getattr(ast, n): m for n, m in table if hasattr(ast, n)}


NODE_MESSAGES = _node_messages()


class SandboxError(EvoUnlearnError):
    """A loss program was rejected by the sandbox or compiled outside the worker."""


def is_loss_name(name: str) -> bool:
    """True for candidate names: `loss_fn` and `loss_fn_<k>`."""
    return bool(_LOSS_NAME_RE.match(name))


def interface_args(interface: str) -> tuple[tuple[str, ...], int]:
    """(argument names, number of required arguments) of a loss interface."""
    try:
        return INTERFACES[interface]
    except KeyError:
        raise SandboxError(f"unknown loss interface {interface!r} (known: {', '.join(INTERFACES)})") from None



# --------------------------------------------------------------------------------------------
# output and in-place parameters

#: Parameters through which a call writes into an existing tensor instead of returning a new one.
OUTPUT_PARAMETERS = frozenset({"out", "inplace"})


@cache
def output_parameter(path: str) -> tuple[int, str] | None:
    """(position, name) of the first output / in-place parameter of allowed function `path`
    ("torch.norm", "F.relu", "Tensor.clamp") that a caller can pass positionally, or None.

    Read from the function itself rather than a hand-made list: Python-level functions
    (F.relu, F.hardtanh, F.normalize, torch.norm, ...) through `inspect.signature`; torch's C
    builtins, which have no introspectable signature, through the signature lines of their
    docstrings (their `out` is keyword-only, after `*`, so this finds none today, but a future
    torch that changes that is caught)."""
    fn = _resolve(path)
    if fn is None:
        return None
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return _output_parameter_from_doc(path.rpartition(".")[2], fn.__doc__ or "")
    for i, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY or p.kind is p.VAR_KEYWORD:
            break
        if p.name in OUTPUT_PARAMETERS:
            return i, p.name
    return None


def _resolve(path: str) -> object | None:
    import math

    import torch
    import torch.nn.functional as F

    root, _, name = path.partition(".")
    owner = {"torch": torch, "F": F, "math": math, "Tensor": torch.Tensor}.get(root)
    fn = getattr(owner, name, None)
    return fn if callable(fn) and not isinstance(fn, type) else None


def _output_parameter_from_doc(name: str, doc: str) -> tuple[int, str] | None:
    """The first output / in-place parameter before `*` in any `name(...)` line of `doc`."""
    for m in re.finditer(rf"^\s*(?:torch\.)?{re.escape(name)}\((.*)\)", doc, re.M):
        for i, raw in enumerate(m.group(1).split(",")):
            param = raw.strip().split("=")[0].strip()
            if param.startswith("*"):
                break
            if param in OUTPUT_PARAMETERS:
                return i, param
    return None
