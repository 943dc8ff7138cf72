"""Latency summaries: nearest-rank percentiles over measured samples."""

from __future__ import annotations

import math
from typing import Sequence

PERCENTILES = (("p50_ms", 0.50), ("p90_ms", 0.90), ("p99_ms", 0.99))


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (the smallest value covering ``fraction``)."""
    assert sorted_values, "a percentile of nothing is undefined"
    assert 0 < fraction <= 1
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize_ms(latencies_ms: Sequence[float]) -> dict[str, float | int]:
    """Count, p50/p90/p99, max and mean of a sample; an empty sample has only its count."""
    if not latencies_ms:
        return {"count": 0}
    ordered = sorted(latencies_ms)
    summary: dict[str, float | int] = {"count": len(ordered)}
    for name, fraction in PERCENTILES:
        summary[name] = round(percentile(ordered, fraction), 3)
    summary["max_ms"] = round(ordered[-1], 3)
    summary["mean_ms"] = round(sum(ordered) / len(ordered), 3)
    return summary


def median(values: Sequence[float]) -> float:
    assert values
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
