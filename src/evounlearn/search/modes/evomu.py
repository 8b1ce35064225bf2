"""`--mode evomu`: the paper's schedule (10 -> top-5 x 5 -> top-3 x 10 -> top-5 x 3 = 80, scaled
down for a smaller budget), truncation selection within the latest generation, refine only, no
staging, no de-duplication beyond identical text, no repair."""

from __future__ import annotations

import logging

from ..archive import eligible, truncation
from ..config import scaled_evomu_schedule
from ..store import CandidateRow
from .base import SearchMode

log = logging.getLogger("evounlearn.search")


class EvoMUMode(SearchMode):
    name = "evomu"  # the default policy: no staging, no de-duplication, no repair

    def run_generations(self) -> None:
        d, e = self.driver, self.driver.cfg.evomu
        sched = scaled_evomu_schedule(d.cfg.budget, e.schedule, e.full_budget)
        d.db.set_meta("evomu_schedule", [list(x[:2]) + [x[2]] for x in sched])
        for g, (size, k, children) in enumerate(sched):
            if not d.generation_filled(g):
                if g == 0:
                    d.fill_initial(0, size)
                else:
                    self._fill(g, size, k, children)
                d.mark_filled(g)
            d.pump_generation(g)
            if d.budget_left() <= 0:
                return

    def _fill(self, g: int, size: int, k: int, children: list[int]) -> None:
        d = self.driver
        cands = d.db.candidates(kind="candidate")
        prev = max((c.generation for c in cands if eligible(c) and c.generation < g), default=None)
        parents = truncation(cands, prev, k) if prev is not None else []
        if not parents:
            log.warning("generation %d: no parent with a fitness in the previous generations; skipped", g)
            return
        if len(parents) < k:  # spread the generation's size over the parents there are
            base, extra = divmod(size, len(parents))
            children = [base + (1 if i < extra else 0) for i in range(len(parents))]
        for i, p in enumerate(parents):
            self._fill_children(g, p, children[i])

    def _fill_children(self, g: int, parent: CandidateRow, want: int) -> None:
        """`want` trained refinements of one parent in generation g."""
        d = self.driver

        def room() -> bool:
            return len(d.db.children_of(parent.id, g)) < want and d.budget_left() > 0

        tries = 0
        while room() and tries < d.cfg.max_proposals_per_slot:
            tries += 1
            got = len(d.db.children_of(parent.id, g))
            kreq = d.next_request_index(g)
            for cid in d._propose(g, kreq, d._request("refine", g, kreq, parents=[parent], n=want - got)):
                d.admit(cid, room)
