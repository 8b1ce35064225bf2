"""The executor interface: where candidate evaluations run (see `search.executors`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from ...sandbox import JobResult, Limits

__all__ = ["Executor", "Limits"]


class Executor(ABC):
    """Runs trusted job functions away from the driver; see the module docstring."""

    slots: int = 1

    @abstractmethod
    def submit(self, job: str, kwargs: Mapping[str, Any], limits: Limits | None = None) -> Future[JobResult]:
        """Start `job(**kwargs)`; the future's JobResult carries the value or the error."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Start resources ahead of the first job (default: nothing)."""

    @abstractmethod
    def close(self, kill: bool = False) -> None:
        """Stop everything; with `kill`, jobs in flight are killed instead of awaited."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
