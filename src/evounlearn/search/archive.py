"""Selection logic of the search, pure functions over `store.CandidateRow`s (no I/O).

- `rank_key` / `sort_ranked`: candidates that pass the utility floor first, then by fitness;
  failed (-inf) last. The score is `fitness.rank_score`, stored as `score_search`.
- `Archive`: the elite of every generation so far (elitism: the best candidate is never lost to a
  bad generation) with parent choice weighted by rank and a bonus for parents with few children:
  `w = 0.5 ** (rank / half_life) / (1 + child_penalty * children)`.
- `truncation(...)`: the EvoMU paper's selection, the top-k of the latest generation only.
- `lower_bound(mean, n, scale)`: the ranking value of a candidate run on n seeds (mean minus
  scale / sqrt(n)), so that selection favours what is confirmed over what is lucky;
- `stable_seed(...)`: a seed derived from any values (reproducible random choices on resume).
- `stage_cutoff(...)`: the promotion threshold of staged evaluation, the score at the top
  `fraction` of the stage-1 scores seen so far (None while fewer than `min_history`).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .store import CandidateRow

Record = CandidateRow


def score_of(c: Record) -> float:
    return float(c.score_search) if c.score_search is not None else float("-inf")


def eligible(c: Record) -> bool:
    """Trained to full length on the search part with a finite fitness."""
    f = c.fitness_search
    return (c.kind == "candidate" and c.status == "done" and f is not None
            and math.isfinite(float(f)) and (c.stage or 0) != 1)  # 1 = stopped at stage 1


def sort_ranked(cands: Iterable[Record]) -> list[Record]:
    """Best first: by score (floor-aware fitness), ties broken by the earlier id."""
    return sorted(cands, key=lambda c: (-score_of(c), c.id))


def children_counts(cands: Iterable[Record]) -> dict[int, int]:
    """id -> number of proposals that name it as a parent (repairs count for the original)."""
    out: dict[int, int] = {}
    for c in cands:
        for p in c.parents:
            out[p] = out.get(p, 0) + 1
    return out


@dataclass
class Archive:
    """The elite over all generations, with weighted parent choice."""

    members: list[Record]
    children: dict[int, int]
    half_life: float = 2.0
    child_penalty: float = 1.0

    @classmethod
    def build(cls, cands: Sequence[Record], size: int = 16, half_life: float = 2.0,
              child_penalty: float = 1.0) -> Archive:
        elite = sort_ranked([c for c in cands if eligible(c)])[: max(1, size)]
        return cls(elite, children_counts(cands), half_life, child_penalty)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def best(self) -> Record | None:
        return self.members[0] if self.members else None

    def weights(self) -> list[float]:
        return [
            0.5 ** (rank / max(1e-9, self.half_life)) / (1.0 + self.child_penalty * self.children.get(c.id, 0))
            for rank, c in enumerate(self.members)
        ]

    def choose(self, rng: random.Random, k: int = 1) -> list[Record]:
        """k distinct parents (fewer when the archive is smaller), drawn by weight."""
        pool = list(self.members)
        w = self.weights()
        out: list[Record] = []
        while pool and len(out) < k:
            i = rng.choices(range(len(pool)), weights=w)[0]
            out.append(pool.pop(i))
            w.pop(i)
        return out


def truncation(cands: Sequence[Record], generation: int, k: int) -> list[Record]:
    """EvoMU: the top-k of `generation` only (no elitism across generations)."""
    return sort_ranked([c for c in cands if c.generation == generation and eligible(c)])[:k]


def lower_bound(mean: float, n: int, scale: float) -> float:
    """A candidate's ranking value from the mean of its n search-part trainings (runs x
    `train_seeds`): `mean - scale / sqrt(n)`, with scale = z x one training's sd (the noise
    datasheet's `single_training_sd`, not the
    candidate's own: 1-3 runs cannot estimate it). A lucky single draw ranks below an equal mean
    confirmed on three seeds, so a re-run elite is not displaced by the noise of a newcomer.
    scale 0 = the mean."""
    if n < 1 or scale <= 0 or not math.isfinite(mean):
        return mean
    return mean - scale / math.sqrt(n)


def stage_cutoff(scores: Sequence[float], fraction: float = 0.5, min_history: int = 4) -> float | None:
    """The lowest score still inside the top `fraction` of the stage-1 scores seen so far."""
    vals = sorted((s for s in scores if s is not None and math.isfinite(s)), reverse=True)
    if len(vals) < max(1, min_history):
        return None
    keep = max(1, math.ceil(len(vals) * min(1.0, max(0.0, fraction))))
    return vals[keep - 1]


def choose_operator(rng: random.Random, p_refine: float, p_crossover: float, p_tune: float,
                    archive_size: int) -> str:
    ops = [("refine", p_refine), ("crossover", p_crossover if archive_size >= 2 else 0.0), ("tune", p_tune)]
    total = sum(max(0.0, p) for _, p in ops)
    if total <= 0:
        return "refine"
    r = rng.random() * total
    for name, p in ops:
        r -= max(0.0, p)
        if r < 0:
            return name
    return ops[-1][0]


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' text (the same on every run and resume)."""
    h = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1
