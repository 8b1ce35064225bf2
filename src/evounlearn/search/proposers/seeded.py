"""Seeding a search with given programs: `proposer.seed_files=[a.py, b.py]` (any proposer kind).

`SeededProposer` wraps the configured proposer: every "initial" request is answered first with
the loss functions of the seed files (each `loss_fn` / `loss_fn_<k>` of each file, in order, as
one proposal named `loss_fn` with the helpers it calls), then the wrapped proposer fills the rest
of the request. The answer to a request of size n is a prefix of the answer to a larger one, so
the driver's de-duplication of initial proposals sees each seed once. Seeds are untrusted text
like any proposal: validated in the sandbox before anything trains them (a rejected seed is
recorded with its reason; its repair goes to the wrapped proposer).

The files are read and split when the search is configured: a missing or unreadable file, or one
without a loss function, is a one-line ConfigError.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path

from ...errors import ConfigError
from ...sandbox.policy import is_loss_name
from ...sandbox.program import split_functions
from .base import Proposal, ProposalRequest, Proposer

__all__ = ["SeededProposer", "read_seed_files"]


def read_seed_files(paths: Iterable[str | Path]) -> list[Proposal]:
    """One proposal per loss function of each file (operator "seed", notes name the file)."""
    out: list[Proposal] = []
    for raw in paths:
        path = Path(str(raw)).expanduser()
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"proposer.seed_files: cannot read {path}: {type(e).__name__}") from None
        functions = split_functions(text)
        helpers = [f for f in functions if not is_loss_name(f.name)]
        losses = [f for f in functions if is_loss_name(f.name)]
        if not losses:
            raise ConfigError(f"proposer.seed_files: {path} has no loss function (def loss_fn...)")
        for f in losses:
            # the proposal's one function is named loss_fn; the file's helpers travel with it (the
            # driver's program check keeps those it calls)
            body = re.sub(rf"^def {re.escape(f.name)}\(", "def loss_fn(", f.source, count=1, flags=re.M)
            code = "\n\n".join([*(h.source.rstrip() + "\n" for h in helpers), body.rstrip() + "\n"])
            out.append(Proposal(code=code, operator="seed", notes=f"seed: {path.name}:{f.name}"))
    return out


class SeededProposer(Proposer):
    """The wrapped proposer, with the seed programs first in every "initial" answer."""

    name = "seeded"
    config_class = type(None)  # built by the registry, never from options

    def __init__(self, inner: Proposer, seeds: list[Proposal]) -> None:
        self.inner = inner
        self.seeds = seeds
        self.name = getattr(inner, "name", "proposer")

    def propose(self, request: ProposalRequest) -> list[Proposal]:
        if request.kind != "initial":
            return self.inner.propose(request)
        first = [dataclasses.replace(p) for p in self.seeds[: request.n]]
        rest = request.n - len(first)
        return first + (self.inner.propose(dataclasses.replace(request, n=rest)) if rest > 0 else [])

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> object:  # the wrapped proposer's other attributes
        return getattr(self.__dict__["inner"], name)
