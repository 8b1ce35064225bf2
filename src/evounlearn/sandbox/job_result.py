"""What one sandbox job asks for and gets back: its limits (`Limits`), its outcome (`JobResult`)
and why a worker was killed (`killed_reason`), shared by the driver (`workers`) and the worker
process (`worker_process`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WALL_LIMIT = "wall time limit"
CPU_LIMIT = "cpu time limit"
MEMORY_LIMIT = "memory limit"
CRASH = "crash"
STEP_DEADLINE = "step deadline"



@dataclass
class Limits:
    """Per-job limits (None = no limit)."""

    wall_s: float | None = 900.0
    cpu_s: float | None = 1800.0
    memory_mb: int | None = 4096

    def as_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `IsolatedWorker` / `run` / `submit`."""
        return {"wall_limit_s": self.wall_s, "cpu_limit_s": self.cpu_s, "memory_limit_mb": self.memory_mb}


@dataclass
class JobResult:
    """What came back from one job. `ok` means the job function returned normally."""

    ok: bool
    value: Any = None
    error: str | None = None
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    killed_reason: str | None = None  # WALL_LIMIT | CPU_LIMIT | MEMORY_LIMIT | CRASH | None
    # True when the job was lost to the infrastructure (a cluster node died, the executor was
    # closed...), not to anything the job did: the caller may retry it without charging the job
    infra: bool = False
