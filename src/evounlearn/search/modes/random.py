"""`--control random`: the search's null hypothesis. `budget` random trees of the offline grammar
(`tree.random_tree`, the same primitives, interface and epochs range 1-10 the search draws from),
all in generation 0, with no selection, no parents and no literature seeds; finalists and report
seeds exactly as the search (the driver's). If the search cannot beat this at equal budget, its
selection adds nothing.

Epochs are a gene of every random tree (uniform 1-10, as the search's initial random trees), so
this arm searches them as the search does; the evolve baselines keep `default_epochs` (tuned
baselines come from `evounlearn tune --method NAME`)."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

from ..proposers import Proposal, ProposalRequest
from ..proposers.offline import OfflineProposer
from ..proposers.offline.operators import random_tree
from ..proposers.offline.proposer import OfflineConfig
from ..proposers.offline.tree import LossTree
from .base import ModeHost, ModePolicy, SearchMode

if TYPE_CHECKING:
    from ..config import SearchConfig

log = logging.getLogger("evounlearn.search")


def control_proposer_config(cfg: SearchConfig) -> OfflineConfig:
    """The offline proposer's options of this search (its `proposer` section when that is the
    offline proposer, else the defaults): the controls draw from the same grammar as the search."""
    section = dict(cfg.proposer or {})
    if section.pop("kind", "offline") != "offline":
        return OfflineConfig()
    known = set(OfflineConfig.__dataclass_fields__)
    return OfflineConfig(**{k: v for k, v in section.items() if k in known})


def control_policy(cfg: SearchConfig) -> ModePolicy:
    """The controls' driver switches: the search's de-duplication (a behavioural twin would waste a
    training in either arm), no staged evaluation and no repair (both steer by results)."""
    return ModePolicy(stage1_epochs=0, dedup=bool(cfg.ours.dedup), repair_attempts=0)


class RandomTreeProposer(OfflineProposer):
    """Answers every request with fresh random trees (checked as the offline proposer checks its
    own: structure, monotonicity on probe tensors); parents, seeds and metrics are ignored."""

    name = "random-trees"

    def propose(self, request: ProposalRequest) -> list[Proposal]:
        tokens = self._tokens(request)
        depth = self.config.max_depth

        def make(r: random.Random) -> tuple[LossTree, str, str, None]:
            return random_tree(r, depth, tokens), "random", "random tree (control: no selection)", None

        return self._collect(request, make, random.Random(request.stable_seed("random-control")), [])


class RandomMode(SearchMode):
    name = "random"

    def __init__(self, driver: ModeHost) -> None:
        super().__init__(driver)
        self.proposer = RandomTreeProposer(control_proposer_config(driver.cfg))

    @classmethod
    def policy(cls, cfg: SearchConfig) -> ModePolicy:
        return control_policy(cfg)

    def run_generations(self) -> None:
        """One generation of `budget` random trees (refilled on a resume with a larger budget)."""
        d = self.driver

        def room() -> bool:
            return d.budget_left() > 0

        d.admit_leftovers(0, room)
        tries = 0
        while room() and tries < d.cfg.budget * d.cfg.max_proposals_per_slot:
            tries += 1
            k = d.next_request_index(0)
            for cid in d.propose(0, k, d.request("initial", 0, k, n=1), proposer=self.proposer):
                d.admit(cid, room)
        if room():
            log.warning("random control: only %d of %d candidates could be drawn", d.db.trained_count(),
                        d.cfg.budget)
        d.mark_filled(0)
        d.pump_generation(0)
