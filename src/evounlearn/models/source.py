"""Is a `--model` there? A torch-free check, in well under two seconds, before anything is
written: a local folder must exist and hold a model; a Hub id must be in the local Hugging Face
cache, or the Hub must be reachable (one short connection attempt, no transformers retries)."""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ModelError

#: seconds one connection attempt to the Hub may take (DNS included)
HUB_PROBE_SECONDS = 1.0
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_OFF = ("1", "true", "yes", "on")


def looks_like_path(name: str) -> bool:
    """A name that can only be a local path: absolute, `./`, `~`, more than one `/`, not a valid
    Hub id, or `dir/x` where `dir` is a local folder (`runs/typo`)."""
    if name.startswith(("/", ".", "~")) or "\\" in name or name.endswith("/"):
        return True
    if not _HUB_ID.fullmatch(name) or "--" in name or ".." in name:
        return True
    return "/" in name and Path(name.split("/", 1)[0]).is_dir()


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def in_hub_cache(repo_id: str) -> bool:
    """A snapshot of `repo_id` with a config.json is in the local hub cache."""
    folder = hub_cache_dir() / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    try:
        return any((s / "config.json").exists() for s in folder.iterdir())
    except OSError:
        return False


def hub_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in _OFF for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """One TCP connection to the Hub's endpoint within `timeout` seconds (DNS included: the
    attempt runs in a daemon thread, so that a hanging resolver cannot hold the command)."""
    url = urlparse(hub_endpoint())
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def check_model_source(name: str, what: str = "--model") -> None:
    """Raise a one-line ModelError unless `name` is a local model folder, a Hub id in the local
    cache, or a Hub id while the Hub is reachable (and not switched off by HF_HUB_OFFLINE)."""
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelError(f"model path {name} ({what}) is a file, not a model folder")
        if not any((p / f).is_file() for f in ("config.json", "adapter_config.json")):
            raise ModelError(f"model path {name} ({what}) holds no model (no config.json)")
        return
    if looks_like_path(name):
        raise ModelError(f"model path {name} ({what}) does not exist")
    if in_hub_cache(name):
        return
    if hub_offline():
        raise ModelError(f"model {name} ({what}) is neither a local folder nor in the Hugging Face cache "
                         f"({hub_cache_dir()}), and HF_HUB_OFFLINE is set")
    if not hub_reachable():
        raise ModelError(f"model {name} ({what}) is neither a local folder nor in the Hugging Face cache "
                         f"({hub_cache_dir()}), and the Hub ({hub_endpoint()}) is not reachable")
