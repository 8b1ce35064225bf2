"""Readable tables of results (plain text for the terminal, Markdown for files)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .safe_text import clean_text, md_text


def fmt_value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.4f}"
    return str(v)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], markdown: bool = False,
          headers: Mapping[str, str] | None = None) -> str:
    """Format rows (dicts) as a fixed-width or Markdown table with the given columns. Cells are
    made safe for their output (`reports.safe_text`): no control characters on the terminal, no
    HTML, links or cell breaks in Markdown."""
    headers = headers or {}
    cell = md_text if markdown else _plain_cell
    head = [cell(headers.get(c, c)) for c in columns]
    body = [[cell(fmt_value(r.get(c))) for c in columns] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line, sep] + ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body])


def _plain_cell(text: str) -> str:
    return clean_text(text).replace("\n", " ").replace("\t", " ")


def metric_table(summaries: Mapping[str, Mapping[str, Any]], keys: Sequence[str], markdown: bool = False) -> str:
    """One row per metric, one column per model (e.g. target / retain / method)."""
    names = list(summaries)
    rows = [{"metric": k, **{n: summaries[n].get(k) for n in names}} for k in keys]
    return table(rows, ["metric", *names], markdown=markdown)
