"""Each OS layer of a confined worker, tested on its own; skipped with the reason
where this kernel lacks it. The worker is confined as the search confines it (write_paths set)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from evounlearn.sandbox import IsolatedWorker
from evounlearn.sandbox.confine import landlock_abi
from tests import hostile_jobs

# trains a model or starts sandbox workers / Ray: not in the everyday `-m "not slow"` subset
pytestmark = pytest.mark.slow

ABI = landlock_abi()


@pytest.fixture
def confined(tmp_path: Path):
    secret = tmp_path / "ray-session"
    secret.mkdir()
    (secret / "token").write_text("s3cret-token")
    (tmp_path / "open.txt").write_text("public")
    w = IsolatedWorker(wall_limit_s=60, cpu_limit_s=60, memory_limit_mb=1024, write_paths=(),
                       trusted_prefixes=hostile_jobs.TRUSTED, hidden_paths=[str(secret)])
    w.start()
    yield w, tmp_path
    w.close()


def _run(w: IsolatedWorker, job: str, **kw: object) -> str:
    res = w.run(f"tests.hostile_jobs:{job}", kw)
    assert res.ok, res.error
    return str(res.value)


def test_every_layer_is_reported(confined) -> None:
    w, _ = confined
    assert {"pdeathsig", "netns", "landlock", "seccomp"} <= set(w.layers)


@pytest.mark.skipif(ABI < 6, reason=f"Landlock scopes need ABI >= 6, this kernel has {ABI}")
def test_signals_to_the_driver_are_scoped_out(confined) -> None:
    w, _ = confined
    assert "scopes" in w.layers["landlock"]
    assert _run(w, "try_kill", pid=os.getpid()).startswith("blocked")


@pytest.mark.skipif(ABI < 1, reason="no Landlock on this kernel")
def test_hidden_paths_cannot_be_read(confined) -> None:
    w, tmp = confined
    assert "reads" in w.layers["landlock"]
    assert _run(w, "try_read", path=str(tmp / "ray-session" / "token")).startswith("blocked")
    assert _run(w, "try_read", path=str(tmp / "open.txt")) == "read: public"  # other reads still work


def test_unix_sockets_cannot_be_connected(confined) -> None:
    w, tmp = confined
    if not w.layers.get("seccomp", "").startswith("on"):
        pytest.skip(f"seccomp filter unavailable: {w.layers.get('seccomp')}")
    path = str(tmp / "driver.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:  # the driver itself can connect
            probe.connect(path)
        assert _run(w, "try_unix", address=path).startswith("blocked")
    name = f"evounlearn-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind("\0" + name)
        server.listen(1)
        assert _run(w, "try_unix", address="@" + name).startswith("blocked")
