"""The proposer contract: a request for loss functions in, candidate sources out.

A proposer never runs candidate code: it only produces text. Validation (AST whitelist, probe
tensors) and execution belong to the sandbox.

Request kinds:
- "initial":   zero-shot losses for generation 0 (no parents);
- "refine":    mutate / improve `parents[0]`, shown with its metrics and training curve;
- "crossover": combine `parents[0]` and `parents[1]`;
- "tune":      keep the structure of `parents[0]`, change its numeric constants only;
- "repair":    fix a rejected candidate: `error` holds the rejection reason and the broken code.

A parent is a dict: {"code": str, "fitness": float, "metrics": dict, "loss_history": [float per
epoch], optional "id": int | str}. `Proposal.parents` lists the parents' ids (their position in
`request.parents` when they have no "id").
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...errors import ConfigError, EvoUnlearnError

KINDS = ("initial", "refine", "repair", "crossover", "tune")
INTERFACES = ("faithful", "extended")


class ProposerError(EvoUnlearnError):
    """A proposer could not produce an answer (e.g. the LLM server refused or kept failing)."""


@dataclass
class ProposalRequest:
    """What the search asks a proposer for."""

    kind: str = "initial"  # one of KINDS
    n: int = 1  # how many loss functions are wanted
    interface: str = "faithful"  # "faithful" | "extended"
    benchmark: str = "tofu"  # "tofu" | "muse" | "wmdp" | "generated" | ...
    parents: list[dict[str, Any]] = field(default_factory=list)
    # repair: {"reason": str, "code": str}; a plain string is taken as the reason, the broken code
    # then being parents[0]["code"].
    error: dict[str, Any] | str | None = None
    leaderboard: list[tuple[float, str]] = field(default_factory=list)  # (fitness, short code), ascending
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown proposal kind {self.kind!r} (known: {', '.join(KINDS)})")
        if self.interface not in INTERFACES:
            raise ConfigError(f"unknown loss interface {self.interface!r} (known: {', '.join(INTERFACES)})")
        if int(self.n) < 1:
            raise ConfigError(f"a proposal request needs n >= 1, got {self.n}")
        self.n = int(self.n)
        for i, p in enumerate(self.parents):
            if not isinstance(p, Mapping) or "code" not in p:
                raise ConfigError(f"parent {i} of the proposal request must be a dict with a 'code' key")
        if self.kind in ("refine", "tune", "crossover") and not self.parents:
            raise ConfigError(f"a {self.kind!r} request needs at least one parent")
        if self.kind == "repair" and not self.repair_info()[0]:
            raise ConfigError("a 'repair' request needs the broken code (error['code'] or parents[0])")

    def parent_ids(self, indices: list[int] | None = None) -> list[int | str]:
        """Ids of the parents at `indices` (all parents when None)."""
        idx = range(len(self.parents)) if indices is None else indices
        return [self.parents[i].get("id", i) for i in idx if i < len(self.parents)]

    def repair_info(self) -> tuple[str, str]:
        """(broken code, rejection reason) for a repair request."""
        code, reason = "", ""
        if isinstance(self.error, Mapping):
            code = str(self.error.get("code") or "")
            reason = str(self.error.get("reason") or self.error.get("error") or "")
        elif isinstance(self.error, str):
            reason = self.error
        if not code and self.parents:
            code = str(self.parents[0].get("code") or "")
        return code, reason

    def stable_seed(self, salt: str = "") -> int:
        """A seed derived from `seed`, the kind and the parents' code (stable across processes)."""
        h = hashlib.sha256()
        h.update(f"{self.seed}|{self.kind}|{self.interface}|{salt}".encode())
        for p in self.parents:
            h.update(b"\x00" + str(p.get("code", "")).encode())
        if self.kind == "repair":
            h.update(b"\x01" + self.repair_info()[0].encode())
        return int.from_bytes(h.digest()[:8], "big")


@dataclass
class Proposal:
    """One candidate: the source of ONE loss function named `loss_fn` (+ the helpers it calls)."""

    code: str
    prompt: str = ""
    raw_response: str = ""
    parents: list[int | str] = field(default_factory=list)
    operator: str = ""
    notes: str = ""


class Proposer(ABC):
    """Produces candidate loss functions for a request. Never executes candidate code.

    A subclass names its options dataclass in `config_class` (every field with a default) and
    takes one instance of it in `__init__`; `registry.make_proposer` fills it from a mapping.
    """

    name: str = "proposer"
    config_class: ClassVar[type]

    @abstractmethod
    def propose(self, request: ProposalRequest) -> list[Proposal]:
        """Return up to `request.n` proposals (fewer when the source gives fewer)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (a loaded model, a connection). Default: nothing."""
