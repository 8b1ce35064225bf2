"""The offline default proposer: evolution of loss expression trees, no LLM.

Request kinds map to operators (all deterministic from `request.seed` and the parents' code):
- initial:   the literature seeds (GA, GradDiff, NPO, SimNPO, then EvoMU-style margin / hinge /
             softplus / focal / bounded / ratio templates), then random variants of them;
- refine:    a mutation of parents[0]. When its metrics (read against `request.reference`,
             `diagnosis`) show under-forgetting, over-forgetting or utility loss, most children
             are directed mutations that move the way the finding calls for (`directed`; the
             notes say why, e.g. "directed: under-forgetting (forget ROUGE 0.61 vs holdout 0.18)
             -> retain weight 1.0 -> 0.5"); the others (and all children of a parent without
             findings) are random: subtree / point mutation, constant tuning, a retain-weight or
             an epochs change;
- crossover: crossover of parents[0] and parents[1] (term swap or subtree graft);
- tune:      constants only (and the epochs gene): asked from a TPE study fed with the evaluated
             points of the parent's structure (`tpe`), random jitter without optuna or points;
- repair:    a fresh (subtree / point) mutation of the broken candidate.

A parent whose code carries no (trusted) `# tree:` comment, e.g. one written by an LLM, is a
leaf-level parent: only its numeric constants can be tuned (AST constant perturbation, keeping the
source text), and, when its metrics call for a direction, its epochs docstring moved that way. In the extended interface the trees may hold token-level terms (masked means of
per-token expressions: UnDIAL-like targets, focal / entropy weights, reference-confidence masks,
WGA's p^beta and SatImp's p^b1 (1-p)^b2 weights, CE-U's true-token-masked target).
Every tree is checked numerically before it is proposed (`interpret.check_tree`: finite
scalar, increasing in the forget log-probs, decreasing in the retain log-probs); code is never
executed here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..base import Proposal, ProposalRequest, Proposer
from . import tpe
from .code_constants import perturb_code_constants, shift_code_epochs
from .diagnosis import UNDER, Diagnosis, diagnose
from .directed import directed_child
from .interpret import check_tree
from .operators import (
    change_epochs,
    change_retain_weight,
    crossover,
    perturb_constants,
    point_mutation,
    random_tree,
    subtree_mutation,
)
from .render import render, tree_from_code
from .seed_trees import seed_trees
from .tree import LossTree, structure_problem, uses_tokens


@dataclass
class OfflineConfig:
    sigma: float = 0.35  # log-normal std of constant tuning
    max_depth: int = 3  # depth of random subtrees
    max_attempts: int = 40  # tries per wanted proposal before giving up
    check: bool = True  # numeric self-check of every tree before proposing it
    include_seeds: bool = True  # initial requests start with the literature seeds
    # share of an initial request that is random trees and random variants of the seeds, not the
    # literature seeds themselves: generation 0 explores from the start instead of being exactly
    # the 10 known losses (0 = seeds first, as many as asked)
    initial_random: float = 0.3
    directed_share: float = 0.75  # share of a refine's children that follow the parent's metrics
    tpe_min_points: int = 2  # evaluated points of a structure before TPE replaces jitter
    # a parent's gap to the holdout level (ROUGE / probability, absolute) below which a directed
    # mutation reads it as noise: about 2 x the metrics' sd over training seeds (noise.json)
    level_margin: float = 0.05
    tokens: bool = True  # token-level terms in the extended interface


class OfflineProposer(Proposer):
    """Mutation and crossover of loss expression trees over the same primitives as the LLM."""

    name = "offline"
    config_class = OfflineConfig

    def __init__(self, config: OfflineConfig | None = None) -> None:
        self.config = config or OfflineConfig()

    # -- public -------------------------------------------------------------------------------

    def propose(self, request: ProposalRequest) -> list[Proposal]:
        rng = random.Random(request.stable_seed("offline"))
        handler = {
            "initial": self._initial,
            "refine": self._refine,
            "crossover": self._crossover,
            "tune": self._tune,
            "repair": self._repair,
        }[request.kind]
        return handler(request, rng)

    # -- helpers ------------------------------------------------------------------------------

    def _ok(self, tree: LossTree, interface: str = "faithful") -> bool:
        if structure_problem(tree) is not None:
            return False
        if interface != "extended" and uses_tokens(tree):
            return False
        return not self.config.check or check_tree(tree) is None

    def _tokens(self, request: ProposalRequest) -> bool:
        return self.config.tokens and request.interface == "extended"

    def _collect(
        self,
        request: ProposalRequest,
        make: Callable[[random.Random], tuple[LossTree | None, str, str, str | None]],
        rng: random.Random,
        parent_idx: list[int],
        out: list[Proposal] | None = None,
    ) -> list[Proposal]:
        """Call `make(rng) -> (tree, operator, notes, code)` until n distinct proposals exist."""
        out = out if out is not None else []
        seen = {p.code for p in out} | {str(p.get("code", "")) for p in request.parents}
        if request.kind == "repair":
            seen.add(request.repair_info()[0])
        attempts = 0
        budget = self.config.max_attempts * request.n
        while len(out) < request.n and attempts < budget:
            attempts += 1
            tree, operator, notes, code = make(rng)
            if tree is not None:
                if not self._ok(tree, request.interface):
                    continue
                code = render(tree, request.interface)
            if not code or code in seen:
                continue
            seen.add(code)
            out.append(
                Proposal(code=code, parents=request.parent_ids(parent_idx), operator=operator, notes=notes)
            )
        return out

    def _mutate(
        self, tree: LossTree, rng: random.Random, kinds: tuple[str, ...], tokens: bool = False
    ) -> tuple[LossTree, str]:
        op = rng.choice(kinds)
        if op == "subtree_mutation":
            depth = max(1, self.config.max_depth - 1)
            return subtree_mutation(tree, rng, max_depth=depth, tokens=tokens), op
        if op == "point_mutation":
            return point_mutation(tree, rng), op
        if op == "retain_weight":
            return change_retain_weight(tree, rng), op
        if op == "epochs":
            return change_epochs(tree, rng), op
        return perturb_constants(tree, rng, self.config.sigma), "tune_constants"

    def _tune_code(self, code: str, rng: random.Random) -> tuple[None, str, str, str | None]:
        new = perturb_code_constants(code, rng, self.config.sigma)
        return None, "tune_ast", "AST constant perturbation of a parent without a tree", new

    # -- operators ----------------------------------------------------------------------------

    def _initial(self, request: ProposalRequest, rng: random.Random) -> list[Proposal]:
        out: list[Proposal] = []
        tokens = self._tokens(request)
        seed_list = seed_trees(request.interface if tokens else "faithful")
        # the request counts the proposals made so far (n = made + wanted): the share of seeds is
        # of the whole initial population, so a resumed or repeated request keeps the same mix
        n_seeds = request.n - int(round(min(1.0, max(0.0, self.config.initial_random)) * request.n))
        if self.config.include_seeds:
            for name, tree in seed_list:
                if len(out) >= max(1, n_seeds):
                    break
                if self._ok(tree, request.interface):
                    out.append(
                        Proposal(
                            code=render(tree, request.interface),
                            operator=f"seed:{name}",
                            notes=f"literature seed {name}",
                        )
                    )
        seeds = [t for _, t in seed_list]

        def make(r: random.Random) -> tuple[LossTree | None, str, str, str | None]:
            if r.random() < 0.5:
                return random_tree(r, self.config.max_depth, tokens), "random", "random tree", None
            base = r.choice(seeds)
            tree, op = self._mutate(base, r, ("subtree_mutation", "point_mutation", "tune_constants"), tokens)
            return tree, f"random:{op}", "random variant of a literature seed", None

        return self._collect(request, make, rng, [], out)

    def _directed_code(self, code: str, diagnosis: Diagnosis, rng: random.Random) -> tuple[None, str, str, str | None]:
        """A parent without a tree: its epochs docstring moved one epoch the way the metrics call
        for (more when under-forgetting, fewer otherwise), constants jittered; plain constant
        tuning when it has no epochs docstring."""
        delta = 1 if diagnosis.primary == UNDER else -1
        shifted = shift_code_epochs(code, delta) if rng.random() < self.config.directed_share else None
        if shifted is None:
            return self._tune_code(code, rng)
        new, change = shifted
        new = perturb_code_constants(new, rng, self.config.sigma, epochs_p=0.0)
        return None, "directed:tune_ast", f"directed: {diagnosis.describe()} -> {change}", new

    def _refine(self, request: ProposalRequest, rng: random.Random) -> list[Proposal]:
        code = str(request.parents[0].get("code", ""))
        tree = tree_from_code(code)
        if tree is None:
            found = diagnose(request.parents[0].get("metrics"), request.reference, self.config.level_margin)
            if found.primary is not None:
                return self._collect(request, lambda r: self._directed_code(code, found, r), rng, [0])
            return self._collect(request, lambda r: self._tune_code(code, r), rng, [0])
        kinds = (
            "subtree_mutation",
            "subtree_mutation",
            "point_mutation",
            "tune_constants",
            "retain_weight",
            "epochs",
        )
        tokens = self._tokens(request)
        diagnosis = diagnose(request.parents[0].get("metrics"), request.reference, self.config.level_margin)
        turn = [0]  # which directed action comes first next: the children cycle through them

        def make(r: random.Random) -> tuple[LossTree | None, str, str, str | None]:
            if diagnosis.primary is not None and r.random() < self.config.directed_share:
                directed = directed_child(tree, diagnosis, r, first=turn[0])
                turn[0] += 1
                if directed is not None:
                    child, action, change = directed
                    return child, f"directed:{action}", f"directed: {diagnosis.describe()} -> {change}", None
            child, op = self._mutate(tree, r, kinds, tokens)
            return child, op, f"{op} of the parent", None

        return self._collect(request, make, rng, [0])

    def _crossover(self, request: ProposalRequest, rng: random.Random) -> list[Proposal]:
        trees = [tree_from_code(str(p.get("code", ""))) for p in request.parents[:2]]
        if len(trees) == 2 and trees[0] is not None and trees[1] is not None:
            a, b = trees

            def make(r: random.Random) -> tuple[LossTree | None, str, str, str | None]:
                x, y = (a, b) if r.random() < 0.5 else (b, a)
                return crossover(x, y, r), "crossover", "crossover of two trees", None

            return self._collect(request, make, rng, [0, 1])
        # Without two trees: mutate the parent that has one, else tune the first one's constants.
        present = [(i, t) for i, t in enumerate(trees) if t is not None]
        if present:
            idx, only = present[0]

            def make_one(r: random.Random) -> tuple[LossTree | None, str, str, str | None]:
                child, op = self._mutate(only, r, ("subtree_mutation", "point_mutation", "tune_constants"))
                return child, op, "crossover fallback: only one parent has a tree", None

            return self._collect(request, make_one, rng, [idx])
        code = str(request.parents[0].get("code", ""))
        return self._collect(request, lambda r: self._tune_code(code, r), rng, [0])

    def _tune(self, request: ProposalRequest, rng: random.Random) -> list[Proposal]:
        code = str(request.parents[0].get("code", ""))
        tree = tree_from_code(code)
        if tree is None:
            return self._collect(request, lambda r: self._tune_code(code, r), rng, [0])
        history = tpe.structure_history(tree, _evaluated_points(request))
        asked = tpe.propose(tree, history, request.n, rng.getrandbits(31), self.config.tpe_min_points)
        note = f"TPE over {len(history)} evaluated points of this structure (best fitness {tpe.best_of(history)})"

        def make_tpe(r: random.Random) -> tuple[LossTree | None, str, str, str | None]:
            child = next(asked, None)
            if child is not None:
                return child, "tune_tpe", note, None
            return make(r)  # optuna missing, too few points, or its proposals used up

        def make(r: random.Random) -> tuple[LossTree | None, str, str, str | None]:
            return (
                perturb_constants(tree, r, self.config.sigma),
                "tune_constants",
                "constants tuned",
                None,
            )

        return self._collect(request, make_tpe, rng, [0])

    def _repair(self, request: ProposalRequest, rng: random.Random) -> list[Proposal]:
        broken, reason = request.repair_info()
        tree = tree_from_code(broken)
        idx = [0] if request.parents else []
        if tree is None and request.parents:
            tree = tree_from_code(str(request.parents[0].get("code", "")))
        note = f"repair ({reason.strip()[:80]})" if reason else "repair"
        if tree is not None:
            base = tree

            def make(r: random.Random) -> tuple[LossTree | None, str, str, str | None]:
                child, op = self._mutate(base, r, ("subtree_mutation", "point_mutation"), self._tokens(request))
                return child, f"repair:{op}", note, None

            return self._collect(request, make, rng, idx)
        # Foreign broken code cannot be repaired without an LLM: propose a fresh seed variant.
        seeds = [t for _, t in seed_trees()]

        def make_fresh(r: random.Random) -> tuple[LossTree | None, str, str, str | None]:
            child, op = self._mutate(
                r.choice(seeds), r, ("subtree_mutation", "point_mutation", "tune_constants")
            )
            return child, f"repair:fresh_{op}", note + "; the broken code has no tree, fresh variant", None

        return self._collect(request, make_fresh, rng, idx)


def _evaluated_points(request: ProposalRequest) -> list[dict[str, Any]]:
    """Every {code, fitness} the request shows: parents, history, leaderboard (a leaderboard entry
    whose code was shortened carries no valid tree and is skipped later)."""
    points: list[dict[str, Any]] = [dict(p) for p in request.parents]
    points += [dict(h) for h in request.history if isinstance(h, dict)]
    points += [{"code": code, "fitness": fit} for fit, code in request.leaderboard]
    return points
