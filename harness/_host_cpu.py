"""How busy the host's CPUs were over a span of a real-process run.

A real-process episode shares the machine's cores between every replica, the
harness's clients and proxies, and whatever else runs there.  When those cores
are nearly all busy, a request's latency includes waiting for a CPU, and the
latency checks measure the machine as much as the cluster.  The mission records
this figure next to its latencies so a reader can tell the two apart; it never
changes a verdict.  Linux only (``/proc/stat``); elsewhere the figure is None.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
# Above this fraction of busy CPU time, the report says the host was saturated.
SATURATED_FRACTION = 0.85


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Cumulative clock ticks of every CPU since boot: spent working, and in all."""

    busy_ticks: int
    total_ticks: int


def read_cpu_times(path: Path = PROC_STAT) -> CpuTimes | None:
    """The host's cumulative CPU times, or None where ``path`` is missing or not in the expected form."""
    try:
        first_line = path.read_text().splitlines()[0].split()
        user, nice, system, idle, iowait, irq, softirq, steal = (int(value) for value in first_line[1:9])
    except (OSError, IndexError, ValueError):
        return None
    if first_line[0] != "cpu":
        return None
    busy = user + nice + system + irq + softirq + steal  # Guest time is already counted in user time.
    return CpuTimes(busy, busy + idle + iowait)


def busy_fraction(start: CpuTimes | None, end: CpuTimes | None) -> float | None:
    """The fraction of all CPU time between two readings that was spent working (None if unknown)."""
    if start is None or end is None or end.total_ticks <= start.total_ticks:
        return None
    busy = (end.busy_ticks - start.busy_ticks) / (end.total_ticks - start.total_ticks)
    return min(1.0, max(0.0, busy))
