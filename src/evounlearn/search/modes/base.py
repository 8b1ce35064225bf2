"""What every search mode is: a generation loop over the driver's shared steps."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from ..config import SearchConfig
    from ..proposers import ProposalRequest, Proposer
    from ..store import CandidateRow, Store


class ModeHost(Protocol):
    """What a mode uses of the search driver (`driver.SearchDriver` implements it): the config, the
    store, and the shared steps of proposing, admitting and evaluating a generation."""

    cfg: SearchConfig
    db: Store

    def request(self, kind: str, g: int, k: int, parents: Sequence[CandidateRow] | None = None,
                n: int = 1, **extra: Any) -> ProposalRequest: ...
    def propose(self, g: int, slot: int, req: ProposalRequest, skip_known: bool = False,
                proposer: Proposer | None = None) -> list[int]: ...
    def admit(self, cid: int, room: Callable[[], bool]) -> bool: ...
    def admit_leftovers(self, g: int, room: Callable[[], bool]) -> None: ...
    def fill_initial(self, g: int, target: int) -> None: ...
    def pump_generation(self, g: int) -> None: ...
    def budget_left(self) -> int: ...
    def gen_trained(self, g: int) -> int: ...
    def generation_filled(self, g: int) -> bool: ...
    def mark_filled(self, g: int) -> None: ...
    def next_request_index(self, g: int) -> int: ...
    def ranked(self) -> list[CandidateRow]: ...
    def refresh(self, cid: int) -> CandidateRow: ...
    def pump_candidates(self, ids: Sequence[int]) -> None: ...


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

    def __init__(self, driver: ModeHost) -> None:
        self.driver = driver

    @classmethod
    def policy(cls, cfg: SearchConfig) -> ModePolicy:
        return ModePolicy()

    @abstractmethod
    def run_generations(self) -> None:
        """Propose, admit and evaluate generations until the budget (or the schedule) is spent."""
