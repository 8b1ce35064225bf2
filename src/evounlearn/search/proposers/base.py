"""The proposer contract: a request for loss functions in, candidate sources out.

A proposer never runs candidate code: it only produces text. Validation (AST whitelist, probe
tensors) and execution belong to the sandbox.

Request kinds:
- "initial":   zero-shot losses for generation 0 (no parents);
- "refine":    mutate / improve `parents[0]`, shown with its metrics and training curve;
- "crossover": combine `parents[0]` and `parents[1]`;
- "tune":      keep the structure of `parents[0]`, change its numeric constants only;
- "repair":    fix a rejected candidate: `error` holds the rejection reason and the broken code
               (the code may be empty when the reply it came from held no function).

A parent is a dict: {"code": str, "fitness": float, "metrics": dict, "loss_history": [float per
epoch], optional "id": int | str}. `Proposal.parents` lists the parents' ids (their position in
`request.parents` when they have no "id").

`request.reference` (optional) holds the reference metric levels of the run (target, retain
oracle, holdout), against which a parent's metrics say under- or over-forgetting; `request.history`
(optional) lists evaluated candidates as {"code": str, "fitness": float} for model-based tuning.

`request.run` states how every candidate is trained (full fine-tuning or LoRA, default epochs,
batch size, learning rate), so prompts describe the run as it is. A `Proposal` with an `error`
and no code stands for a reply that held no usable function: the driver records it as rejected
with that reason, and the repair path sends the reason back.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...errors import ConfigError, EvoUnlearnError

KINDS = ("initial", "refine", "repair", "crossover", "tune")
INTERFACES = ("faithful", "extended")


NO_FUNCTION = "no Python function found in the reply"


class ProposerError(EvoUnlearnError):
    """A proposer could not produce an answer (e.g. the LLM server refused or kept failing)."""


@dataclass(frozen=True)
class RunSettings:
    """How each candidate loss is trained; the prompts state these as they are.

    The defaults are `training.TrainConfig`'s (not imported here: proposers stay free of torch).
    """

    lora: bool = False  # False: all weights are fine-tuned
    lora_r: int = 8
    epochs: int = 5  # for a loss that declares no epochs
    batch_size: int = 8  # forget examples per step (paired with as many retain examples)
    lr: float = 1e-4
    optimizer: str = "AdamW"

    @classmethod
    def from_train(cls, train: Mapping[str, Any] | None, epochs: int) -> RunSettings:
        """The settings of a run whose `unlearn.train` section is `train` (training.TrainConfig
        fields; missing ones keep their defaults, which are TrainConfig's) and whose losses
        without an epochs docstring train `epochs` epochs."""
        t = dict(train) if isinstance(train, Mapping) else {}
        base = cls()
        return cls(
            lora=bool(t.get("lora", base.lora)),
            lora_r=int(t.get("lora_r", base.lora_r)),
            epochs=int(epochs),
            batch_size=int(t.get("batch_size", base.batch_size)),
            lr=float(t.get("lr", base.lr)),
        )

    def describe(self) -> str:
        """One phrase for the prompts, e.g. "full fine-tuning (all weights), AdamW, learning rate 0.0001, ..."."""
        what = (
            f"a fresh LoRA adapter of rank {self.lora_r} (the base weights stay frozen)"
            if self.lora
            else "full fine-tuning (all weights)"
        )
        return (
            f"{what}, {self.optimizer}, learning rate {self.lr:g}, batches of {self.batch_size} forget "
            f"and {self.batch_size} retain examples, {self.epochs} epochs when a loss declares none"
        )


def metric_value(summary: Mapping[str, Any] | None, key: str) -> float | None:
    """A finite float from a metric summary (a flat value or an {"agg": value} entry), else None."""
    if not isinstance(summary, Mapping):
        return None
    v = summary.get(key)
    if isinstance(v, Mapping):
        v = v.get("agg")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


@dataclass(frozen=True)
class ReferenceLevels:
    """Reference metric levels a candidate's metrics are read against; every field optional.

    target_*: the model before unlearning; oracle_*: the retain-only model (never saw the forget
    set); holdout_*: the target on held-out data of the forget distribution (the level a
    forgotten set should fall to)."""

    target_utility: float | None = None
    target_forget_rouge: float | None = None
    target_forget_prob: float | None = None
    oracle_forget_rouge: float | None = None
    oracle_forget_prob: float | None = None
    holdout_rouge: float | None = None
    holdout_prob: float | None = None
    utility_key: str = "model_utility"  # the candidate metric read against target_utility

    @classmethod
    def from_target_info(
        cls, info: Mapping[str, Any], part: str = "search", utility_key: str = "model_utility"
    ) -> ReferenceLevels:
        """From a `search.candidate.target_info` dict: target[part]["summary"], retain[part]["summary"]
        and target_utility (missing keys stay None); `utility_key`: the benchmark's utility metric."""
        target = ((info.get("target") or {}).get(part) or {}).get("summary")
        oracle = ((info.get("retain") or {}).get(part) or {}).get("summary")
        utility = metric_value(info, "target_utility")
        return cls(
            target_utility=utility if utility is not None else metric_value(target, utility_key),
            target_forget_rouge=metric_value(target, "forget_rouge"),
            target_forget_prob=metric_value(target, "forget_prob"),
            oracle_forget_rouge=metric_value(oracle, "forget_rouge"),
            oracle_forget_prob=metric_value(oracle, "forget_prob"),
            holdout_rouge=metric_value(target, "holdout_rouge"),
            holdout_prob=metric_value(target, "holdout_prob"),
            utility_key=utility_key,
        )


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
    run: RunSettings = field(default_factory=RunSettings)
    reference: ReferenceLevels | None = None
    # Evaluated candidates, {"code": str, "fitness": float} each (model-based constant tuning).
    fitness: str = ""  # the fitness the search optimises (a name of the benchmark's; empty: its default)
    history: list[dict[str, Any]] = field(default_factory=list)

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
        if self.kind == "repair" and not any(self.repair_info()):
            raise ConfigError(
                "a 'repair' request needs the broken code (error['code'] or parents[0]) or a reason"
            )

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
    # Why there is no usable code (e.g. NO_FUNCTION); the driver records the proposal as rejected.
    error: str = ""
    # What was cut on the way (reply bytes, helper functions, stored response), for the record;
    # `notes` repeats it, since the store keeps the notes.
    cuts: list[str] = field(default_factory=list)


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
