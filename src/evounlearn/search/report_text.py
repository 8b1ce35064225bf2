"""The leaderboard as text: Markdown (leaderboard.md, `evounlearn report --markdown`) and the terminal
(tables that fit TERMINAL_WIDTH columns), from the JSON-ready dict `report.collect` builds. Pure
formatting: nothing here reads the run's database."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from typing import Any

from ..reports.safe_text import clean_text, code_fence, md_text
from ..reports.stats import difference_of_means
from ..reports.tables import fmt_value, table

#: spelled-out names of common summary keys (any other key: its words)
METRIC_LABELS = {
    "forget_quality": "forget quality", "model_utility": "model utility", "forget_rouge": "forget ROUGE",
    "forget_prob": "forget probability", "holdout_rouge": "holdout ROUGE", "holdout_prob": "holdout probability",
    "verbmem_f": "verbatim memorisation (forget)", "knowmem_f": "knowledge memorisation (forget)",
    "knowmem_r": "knowledge memorisation (retain)", "privleak": "privacy leakage",
    "forget_acc": "forget-domain accuracy", "retain_acc": "retain-domain accuracy",
    "acc_wmdp": "forget-domain accuracy", "acc_mmlu": "retain-domain accuracy",
}


def metric_label(key: str) -> str:
    if key.startswith("fitness_"):
        return f"{key[len('fitness_'):]} fitness"
    return METRIC_LABELS.get(key, key.replace("_", " "))


def format_lineage(nodes: list[dict[str, Any]]) -> str:
    lines = []
    for n in nodes:
        par = " + ".join(f"#{p}" for p in n["parents"])
        op = n.get("operator") or "?"
        how = f"{op} of {par}" if par else op
        fit = n.get("fitness_search")
        fs = f"search fitness {fit:.4f}" if fit is not None and math.isfinite(fit) else f"({n.get('status')})"
        lines.append(f"{'  ' * n['depth']}#{n['id']} (generation {n['generation']}, {how}) {fs}")
    return clean_text("\n".join(lines))


def _seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def _mean_sd(mean: float | None, sd: float | None, n: int) -> str | None:
    if mean is None:
        return None
    return fmt_value(mean) + (f" ± {fmt_value(sd)}" if n > 1 and sd is not None else "")


# ------------------------------------------------------------------------------------------------
# text


def _arm(data: Mapping[str, Any]) -> str:
    """`mode ours`, or `control random` for a control arm (which replaces the mode's loop)."""
    return f"control {data['control']}" if data.get("control") else f"mode {data.get('mode')}"


def _resume_dir(data: Mapping[str, Any]) -> str:
    import shlex

    return shlex.quote(str(data["run_dir"])) if data.get("run_dir") else "RUN_DIR"


def _head(data: Mapping[str, Any]) -> list[str]:
    c = data.get("counts") or {}
    where = f"benchmark {data.get('benchmark')}"
    if data.get("data"):
        where += f", data {data.get('data')}"
    status = data.get("status")
    lines = [
        f"search: {_arm(data)}, {where}, budget {data.get('budget')} trained candidates, status {status}"
        + (f" (no process holds it: continue with `evounlearn evolve --resume {_resume_dir(data)}`)"
           if status == "interrupted" else ""),
        f"trained candidates: {c.get('candidates', 0)} ({c.get('stopped_at_stage1', 0)} stopped early after the "
        f"stage-1 evaluation, {c.get('failed', 0)} failed); proposals rejected by the sandbox: "
        f"{c.get('rejected', 0)}; behavioural duplicates: {c.get('duplicates', 0)}; training runs: "
        f"{c.get('runs', 0)}; time: {sig(data.get('seconds'))} s "
        f"({sig(data.get('seconds_per_candidate'))} s per trained candidate)",
    ]
    fit = data.get("fitness") or {}
    if fit.get("searched") or fit.get("formula"):
        lines.append(f"search fitness: {fit.get('searched') or '?'}" + (f" = {fit['formula']}" if fit.get("formula")
                                                                         else ""))
    tu = data.get("target_utility")
    if tu is not None:
        util = metric_label(fit.get("utility_key") or "utility")
        lines.append(f"utility floor: {util} >= {data.get('utility_floor')} x {fmt_value(tu)} (the target's) = "
                     f"{fmt_value(data.get('utility_threshold'))}")
    return lines


def _table_block(t: Mapping[str, Any], markdown: bool, data: Mapping[str, Any] | None = None) -> list[str]:
    title = t.get("title", "")
    if not markdown:
        return [f"{title}:", *_wrap(t.get("sentence", "")), *terminal_table(t, data or {})]
    out = [f"### {md_text(title)}", md_text(t.get("sentence", ""))]
    out += ["", table(t.get("rows") or [], t.get("columns") or [], markdown=markdown, headers=t.get("headers"))]
    return out


# ------------------------------------------------------------------------------------------------
# the terminal: tables that fit TERMINAL_WIDTH columns (leaderboard.md keeps every column)

TERMINAL_WIDTH = 120
#: short terminal headers of common columns (any other metric: its key)
SHORT_LABELS = {"forget_quality": "forget quality", "model_utility": "model utility", "forget_rouge": "forget ROUGE",
                "forget_prob": "forget prob", "privleak": "PrivLeak", "forget_truth_ratio": "forget TR",
                "extraction_strength": "extraction", "holdout_rouge": "holdout ROUGE", "holdout_prob": "holdout prob"}
NAME_WIDTH = 24


def sig(v: Any, digits: int = 4) -> str:
    """A number with `digits` significant digits (0.7769, 400.8, 1.2e-06); anything else as text."""
    if isinstance(v, float) and math.isfinite(v):
        return f"{v:.{digits}g}"
    return fmt_value(v)


def _sig_mean_sd(mean: Any, sd: Any) -> str | None:
    if mean is None:
        return None
    return sig(mean) + (f" ± {sig(sd, 2)}" if sd is not None else "")


def _parse_mean_sd(cell: Any) -> tuple[float | None, float | None]:
    """(mean, sd) back from a `mean ± sd` cell of the data (or a plain number)."""
    if cell is None:
        return None, None
    if isinstance(cell, (int, float)):
        return float(cell), None
    parts = str(cell).split("±")
    try:
        return float(parts[0]), (float(parts[1]) if len(parts) > 1 else None)
    except ValueError:
        return None, None


def terminal_table(t: Mapping[str, Any], data: Mapping[str, Any]) -> list[str]:
    """One table for the terminal: rank, the utility-floor verdict and the ranking fitness first,
    numbers to 4 significant digits, short headers explained in one line; columns that do not fit
    TERMINAL_WIDTH are left out (and named: leaderboard.md has them all)."""
    cols, headers = list(t.get("columns") or []), dict(t.get("headers") or {})
    rows = t.get("rows") or []
    ranked_on = "report" if "report" in cols else "search"
    other = "search" if ranked_on == "report" else None
    fit = data.get("fitness") or {}
    searched = f"fitness_{fit.get('searched')}" if fit.get("searched") else ""
    order = [c for c in ("rank", "utility floor", ranked_on, "name") if c in cols or c == "name"]
    order += [c for c in (other, "operator", "epochs", "generation") if c and c in cols]
    order += [c for c in cols if c not in order and c != searched]  # the searched fitness = the fitness column
    short = {"rank": "rank", "utility floor": "floor", "name": "name", "search": "search fit.",
             "operator": headers.get("operator", "operator"), "epochs": "epochs", "generation": "gen"}
    short[ranked_on] = "fitness"
    cells = []
    for r in rows:
        row: dict[str, Any] = {}
        for c in order:
            v = r.get(c)
            if c in ("search", "report"):
                row[c] = _sig_mean_sd(*_parse_mean_sd(v))
            elif c == "name":
                name = str(v or "")
                row[c] = name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 1] + "…"
            elif c == "utility floor":
                row[c] = {"passes": "pass", "below": "BELOW"}.get(str(v), v)
            else:
                row[c] = sig(v) if isinstance(v, float) else v
        cells.append(row)
    labels = {c: short.get(c) or SHORT_LABELS.get(c) or (c[len("fitness_"):] + " fitness" if c.startswith("fitness_")
                                                           else c) for c in order}
    keep = list(order)
    while len(keep) > 2 and _width(cells, keep, labels) > TERMINAL_WIDTH:
        keep.pop()
    left = [labels[c] for c in order if c not in keep]
    out = [*_wrap(_legend(t, data, ranked_on, keep)), ""]
    out.append(table(cells, keep, headers=labels))
    if left:
        out += _wrap(f"(not shown here, in leaderboard.md: {', '.join(left)})")
    return out


def _width(cells: list[dict[str, Any]], cols: list[str], labels: Mapping[str, str]) -> int:
    widths = [max([len(labels[c])] + [len(fmt_value(r.get(c))) for r in cells]) for c in cols]
    return sum(widths) + 2 * (len(widths) - 1)


def _legend(t: Mapping[str, Any], data: Mapping[str, Any], ranked_on: str, keep: list[str]) -> str:
    """What the short headers mean: the fitness (part, seeds, which one), the floor, the metrics' part."""
    headers = t.get("headers") or {}
    fit = (data.get("fitness") or {}).get("searched") or "the searched"
    bits = []
    if ranked_on in keep:
        how = str(headers.get(ranked_on, "")).split("fitness", 1)[-1]  # ", mean ± sd over 3 seeds" / " (1 seed)"
        bits.append(f"fitness: {fit} fitness on the {ranked_on} part{how}")
    if ranked_on == "report" and "search" in keep:
        bits.append("search fit.: on the search part")
    if "utility floor" in keep and data.get("utility_threshold") is not None:
        util = metric_label((data.get("fitness") or {}).get("utility_key") or "utility")
        bits.append(f"floor: {util} >= {sig(data.get('utility_threshold'))}")
    part = next((v.rsplit(", ", 1)[1] for k, v in headers.items() if k not in ("search", "report") and ", " in v
                 and v.endswith(" part")), None)
    if part:
        bits.append(f"metrics on the {part}")
    return "; ".join(bits)


def _wrap(text: str, width: int = TERMINAL_WIDTH) -> list[str]:

    return textwrap.wrap(text, width=width, break_long_words=False, break_on_hyphens=False) if text else []


def noise_lines(data: Mapping[str, Any]) -> list[str]:
    """Whether the winner's report fitness is within the noise of a baseline's: the difference
    and its standard error sqrt(sd_w^2/n_w + sd_b^2/n_b) over their report-part seeds (within the
    noise: |difference| < 2 SE); with one run on either side there is no standard error to say."""
    w = data.get("winner") or {}
    mw, sw, nw = w.get("fitness_report"), w.get("fitness_report_std"), int(w.get("n_report") or 0)
    if mw is None:
        return []
    within, unknown = [], []
    for name, b in (data.get("baselines") or {}).items():
        mb, sb, nb = b.get("fitness_report_mean"), b.get("fitness_report_std"), int(b.get("seeds") or 0)
        if mb is None:
            continue
        d = difference_of_means(mw, sw, nw, mb, sb, nb)
        if d.se is None:
            unknown.append(f"{name} ({sig(float(mb))}; difference {sig(d.delta, 2)})")
        elif d.within_noise:
            within.append(f"{name} ({sig(float(mb))}; difference {sig(d.delta, 2)}, SE {sig(d.se, 2)} over {nw} + {nb} "
                          "seeds)")
    out = []
    if within:
        out.append(f"Noise: the winner's report fitness {sig(float(mw))} is within the noise (|difference| < 2 SE) "
                   f"of: {'; '.join(within)}.")
    if unknown:
        out.append(f"Noise: one report run on one side, so no standard error: the winner ({sig(float(mw))}) vs "
                   f"{'; '.join(unknown)}; a difference this size may be noise.")
    return out


def _winner_block(data: Mapping[str, Any], markdown: bool) -> list[str]:
    w = data.get("winner")
    if not w:
        return ["", "no winner (no finalist finished)"]
    line = (f"best loss: #{w['id']} (generation {w['generation']}, {w.get('operator')}), search fitness "
            f"{_mean_sd(w.get('fitness_search'), w.get('fitness_search_std'), w.get('n_search') or 0) or '-'} "
            f"({_seeds(w.get('n_search') or 0)}), report fitness "
            f"{_mean_sd(w.get('fitness_report'), w.get('fitness_report_std'), w.get('n_report') or 0) or '-'} "
            f"({_seeds(w.get('n_report') or 0)})")
    out = ["", md_text(line) if markdown else line]
    code = w.get("code")
    if not code:
        out.append("(the winner's program no longer passes the sandbox check: no code is shown or written)")
    elif markdown:
        out.append(code_fence(code, "python"))
    else:
        out.append(code.rstrip())
    lin = format_lineage(w.get("lineage") or [])
    out += ["", "lineage of the winner:", code_fence(lin) if markdown else lin]
    return out


def format_report(data: Mapping[str, Any], markdown: bool = False) -> str:
    """The leaderboard as text (terminal) or Markdown; every untrusted string made safe."""
    head = _head(data)
    out = [f"- {md_text(line)}" for line in head] if markdown else [x for line in head for x in _wrap(line)]
    for t in data.get("tables") or []:
        out.append("")
        if t.get("section") == "finalist":
            notes = [f"Why not: {n}" for n in data.get("why_not") or []] + noise_lines(data)
            if markdown:
                out += [md_text(data.get("selection") or ""), "", *(f"- {md_text(n)}" for n in notes), ""]
            else:
                out += [x for line in [data.get("selection") or "", *notes] for x in _wrap(line)]
        out += _table_block(t, markdown, data)
    if not data.get("tables"):
        out += ["", "no candidate finished yet"]
    out += _winner_block(data, markdown)
    text = "\n".join(out)
    return text if markdown else clean_text(text)
