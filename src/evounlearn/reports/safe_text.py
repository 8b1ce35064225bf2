"""Text from untrusted sources (loss programs, proposer notes, error messages) made safe to print
and to write into Markdown.

- `clean_text`: terminal control removed: ANSI escape sequences (CSI, OSC, two-byte ESC forms),
  then every other C0 control character except newline and tab, DEL and the C1 range, and every
  Unicode format character (category Cf: bidi overrides and isolates, zero-width spaces and
  joiners, the BOM...), which would make a viewer or a model read text in another order than it
  is stored. What a terminal or a Markdown viewer shows is then exactly the printable text.
- `clean_data`: `clean_text` on every string (keys included) of a JSON-like structure.
- `md_text`: one line of untrusted text for Markdown outside code: HTML special characters become
  entities and Markdown punctuation that could make links, images, emphasis or break a table
  cell is backslash-escaped.
- `code_fence`: a fenced block whose fence is longer than any backtick run inside, so the code
  can never close it.
- `fenced`: THE way untrusted text enters a prompt or a report block: cleaned, capped at
  `max_chars` (a visible marker says how much was cut), then `code_fence`d.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), other ESC + one byte; also the 8-bit CSI/OSC
_ESCAPE_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC, terminated or not
    r"|\x9b[0-?]*[ -/]*[@-~]"  # 8-bit CSI
    r"|\x9d[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # 8-bit OSC
    r"|\x1b[@-_]?"  # any other ESC form (or a lone ESC)
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 except \t \n, DEL, C1
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|!])")


def clean_text(text: Any) -> str:
    """`text` as a string with escape sequences and control characters (C0 except newline and
    tab, DEL, C1) removed; carriage returns become newlines."""
    s = str(text).replace("\r\n", "\n").replace("\r", "\n")
    s = _CONTROL.sub("", _ESCAPE_SEQUENCE.sub("", s))
    if s.isascii():  # the common case: nothing of category Cf can be there
        return s
    return "".join(ch for ch in s if unicodedata.category(ch) != "Cf")


def clean_data(obj: Any) -> Any:
    """A copy of a JSON-like structure with `clean_text` applied to every string."""
    if isinstance(obj, str):
        return clean_text(obj)
    if isinstance(obj, Mapping):
        return {clean_text(k) if isinstance(k, str) else k: clean_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_data(v) for v in obj]
    return obj


def md_text(text: Any) -> str:
    """One line of untrusted text, safe in Markdown prose or a table cell (no HTML, no links,
    no images, no emphasis, no cell breaks)."""
    s = clean_text(text).replace("\n", " ").replace("\t", " ")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(s, quote=False))


def code_fence(code: str, language: str = "") -> str:
    """`code` in a fenced block that nothing inside can close (the fence is longer than the
    longest run of backticks in it, and at least three)."""
    body = clean_text(code).rstrip("\n")
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{body}\n{fence}"


def fenced(text: Any, language: str = "", max_chars: int | None = None) -> str:
    """Untrusted `text` as a fenced block nothing inside can close: `clean_text`, then cut at
    `max_chars` characters (with a marker line saying how many were dropped), then `code_fence`."""
    body = clean_text(text).rstrip("\n")
    if max_chars is not None and len(body) > max_chars:
        body = body[: max(0, int(max_chars))] + f"\n... ({len(body) - int(max_chars)} more characters cut)"
    return code_fence(body, language)
