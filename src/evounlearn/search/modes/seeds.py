"""`--control seeds`: the literature seeds with tuned constants, no structural change. Generation 0
holds the offline proposer's seed trees (GA, GradDiff, NPO, SimNPO and the EvoMU-style templates;
the token-level ones too in the extended interface); every later generation asks one constant
tuning of each seed structure, best structure first, until the budget is spent. Tuning is the
offline proposer's own `tune` operator (`proposers/offline/tpe.py`): an Optuna TPE study per
structure over its constants, retain weight and epochs (1-10), fed with every evaluated point of
that structure, and log-normal jitter (epochs moved by one now and then) before a structure has
`tpe_min_points` points. Finalists and report seeds are the driver's, as in the search.

If the search cannot beat this at equal budget, its new structures add nothing over tuning the
known losses. The evolve baselines keep `default_epochs` (tuned baselines: `evounlearn tune`)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..archive import eligible, sort_ranked
from ..proposers import Proposal, ProposalRequest
from ..proposers.offline import OfflineProposer
from ..proposers.offline.render import render, tree_from_code
from ..proposers.offline.seed_trees import seed_trees
from ..proposers.offline.tpe import structure_key
from ..proposers.offline.tree import LossTree
from ..store import CandidateRow
from .base import ModeHost, ModePolicy, SearchMode
from .random import control_policy, control_proposer_config

if TYPE_CHECKING:
    from ..config import SearchConfig

log = logging.getLogger("evounlearn.search")


class SeedTunerProposer(OfflineProposer):
    """`initial`: the seed trees only (no random fill); `tune`: the offline proposer's TPE tuning."""

    name = "seed-tuner"

    def propose(self, request: ProposalRequest) -> list[Proposal]:
        if request.kind == "tune":
            return self._tune(request, random.Random(request.stable_seed("offline")))
        out = [Proposal(code=render(t, request.interface), operator=f"seed:{name}",
                        notes=f"literature seed {name} (control: seeds, tuned constants only)")
               for name, t in self.seed_list(request.interface) if self._ok(t, request.interface)]
        return out[: request.n]

    def seed_list(self, interface: str) -> list[tuple[str, LossTree]]:
        return seed_trees(interface if self.config.tokens else "faithful")


def _structure(c: CandidateRow) -> str | None:
    tree = tree_from_code(c.code or "")
    return structure_key(tree) if tree is not None else None


class SeedsMode(SearchMode):
    name = "seeds"

    def __init__(self, driver: ModeHost) -> None:
        super().__init__(driver)
        self.proposer = SeedTunerProposer(control_proposer_config(driver.cfg))
        self.keys = list(dict.fromkeys(structure_key(t) for _, t in self.proposer.seed_list(driver.cfg.interface)))

    @classmethod
    def policy(cls, cfg: SearchConfig) -> ModePolicy:
        return control_policy(cfg)

    def run_generations(self) -> None:
        d = self.driver
        g = 0
        while True:
            if not d.generation_filled(g):
                self._fill(g)
                d.mark_filled(g)
            d.pump_generation(g)
            if d.budget_left() <= 0:
                return
            if d.gen_trained(g) == 0:
                log.warning("seeds control: generation %d trained nothing; stopping", g)
                return
            g += 1

    def _fill(self, g: int) -> None:
        d = self.driver
        size = len(self.keys)
        target = min(size, d.budget_left() + d.gen_trained(g))

        def room() -> bool:
            return d.gen_trained(g) < target and d.budget_left() > 0

        d.admit_leftovers(g, room)
        if g == 0:
            k = d.next_request_index(g)
            for cid in d.propose(g, k, d.request("initial", g, k, n=size), skip_known=True,
                                  proposer=self.proposer):
                d.admit(cid, room)
            return
        for parent in self._parents():
            self._tune_one(g, parent, room)
            if not room():
                return

    def _tune_one(self, g: int, parent: CandidateRow, room: Callable[[], bool]) -> None:
        """One trained tuning of `parent`'s structure (retried on duplicates and rejections)."""
        d = self.driver
        before = d.gen_trained(g)
        for _ in range(d.cfg.max_proposals_per_slot):
            if not room() or d.gen_trained(g) > before:
                return
            k = d.next_request_index(g)
            for cid in d.propose(g, k, d.request("tune", g, k, parents=[parent]), proposer=self.proposer):
                d.admit(cid, room)

    def _parents(self) -> list[CandidateRow]:
        """Per seed structure, its best evaluated candidate (else its latest one); structures
        with a finite fitness first, best first, then the others in seed order."""
        best: dict[str, CandidateRow] = {}
        cands = self.driver.db.candidates(kind="candidate")
        for c in sort_ranked([c for c in cands if eligible(c)]):
            key = _structure(c)
            if key is not None:
                best.setdefault(key, c)
        latest: dict[str, CandidateRow] = {}
        for c in cands:
            key = _structure(c)
            if key is not None and c.trained and c.code:
                latest[key] = c
        ranked = [c for k, c in best.items() if k in self.keys]
        rest = [latest[k] for k in self.keys if k not in best and k in latest]
        return ranked + rest
