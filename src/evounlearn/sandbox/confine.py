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
  (e.g. a search's run directory) and /dev/null. /tmp is NOT writable: the worker's TMPDIR is its
  scratch directory. Reads are allowed everywhere (torch, the benchmark data) EXCEPT the hidden
  paths (`hidden_paths`: Ray's session directory with its sockets and auth token, /tmp/ray and
  $RAY_TMPDIR/ray, and any the caller adds): Landlock only allows, so reads are allowed beneath
  every entry of each ancestor of a hidden path but the hidden one (entries of /tmp created
  after the worker started are not readable; the write paths are). With ABI >= 4, TCP bind and
  connect are refused too (a second net layer under `netns`, when the network is isolated);
  with ABI >= 6 the worker is scoped: it cannot signal a process outside its Landlock domain
  (`kill(driver_pid, 0)` is EPERM) nor connect to an abstract Unix socket outside it. Needs
  Linux >= 5.13 (Landlock ABI >= 1); the rights added by later ABIs (REFER 2, TRUNCATE 3) are
  handled when the kernel has them. Landlock cannot be lifted by the process once applied. The
  state names what holds, e.g. "on (ABI 7: writes, reads, tcp, scopes)";
- `seccomp` (with Landlock, x86_64 / aarch64): a filter that refuses `socket(AF_UNIX, ...)`:
  no pathname Unix socket (a driver's, Ray's raylet) can be connected, which neither the
  network namespace nor Landlock's rights (ABI <= 7) cover. The worker's pipe to the driver was
  made before the filter.

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

__all__ = ["apply_layers", "describe_layers", "hidden_paths", "landlock_abi", "set_pdeathsig"]

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
_READ_FILE = 1 << 2
_READ_DIR = 1 << 3
_NET_BIND_TCP = 1 << 0  # handled_access_net, ABI 4
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # scoped, ABI 6
_SCOPE_SIGNAL = 1 << 1


class _RulesetAttr(ctypes.Structure):
    """struct landlock_ruleset_attr (ABI 1: the first field, 4: two, 6: three)."""

    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


def hidden_paths(extra: Iterable[str] = ()) -> list[str]:
    """The paths a confined worker may not read: Ray's temporary directory (its session
    directories hold the raylet's sockets and the cluster's auth token) and `extra`."""
    roots = {os.path.join(os.environ.get("RAY_TMPDIR") or "/tmp", "ray"), "/tmp/ray"}
    return sorted({os.path.abspath(p) for p in [*roots, *extra]})


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


def _landlock(write_paths: Iterable[str], hidden: Iterable[str] = (), tcp: bool = False) -> str:
    abi = landlock_abi()
    if abi < 1:
        return "off (unsupported)"
    libc = _libc()
    writes = _WRITE_FILE | _REMOVE_DIR | _REMOVE_FILE | _MAKE_ALL
    writes |= _REFER if abi >= 2 else 0
    writes |= _TRUNCATE if abi >= 3 else 0
    hidden = [p for p in hidden if os.path.lexists(p)]
    reads = (_READ_FILE | _READ_DIR) if hidden else 0  # only handled when there is something to hide
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if tcp and abi >= 4 else 0
    scoped = (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0
    attr = _RulesetAttr(writes | reads, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    fd = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if fd < 0:
        return f"off ({_errname()})"
    try:
        paths = [*write_paths, os.devnull]
        for path in paths:
            _allow(libc, fd, path, writes | reads)
        if reads:
            _allow_reads_except(libc, fd, "/", [os.path.abspath(h) for h in hidden])
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return f"off (no_new_privs: {_errname()})"
        if libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, fd, 0) != 0:
            return f"off ({_errname()})"
    finally:
        os.close(fd)
    what = ["writes"] + (["reads"] if reads else []) + (["tcp"] if net else []) + (["scopes"] if scoped else [])
    return f"on (ABI {abi}: {', '.join(what)})"


def _allow(libc: ctypes.CDLL, ruleset_fd: int, path: str, handled: int) -> None:
    """Allow the handled rights beneath `path` (file rights only for a non-directory)."""
    try:
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a path that does not exist cannot be written through anyway
    try:
        rights = handled if os.path.isdir(path) else handled & (_WRITE_FILE | _TRUNCATE | _READ_FILE)
        rule = _PathBeneath(rights, pfd)
        libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset_fd, _LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0)
    finally:
        os.close(pfd)


def _allow_reads_except(libc: ctypes.CDLL, ruleset_fd: int, root: str, hidden: list[str]) -> None:
    """Allow reading beneath `root` except beneath the `hidden` paths: a rule for `root` when
    no hidden path is inside it, else one per entry of `root`, recursively."""
    if root in hidden:
        return
    inside = [h for h in hidden if h.startswith(root.rstrip("/") + "/")]
    if not inside:
        _allow(libc, ruleset_fd, root, _READ_FILE | _READ_DIR)
        return
    try:
        entries = os.listdir(root)
    except OSError:
        return
    for name in entries:
        path = os.path.join(root, name)
        if os.path.islink(path):  # a link is followed when the rule is made: its target decides
            continue
        _allow_reads_except(libc, ruleset_fd, path, inside)


# seccomp: refuse socket(AF_UNIX, ...) (BPF on struct seccomp_data {nr, arch, ip, args[6]})
_SECCOMP_MODE_FILTER = 2  # prctl(PR_SET_SECCOMP, ...)
_AUDIT_ARCH = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}  # (arch, socket's syscall number)
_AF_UNIX = 1


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _no_unix_sockets() -> str:
    arch = _AUDIT_ARCH.get(os.uname().machine)
    if arch is None:
        return f"off (no filter for {os.uname().machine})"
    audit, nr = arch
    ld, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    allow, eperm = 0x7FFF0000, 0x00050000 | errno.EPERM
    prog = [
        (ld, 0, 0, 4), (jeq, 0, 5, audit),  # another architecture: allow
        (ld, 0, 0, 0), (jeq, 0, 3, nr),  # not socket(): allow
        (ld, 0, 0, 16), (jeq, 0, 1, _AF_UNIX),  # socket(AF_UNIX, ...): EPERM
        (ret, 0, 0, eperm), (ret, 0, 0, allow),
    ]
    filters = (_SockFilter * len(prog))(*[_SockFilter(*f) for f in prog])
    fprog = _SockFprog(len(prog), filters)
    libc = _libc()
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return f"off (no_new_privs: {_errname()})"
    if libc.prctl(22, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP
        return f"off ({_errname()})"
    return "on (no AF_UNIX sockets)"


def apply_layers(*, isolate_network: bool, write_paths: Iterable[str] | None,
                 hide: Iterable[str] = ()) -> dict[str, str]:
    """Apply the layers in the child; `write_paths` None: no Landlock (writes unconfined) and no
    seccomp filter; `hide`: paths not to be read, besides `hidden_paths()`' defaults."""
    layers = {"pdeathsig": _safe(set_pdeathsig)}
    layers["netns"] = _safe(_new_netns) if isolate_network else "off (not requested)"
    if isolate_network:
        # no network: Hugging Face libraries read their local caches instead of timing out on the Hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if write_paths is None:
        layers["landlock"] = "off (not requested)"
        layers["seccomp"] = "off (not requested)"
    else:
        paths, hidden = list(write_paths), hidden_paths(hide)
        layers["landlock"] = _safe(lambda: _landlock(paths, hidden, tcp=isolate_network))
        layers["seccomp"] = _safe(_no_unix_sockets)
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
    parts += [f"{k}={layers.get(k, 'off')}" for k in ("netns", "landlock", "seccomp")]
    return "sandbox layers: " + ", ".join(parts)
