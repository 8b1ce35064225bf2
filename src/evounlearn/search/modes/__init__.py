"""The search's modes: one generation loop per module, found by name (`SearchConfig.mode`).

A mode (`base.SearchMode`) decides what each generation proposes and from which parents; the
driver (`search.driver`) does everything else (target, baselines, validation, the evaluation
pump, finalists, outputs). Adding a mode = a `SearchMode` subclass + one entry in `MODES` (and
its name in `search.config.MODES`, which the config check uses; a control's name goes in
`search.config.CONTROLS` instead).
"""

from __future__ import annotations

from ...errors import ConfigError
from .base import ModePolicy, SearchMode
from .evomu import EvoMUMode
from .ours import OursMode
from .random import RandomMode
from .seeds import SeedsMode

__all__ = ["MODES", "EvoMUMode", "ModePolicy", "OursMode", "RandomMode", "SearchMode", "SeedsMode", "get_mode"]

# the controls (`control: random | seeds`) replace the mode's generation loop; the fitness stays the mode's
MODES: dict[str, type[SearchMode]] = {m.name: m for m in (OursMode, EvoMUMode, RandomMode, SeedsMode)}


def get_mode(name: str) -> type[SearchMode]:
    """The mode class registered under `name`."""
    if name not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {name!r}")
    return MODES[name]
