"""The CPU thread default of the `evounlearn` command, chosen before torch is imported.

torch's own default is one OpenMP thread per core with OpenMP's spin-waiting threads: fastest on
a quiet machine, many times slower when other processes hold the cores (a spinning thread waits
for a core that another process holds; benchmarks/threads.py measures it). The command instead
takes the cores that are free when it starts (idle time in /proc/stat over a short sample, at
least one). When some of its cores are busy, idle OpenMP threads also sleep instead of spinning
(`OMP_WAIT_POLICY=PASSIVE`); on a quiet machine OpenMP's own (spinning) default is kept, as it is
the fastest there.

A user's own `OMP_NUM_THREADS` is kept as it is (and then nothing else is changed); so is a
user's `OMP_WAIT_POLICY`. The `threads=N` options of the configs still call
`torch.set_num_threads(N)` later.
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping
from dataclasses import dataclass

#: how long the idle time of the machine is sampled (seconds)
SAMPLE_SECONDS = 0.1


@dataclass(frozen=True)
class ThreadChoice:
    """What `configure_threads` chose: the thread count and why (`OMP_NUM_THREADS` set by the
    user, or `free cores` measured), the cores this process may use and the free ones seen."""

    threads: int
    source: str
    cpus: int
    free: float | None = None
    passive: bool = False  # OMP_WAIT_POLICY=PASSIVE was set here


def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_times(cores: set[int] | None) -> tuple[float, float, int] | None:
    """(idle, total jiffies, cores counted) from /proc/stat: of `cores` (per-core lines), or of
    the whole machine (None); None where /proc/stat is unreadable."""
    try:
        with open("/proc/stat") as f:
            lines = [ln.split() for ln in f if ln.startswith("cpu")]
    except OSError:
        return None
    idle = total = 0.0
    n = 0
    for fields in lines:
        name = fields[0]
        if cores is None and name != "cpu":
            continue
        if cores is not None and (name == "cpu" or int(name[3:]) not in cores):
            continue
        values = [float(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
        idle, total, n = idle + values[3] + values[4], total + sum(values), n + 1
    if cores is None:
        n = os.cpu_count() or 1
    return (idle, total, n) if n else None


def free_cpus(sample_seconds: float = SAMPLE_SECONDS) -> float | None:
    """Idle cores among those this process may use, over a short sample (their idle fraction x
    their number); the 1-minute load average stands in where /proc/stat is unreadable."""
    try:
        cores: set[int] | None = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = None
    a = _cpu_times(cores)
    if a is None:
        try:
            return max(0.0, (os.cpu_count() or 1) - os.getloadavg()[0])
        except (AttributeError, OSError):
            return None
    time.sleep(sample_seconds)
    b = _cpu_times(cores)
    if b is None or b[1] <= a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1]) * a[2]


def choose_threads(cpus: int, free: float | None) -> int:
    """Threads for `cpus` usable cores of which `free` are idle: the free ones rounded to the
    nearest whole core, at least 1, at most `cpus` (all of them when unknown)."""
    if free is None:
        return cpus
    return max(1, min(cpus, int(free + 0.5)))


def quiet(cpus: int, free: float | None) -> bool:
    """Every usable core idle (within half a core), or nothing known."""
    return free is None or free >= cpus - 0.5


def configure_threads(environ: MutableMapping[str, str] | None = None) -> ThreadChoice:
    """Set `OMP_NUM_THREADS` from the free cores in `environ` (default: this process's
    environment), and `OMP_WAIT_POLICY=PASSIVE` when some cores are busy, unless the user set
    them. Call it before torch is imported: torch reads both when it starts its thread pool."""
    env = os.environ if environ is None else environ
    cpus = usable_cpus()
    user = env.get("OMP_NUM_THREADS", "").strip()
    if user:
        try:
            return ThreadChoice(max(1, int(user)), "OMP_NUM_THREADS", cpus)
        except ValueError:
            return ThreadChoice(cpus, "OMP_NUM_THREADS", cpus)
    free = free_cpus() if cpus > 1 else None
    n = choose_threads(cpus, free)
    env["OMP_NUM_THREADS"] = str(n)
    passive = not quiet(cpus, free) and "OMP_WAIT_POLICY" not in env
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return ThreadChoice(n, "free cores", cpus, free, passive)
