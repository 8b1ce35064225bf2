"""Atomic file writes: the one helper every cache, result and record file goes through.

The data is written to a temp file in the target's own folder (same filesystem) and then moved
over the target with `os.replace`, so a reader sees either the old file or the complete new one,
never half a file, even when the writer is killed. The temp name is unique per call, so two
processes writing the same path never share a temp file; the last `os.replace` wins. No fsync:
these files protect against interrupted processes, not against power loss.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

FILE_MODE = 0o644  # mkstemp creates 0o600; written files are meant to be readable like any other


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (creating its folder); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (creating its folder); returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 1,
                      default: Callable[[Any], Any] | None = None, sort_keys: bool = False) -> Path:
    """`json.dumps(obj, ...)` written to `path` atomically (creating its folder); returns the path."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=default, sort_keys=sort_keys))
