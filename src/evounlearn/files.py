"""Atomic file writes: the one helper every cache, result and record file goes through.

The data is written to a temp file in the target's own folder (same filesystem) and then moved
over the target with `os.replace`, so a reader sees either the old file or the complete new one,
never half a file, even when the writer is killed. The temp name is unique per call, so two
processes writing the same path never share a temp file; the last `os.replace` wins. No fsync:
these files protect against interrupted processes, not against power loss.

Cache entries built by several processes at once (runs sharing one cache) are built under
`file_lock(entry)`: the first process builds, the others wait and then find the entry complete.
Folders (a model saved with `save_pretrained`) are built in a temp folder renamed into place
(`atomic_dir`). `read_json` reads what was written and names the file when it is missing or
corrupt (`ArtifactError`, an infrastructure fault: the search never charges it to a candidate).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import DataError


def content_hash(obj: Any, n: int = 16) -> str:
    """A short sha256 of the JSON form of `obj` (cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]

FILE_MODE = 0o644  # mkstemp creates 0o600; written files are meant to be readable like any other
DIR_MODE = 0o755  # mkdtemp creates 0o700


class ArtifactError(DataError):
    """A file or folder this package wrote (a cache entry: prepared model, tokenizer, data split,
    results or info JSON) is missing or corrupt: the infrastructure's fault, not a candidate's.
    `path` names the file."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None


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


# ------------------------------------------------------------------------------------------------
# folders, locks and checked reads of cache entries


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a folder atomically: yields an empty temp folder next to `path`; when the block ends
    normally the temp folder is renamed to `path` (replacing an old one), on an error it is
    removed. So `path` is either absent, the old folder, or the complete new one (e.g. a model
    saved with `save_pretrained`). Replacing an existing folder is two renames, not one: callers
    that may race hold `file_lock(path)`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
        os.rename(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def lock_path(path: str | Path) -> Path:
    """The lock file of a cache entry: `<entry>.lock` next to it."""
    p = Path(path)
    return p.with_name(p.name + ".lock")


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the cache entry `path` (`fcntl.flock` on `<entry>.lock`); a
    second process blocks here until the first is done, then finds the entry complete.

    The lock file is removed on release, so no lock files accumulate in the cache. That is safe
    because a process that got the lock checks that its open file is still the one at the path
    (a waiter whose file was removed meanwhile retries on the new file)."""
    lp = lock_path(path)
    lp.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lp, os.O_CREAT | os.O_RDWR, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            mine = os.fstat(fd)
            try:
                now = os.stat(lp)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
            break
        os.close(fd)  # the holder before us removed this lock file: lock the new one
    try:
        yield
    finally:
        try:
            lp.unlink(missing_ok=True)
        finally:
            os.close(fd)  # releases the flock


def read_json(path: str | Path, what: str = "cache file") -> Any:
    """`json.loads` of a file written by this package (cache entries, results, run records);
    a missing, unreadable or corrupt file raises `ArtifactError` naming the file."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ArtifactError(f"{what} {p} is missing", p) from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{what} {p} is corrupt (not valid JSON: {e})", p) from e


def read_json_or_none(path: str | Path) -> Any:
    """The JSON in `path`, or None when it is missing or corrupt (for an entry being rebuilt
    anyway, e.g. old stats merged into a new info file)."""
    try:
        return read_json(path)
    except ArtifactError:
        return None


def path_stamp(path: str | Path | None) -> list[Any] | None:
    """[(relative name, size, mtime_ns), ...] of a local file or folder (cache keys: a re-written
    model or data set gets a new stamp); [] for no path; None when `path` is not local (a Hub id:
    nothing to stamp, so not cacheable)."""
    if not path:
        return []
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return [[p.name, st.st_size, st.st_mtime_ns]]
    if not p.is_dir():
        return None
    out: list[Any] = []
    for root, dirs, files in os.walk(p):
        dirs.sort()
        for name in sorted(files):
            f = Path(root) / name
            st = f.stat()
            out.append([str(f.relative_to(p)), st.st_size, st.st_mtime_ns])
    return out
