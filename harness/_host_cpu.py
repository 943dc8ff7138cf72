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

import trio

PROC_STAT = Path("/proc/stat")
# A sampling interval whose CPU time was at least this busy counts as saturated.
SATURATED_FRACTION = 0.9
SAMPLE_INTERVAL_S = 0.25
# A missed latency bound names the episodes saturated for at least this share of their intervals.
SATURATED_SHARE_REPORTED = 0.25
MAX_SAMPLES = 4 * 3600  # An hour of intervals: a monitor never grows without bound.


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


@dataclass(frozen=True, slots=True)
class HostCpu:
    """How busy the host was over a span: on average, and in how many of its intervals it was saturated."""

    mean_busy: float
    saturated_share: float  # Of the sampling intervals, those at least SATURATED_FRACTION busy.
    intervals: int

    def describe(self) -> str:
        return f"host CPU {self.mean_busy:.0%} busy, saturated {self.saturated_share:.0%} of the time"

    def to_json(self) -> dict:
        return {"mean_busy": round(self.mean_busy, 3), "saturated_share": round(self.saturated_share, 3),
                "intervals": self.intervals, "saturated_fraction": SATURATED_FRACTION,
                "interval_s": SAMPLE_INTERVAL_S}


class HostCpuMonitor:
    """Samples ``/proc/stat`` every SAMPLE_INTERVAL_S while ``run`` runs; ``summary`` covers ``start`` to now."""

    def __init__(self, path: Path = PROC_STAT) -> None:
        self.path = path
        self._start: CpuTimes | None = None
        self._last: CpuTimes | None = None
        self._interval_busy: list[float] = []

    def start(self) -> None:
        self._start = self._last = read_cpu_times(self.path)
        self._interval_busy.clear()

    async def run(self) -> None:
        """Sample until cancelled (returns at once where ``/proc/stat`` is unreadable)."""
        if read_cpu_times(self.path) is None:
            return
        while True:
            await trio.sleep(SAMPLE_INTERVAL_S)
            self._sample()

    def _sample(self) -> None:
        now = read_cpu_times(self.path)
        busy = busy_fraction(self._last, now)
        self._last = now
        if busy is not None and len(self._interval_busy) < MAX_SAMPLES:
            self._interval_busy.append(busy)

    def summary(self) -> HostCpu | None:
        """None before ``start``, where the host's CPU times are unreadable, or before one interval passed."""
        mean = busy_fraction(self._start, read_cpu_times(self.path))
        if mean is None or not self._interval_busy:
            return None
        saturated = sum(1 for busy in self._interval_busy if busy >= SATURATED_FRACTION)
        return HostCpu(mean, saturated / len(self._interval_busy), len(self._interval_busy))
