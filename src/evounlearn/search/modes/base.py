"""What every search mode is: a generation loop over the driver's shared steps."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ..config import SearchConfig
    from ..driver import SearchDriver


@dataclass(frozen=True)
class ModePolicy:
    """The driver-side switches a mode sets: staged evaluation, de-duplication, repairs."""

    stage1_epochs: int = 0  # 0 = no staged evaluation
    dedup: bool = False  # behavioural de-duplication by probe fingerprint
    repair_attempts: int = 0  # repair requests for a rejected proposal


class SearchMode(ABC):
    """One mode's generation loop; the driver calls `run_generations()` once per (resumed) run.

    It fills each generation through the driver (`fill_initial`, `admit`, `_request` /
    `_propose`, ...), pumps it (`pump_generation`), and marks it filled in the database
    (`mark_filled`) so that a resumed run does not fill it again."""

    name: ClassVar[str]

    def __init__(self, driver: SearchDriver) -> None:
        self.driver = driver

    @classmethod
    def policy(cls, cfg: SearchConfig) -> ModePolicy:
        return ModePolicy()

    @abstractmethod
    def run_generations(self) -> None:
        """Propose, admit and evaluate generations until the budget (or the schedule) is spent."""
