"""Prompts for the LLM proposers (after the EvoMU paper's prompts).

Templates live in `templates/<kind>.txt` next to this module (package data, `string.Template`
syntax: `$name`), one per request kind, plus `rules.txt` (output format + rules) which every
template includes as `$rules`. Variables:

- all kinds: `$n`, `$names` ("loss_fn_1 ... loss_fn_<n>"), `$benchmark`, `$benchmark_notes`,
  `$signature`, `$arguments`, `$rules`, `$training` (how candidates are trained: the request's
  `RunSettings`, e.g. full fine-tuning or a LoRA adapter, as the run is configured);
- refine / tune: `$parent_code`, `$parent_fitness`, `$loss_history`, `$metrics_json`,
  `$guidance`, `$leaderboard` (refine only);
- crossover: `$parent_a_code`, `$parent_a_fitness`, `$parent_a_loss_history`,
  `$parent_a_metrics_json` (same for `parent_b`), `$guidance`, `$leaderboard`;
- repair: `$broken_code`, `$reason`.

Numbers are shown with 4 decimals; the leaderboard is sorted by ascending fitness (best last).

Untrusted text (every program's code, metrics with their strings, the repair reason) enters a
prompt through ONE function, `untrusted(text, kind)`: cleaned (`reports.safe_text.clean_text`:
controls and Unicode format characters removed), capped (`CAPS`, e.g. 300 characters for a
reason), and fenced with a fence longer than any backtick run inside (`safe_text.fenced`), so a
docstring holding "```" cannot close the block and put text outside it. The variables holding
such text (`$parent_code`, `$broken_code`, `$reason`, `$metrics_json`, `$leaderboard`...) are
complete fenced blocks: the templates add no fence of their own. Fitnesses and loss histories
are formatted numbers only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from string import Template
from typing import Any

from ....errors import ConfigError
from ....reports.safe_text import fenced
from ..base import ProposalRequest

__all__ = [
    "CAPS",
    "untrusted",
    "render_prompt",
    "load_template",
    "signature_for",
    "format_metrics",
    "format_leaderboard",
    "format_loss_history",
    "benchmark_notes",
    "guidance_for",
]

FAITHFUL_SIGNATURE = (
    "def loss_fn_k(log_probs_forget, log_probs_retain, ref_log_probs_forget=None, ref_log_probs_retain=None):\n"
    '    """epochs: 5"""\n'
    "    ..."
)
EXTENDED_SIGNATURE = (
    "def loss_fn_k(tok_logp_forget, mask_forget, tok_logp_retain, mask_retain,\n"
    "              ref_tok_logp_forget=None, ref_tok_logp_retain=None):\n"
    '    """epochs: 5"""\n'
    "    ..."
)
FAITHFUL_ARGUMENTS = """Arguments (B = batch size; forget and retain batches have the same size):
- log_probs_forget: 1-D float tensor [B]. For each forget sequence, the mean over its answer
  tokens of log p(token | prefix) under the model being unlearned (has gradient; values <= 0).
- log_probs_retain: 1-D float tensor [B], the same for a paired batch of retain sequences.
- ref_log_probs_forget, ref_log_probs_retain: [B], the same quantities under the frozen model
  before unlearning (no gradient). They are always passed during training."""
EXTENDED_ARGUMENTS = """Arguments (B = batch size, T = answer length; forget and retain batches have the same size):
- tok_logp_forget: [B, T] per-token log p(token | prefix) of the forget answers under the model
  being unlearned (has gradient; 0 where mask_forget is 0).
- mask_forget: [B, T] float, 1 on answer tokens and 0 on padding.
- tok_logp_retain, mask_retain: the same for a paired batch of retain sequences.
- ref_tok_logp_forget, ref_tok_logp_retain: [B, T] per-token log-probs under the frozen model
  before unlearning (no gradient). They are always passed during training.
Average over tokens with the mask, e.g. (x * mask_forget).sum(-1) / mask_forget.sum(-1).clamp(min=1)."""

#: the most characters of each kind of untrusted text a prompt shows
CAPS: dict[str, int] = {"code": 8000, "leaderboard_code": 3000, "reason": 300, "metrics": 4000}
_LANGUAGE = {"code": "python", "leaderboard_code": "python", "reason": "text", "metrics": "json"}


def untrusted(text: Any, kind: str) -> str:
    """Untrusted text as a complete fenced block for a prompt: cleaned, capped at `CAPS[kind]`
    characters and fenced so that nothing inside can close the block (module docstring)."""
    return fenced(text, _LANGUAGE[kind], CAPS[kind])


_DEFAULT_NOTES = "Fitness rewards forgetting the forget set while keeping utility (higher is better)."

_DEFAULT_GUIDANCE = [
    "- Forget metrics high: forget harder (a larger forget weight, a sharper penalty, more epochs).",
    "- Utility low: protect retention (a stronger retain term, a bounded forget term, fewer epochs).",
]


def _benchmark(name: str) -> Any:
    """The registered benchmark (its `prompt_notes` / `prompt_guidance`), or None when unknown."""
    from ....benchmarks import get_benchmark

    try:
        return get_benchmark(name)
    except ConfigError:
        return None


def benchmark_notes(benchmark: str, fitness: str = "") -> str:
    """One paragraph describing the benchmark, then the formula of the fitness the search optimises
    (`fitness`: a name of the benchmark's fitnesses; empty: its default)."""
    b = _benchmark(benchmark)
    notes = (b.prompt_notes if b is not None else "") or _DEFAULT_NOTES
    if b is None:
        return notes
    try:
        spec = b.fitness_spec(fitness)
    except ConfigError:
        return notes
    return f"{notes.rstrip()} Fitness ({spec.name}, higher is better) = {spec.formula}."


def guidance_for(benchmark: str) -> str:
    """Metric-driven advice for refine / crossover / tune prompts."""
    b = _benchmark(benchmark)
    return "\n".join((b.prompt_guidance if b is not None else ()) or _DEFAULT_GUIDANCE)


@cache
def load_template(name: str) -> Template:
    """The template `templates/<name>.txt` next to this module (package data)."""
    res = resources.files(__package__).joinpath("templates", f"{name}.txt")
    try:
        text = res.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"prompt template {name!r} not found in {__package__}.templates") from exc
    return Template(text)


def signature_for(interface: str) -> tuple[str, str]:
    """(signature block, argument description) for a loss interface."""
    if interface == "extended":
        return EXTENDED_SIGNATURE, EXTENDED_ARGUMENTS
    return FAITHFUL_SIGNATURE, FAITHFUL_ARGUMENTS


def _num(x: Any) -> Any:
    if isinstance(x, bool) or x is None:
        return x
    if isinstance(x, (int,)):
        return x
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return round(x, 4)
    try:  # numpy / torch scalars
        return _num(float(x))
    except (TypeError, ValueError):
        return str(x)


def _compact(obj: Any, max_list: int = 16) -> Any:
    if isinstance(obj, Mapping):
        if "agg" in obj:  # {"agg": x, "values": {...}}: per-example values are too long to show
            return _compact(obj["agg"], max_list)
        return {str(k): _compact(v, max_list) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_compact(v, max_list) for v in obj[:max_list]]
        if len(obj) > max_list:
            items.append(f"... ({len(obj) - max_list} more)")
        return items
    if isinstance(obj, str):
        return obj
    return _num(obj)


def format_metrics(metrics: Mapping[str, Any] | None) -> str:
    """Metrics as indented JSON, floats rounded to 4 decimals, per-example values dropped."""
    if not metrics:
        return untrusted("{}", "metrics")
    return untrusted(json.dumps(_compact(dict(metrics)), indent=2), "metrics")


def format_fitness(fitness: Any) -> str:
    try:
        f = float(fitness)
    except (TypeError, ValueError):
        return "unknown"
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "failed (-inf)" if f < 0 else "inf"
    return f"{f:.4f}"


def format_loss_history(history: Sequence[Any] | None) -> str:
    if not history:
        return "(not recorded)"
    # numbers only: anything else in a history is shown as "?" (no untrusted text outside a fence)
    return "[" + ", ".join(format_fitness(v) if isinstance(v, (int, float)) else "?" for v in history[:64]) + (
        ", ..." if len(history) > 64 else "") + "]"


def _short(code: str, max_lines: int = 30) -> str:
    lines = [ln for ln in code.strip().splitlines() if not ln.strip().startswith("# tree:")]
    if len(lines) > max_lines:
        lines = lines[:max_lines] + ["    # ... (truncated)"]
    return "\n".join(lines)


def format_leaderboard(leaderboard: Sequence[tuple[float, str]] | None, max_entries: int = 5) -> str:
    """The best `max_entries` entries, sorted by ascending fitness (best last)."""
    if not leaderboard:
        return "(empty)"

    def key(entry: tuple[float, str]) -> float:
        try:
            f = float(entry[0])
        except (TypeError, ValueError):
            return -math.inf
        return -math.inf if math.isnan(f) else f

    entries = sorted(leaderboard, key=key)[-max_entries:]
    blocks = []
    for rank, (fit, code) in enumerate(entries, start=1):
        blocks.append(f"{rank}. fitness {format_fitness(fit)}\n{untrusted(_short(str(code)), 'leaderboard_code')}")
    return "\n\n".join(blocks)


def _parent(request: ProposalRequest, i: int) -> Mapping[str, Any]:
    if i < len(request.parents):
        return request.parents[i]
    return {"code": "", "fitness": None, "metrics": {}, "loss_history": []}


def _parent_code(p: Mapping[str, Any]) -> str:
    return untrusted(_short(str(p.get("code", "")), max_lines=200), "code")


def render_prompt(request: ProposalRequest, *, max_leaderboard: int = 5) -> str:
    """The full user prompt for `request` (its kind picks the template)."""
    signature, arguments = signature_for(request.interface)
    common: dict[str, Any] = {
        "n": request.n,
        "names": "loss_fn_1" if request.n == 1 else f"loss_fn_1 ... loss_fn_{request.n}",
        "benchmark": request.benchmark,
        "benchmark_notes": benchmark_notes(request.benchmark, request.fitness),
        "signature": signature,
        "arguments": arguments,
        "guidance": guidance_for(request.benchmark),
        "leaderboard": format_leaderboard(request.leaderboard, max_leaderboard),
        "training": request.run.describe(),
    }
    common["rules"] = load_template("rules").substitute(common).rstrip()
    kind = request.kind
    if kind in ("refine", "tune"):
        p = _parent(request, 0)
        common.update(
            parent_code=_parent_code(p),
            parent_fitness=format_fitness(p.get("fitness")),
            loss_history=format_loss_history(p.get("loss_history")),
            metrics_json=format_metrics(p.get("metrics")),
        )
    elif kind == "crossover":
        for tag, i in (("a", 0), ("b", 1)):
            p = _parent(request, i)
            common.update(
                {
                    f"parent_{tag}_code": _parent_code(p),
                    f"parent_{tag}_fitness": format_fitness(p.get("fitness")),
                    f"parent_{tag}_loss_history": format_loss_history(p.get("loss_history")),
                    f"parent_{tag}_metrics_json": format_metrics(p.get("metrics")),
                }
            )
    elif kind == "repair":
        code, reason = request.repair_info()
        broken = _short(code, max_lines=200) if code.strip() else "# (no code: the reply held no function)"
        common.update(broken_code=untrusted(broken, "code"),
                      reason=untrusted(reason.strip() or "(no reason given)", "reason"))
    return load_template(kind).substitute(common).rstrip() + "\n"
