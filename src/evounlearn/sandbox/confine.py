"""OS confinement layers of an isolated worker, applied in the child (defence in depth).

Each layer is tried and reported; one the OS refuses is skipped, never fatal (the AST checker
and the restricted builtins stay the first line of defence):

- `pdeathsig`: prctl(PR_SET_PDEATHSIG, SIGKILL): the worker dies with its parent (the fork
  server, which itself dies with the driver: see `forkserver_init`), so a `kill -9` of the
  driver leaves no worker running a job;
- `netns`: a new, empty network namespace (unshare(CLONE_NEWUSER | CLONE_NEWNET), or
  CLONE_NEWNET alone where the process has CAP_SYS_ADMIN): no interface but a down loopback, so
  every connect fails with ENETUNREACH. Python 3.11 has no `os.unshare`: libc's via ctypes;
- `landlock`: writes confined to the worker's scratch directory, the paths the caller lists
  (e.g. a search's run directory) and /dev/null; reads stay allowed everywhere (torch, the
  benchmark data). /tmp is NOT writable: the worker's TMPDIR is its scratch directory. Needs
  Linux >= 5.13 (Landlock ABI >= 1); the rights added by later ABIs (REFER 2, TRUNCATE 3) are
  handled when the kernel has them. Landlock cannot be lifted by the process once applied.

`apply_layers(...)` returns the layer states as a dict, e.g. {"pdeathsig": "on", "netns": "off
(EPERM)", "landlock": "on (ABI 3)"}; `describe_layers` makes the pool's log line of them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import signal
from collections.abc import Iterable, Mapping

__all__ = ["apply_layers", "describe_layers", "landlock_abi", "set_pdeathsig"]

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
# x86_64 and aarch64 share these syscall numbers (the generic table)
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1

# filesystem access rights (linux/landlock.h)
_WRITE_FILE = 1 << 1
_REMOVE_DIR = 1 << 4
_REMOVE_FILE = 1 << 5
_MAKE_ALL = sum(1 << b for b in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
_REFER = 1 << 13  # ABI 2
_TRUNCATE = 1 << 14  # ABI 3


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _errname() -> str:
    return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))


def set_pdeathsig(sig: int = signal.SIGKILL) -> str:
    """Ask the kernel to send `sig` to this process when its parent thread dies."""
    parent = os.getppid()
    if _libc().prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return f"off ({_errname()})"
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os.kill(os.getpid(), sig)
    return "on"


def _new_netns() -> str:
    libc = _libc()
    if libc.unshare(_CLONE_NEWNET) == 0:  # privileged (root / CAP_SYS_ADMIN)
        return "on"
    first = _errname()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:  # unprivileged user namespaces
        return "on (user namespace)"
    return f"off ({first}/{_errname()})"


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is unavailable."""
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), _LANDLOCK_CREATE_RULESET_VERSION)
    return int(abi) if abi > 0 else 0


def _landlock(write_paths: Iterable[str]) -> str:
    abi = landlock_abi()
    if abi < 1:
        return "off (unsupported)"
    libc = _libc()
    handled = _WRITE_FILE | _REMOVE_DIR | _REMOVE_FILE | _MAKE_ALL
    handled |= _REFER if abi >= 2 else 0
    handled |= _TRUNCATE if abi >= 3 else 0
    attr = ctypes.c_uint64(handled)  # struct landlock_ruleset_attr, first field only (size 8)
    fd = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(8), 0)
    if fd < 0:
        return f"off ({_errname()})"
    try:
        for path in [*write_paths, os.devnull]:
            _allow(libc, fd, path, handled)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return f"off (no_new_privs: {_errname()})"
        if libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, fd, 0) != 0:
            return f"off ({_errname()})"
    finally:
        os.close(fd)
    return f"on (ABI {abi})"


def _allow(libc: ctypes.CDLL, ruleset_fd: int, path: str, handled: int) -> None:
    """Allow the handled (write) rights beneath `path` (file rights only for a non-directory)."""
    try:
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a path that does not exist cannot be written through anyway
    try:
        rights = handled if os.path.isdir(path) else handled & (_WRITE_FILE | _TRUNCATE)
        rule = _PathBeneath(rights, pfd)
        libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset_fd, _LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0)
    finally:
        os.close(pfd)


def apply_layers(*, isolate_network: bool, write_paths: Iterable[str] | None) -> dict[str, str]:
    """Apply the layers in the child; `write_paths` None: no Landlock (writes unconfined)."""
    layers = {"pdeathsig": _safe(set_pdeathsig)}
    layers["netns"] = _safe(_new_netns) if isolate_network else "off (not requested)"
    if isolate_network:
        # no network: Hugging Face libraries read their local caches instead of timing out on the Hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if write_paths is None:
        layers["landlock"] = "off (not requested)"
    else:
        paths = list(write_paths)
        layers["landlock"] = _safe(lambda: _landlock(paths))
    return layers


def _safe(fn) -> str:  # type: ignore[no-untyped-def]
    try:
        return fn()
    except (OSError, AttributeError, ValueError) as e:  # no libc, no syscall: the layer is off
        return f"off ({type(e).__name__})"


def describe_layers(layers: Mapping[str, str]) -> str:
    """`sandbox layers: rlimits, pdeathsig, netns=off (EPERM), landlock=on (ABI 3)`."""
    parts = ["rlimits"]
    pd = layers.get("pdeathsig", "off")
    parts.append("pdeathsig" if pd == "on" else f"pdeathsig={pd}")
    parts += [f"{k}={layers.get(k, 'off')}" for k in ("netns", "landlock")]
    return "sandbox layers: " + ", ".join(parts)
