"""The Optuna side of a tune: importing Optuna (an optional extra, on first use), the seeded TPE
sampler, and the study's storage, RUN_DIR/tune.sqlite (study "tune").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ...errors import ConfigError

DB_NAME = "tune.sqlite"
STUDY_NAME = "tune"


def require_optuna() -> None:
    """A one-line ConfigError when Optuna is not installed (before anything is written)."""
    import_optuna()


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("evounlearn tune needs Optuna: pip install 'evounlearn[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def tpe_sampler(optuna: Any, seed: int) -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant_liar is marked experimental
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def json_ready(v: Any) -> Any:
    """Optuna stores attrs as JSON: -inf / nan become None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_ready(x) for k, x in v.items()}
    return v


def storage_url(run_dir: str | Path) -> str:
    return f"sqlite:///{(Path(run_dir) / DB_NAME).resolve()}"
