"""`--mode ours`: generation 0 of `ours.initial` zero-shot proposals, then generations of
`ours.per_generation` children: operator refine / crossover / tune, parents drawn from the archive
(elite over ALL generations: elitism) by rank with a bonus for few children; staged evaluation
when `ours.stage1_epochs` > 0 (stage 1 after that many epochs, promotion by rank among the stage-1
results so far; off in configs/evolve.yaml, which says why); behavioural de-duplication (probe
fingerprints); up to `ours.repair_attempts` repair requests for a rejected proposal with the
rejection reason. After each generation the best candidates are raced: re-run on more
search-part seeds (`ours.race_top`, `ours.race_seeds`; each re-run counts against the budget), and
candidates rank on the lower bound of their mean (`archive.lower_bound`).

A budget below twice `ours.initial` shrinks generation 0 to about half the budget (logged), so
that later generations still evolve something.
"""

from __future__ import annotations

import itertools
import logging
import random
from typing import TYPE_CHECKING

from ..archive import Archive, choose_operator, stable_seed
from .base import ModePolicy, SearchMode

if TYPE_CHECKING:
    from ..config import SearchConfig

log = logging.getLogger("evounlearn.search")


def initial_size(cfg: SearchConfig) -> int:
    """Generation 0's size: `ours.initial`, or about half the budget when the budget is below
    twice that (else the whole budget would go to zero-shot proposals and nothing would evolve)."""
    initial, budget = int(cfg.ours.initial), int(cfg.budget)
    if budget >= 2 * initial:
        return initial
    return max(1, min(initial, budget // 2))


class OursMode(SearchMode):
    name = "ours"

    @classmethod
    def policy(cls, cfg: SearchConfig) -> ModePolicy:
        o = cfg.ours
        return ModePolicy(stage1_epochs=max(0, int(o.stage1_epochs)), dedup=bool(o.dedup),
                          repair_attempts=max(0, int(o.repair_attempts)))

    def run_generations(self) -> None:
        d = self.driver
        g = 0
        while True:
            if not d.generation_filled(g):
                if g == 0:
                    d.fill_initial(0, self._initial_target())
                else:
                    self._fill(g)
                d.mark_filled(g)
            d.pump_generation(g)
            self._race(g)
            if d.budget_left() <= 0:
                return
            if d.gen_trained(g) == 0 and g > 0:
                log.warning("generation %d produced no trainable candidate; stopping", g)
                return
            g += 1

    def _race(self, g: int) -> None:
        """Re-run the best candidates on more search-part seeds before they parent or become
        finalists: while budget is left, every one of the `race_top` best (by the lower bound)
        with fewer than `race_seeds` runs gets its next seed; then re-rank (a candidate that falls
        out of the top stops racing, one that rises starts). Each re-run counts against the budget."""
        d, o = self.driver, self.driver.cfg.ours
        if o.race_top <= 0 or o.race_seeds <= 1:
            return
        while d.budget_left() > 0:
            k = max(1, int(d.cfg.train_seeds))  # race_seeds counts trainings: a run of k trainings is k
            short = [c for c in d.ranked()[: o.race_top] if (c.n_search or 0) * k < o.race_seeds]
            if not short:
                return
            queued = []
            for c in short[: d.budget_left()]:
                used = {e.seed for e in d.db.evaluations_of(c.id, part="search")}
                seed = next(s for s in itertools.count(d.cfg.seed) if s not in used)
                d.db.add_evaluation(c.id, "search", seed, epochs=c.epochs, priority=0)
                d.refresh(c.id)
                queued.append(c.id)
            log.info("generation %d: racing %s on one more seed each (budget left %d)", g,
                     ", ".join(f"#{i}" for i in queued), d.budget_left())
            d.pump_candidates(queued)

    def _initial_target(self) -> int:
        cfg = self.driver.cfg
        size = initial_size(cfg)
        wanted = min(cfg.ours.initial, cfg.budget)
        if size < wanted:
            log.info("budget %d: generation 0 shrunk from %d to %d so that later generations get %d candidates",
                     cfg.budget, cfg.ours.initial, size, cfg.budget - size)
        return size

    def _fill(self, g: int) -> None:
        d, o = self.driver, self.driver.cfg.ours
        target = min(o.per_generation, d.budget_left() + d.gen_trained(g))

        def room() -> bool:
            return d.gen_trained(g) < target and d.budget_left() > 0

        d.admit_leftovers(g, room)
        tries = 0
        while room() and tries < target * d.cfg.max_proposals_per_slot:
            tries += 1
            for cid in self._propose_one(g):
                d.admit(cid, room)

    def _propose_one(self, g: int) -> list[int]:
        """One request of generation g: an operator on archive parents (initial while it is empty)."""
        d, o = self.driver, self.driver.cfg.ours
        k = d.next_request_index(g)
        rng = random.Random(stable_seed(d.cfg.seed, "ours", g, k))
        archive = Archive.build(d.db.candidates(kind="candidate"), o.archive_size, o.half_life, o.child_penalty)
        if len(archive) == 0:
            req = d.request("initial", g, k, n=1 + d.db.original_proposal_count())
            ids = d.propose(g, k, req, skip_known=True)
            for extra in ids[1:]:
                d.db.update_candidate(extra, status="unused", error="not needed")
            return ids[:1]
        op = choose_operator(rng, o.p_refine, o.p_crossover, o.p_tune, len(archive))
        parents = archive.choose(rng, 2 if op == "crossover" else 1)
        if op == "crossover" and len(parents) < 2:
            op = "refine"
        return d.propose(g, k, d.request(op, g, k, parents=parents))
