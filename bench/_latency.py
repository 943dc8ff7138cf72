"""Step 2: latency of one client in a closed loop (the next request leaves when the last verdict came).

With one request in flight the primary proposes one-request batches, so this
is the latency of a single verdict with nothing queued ahead of it: the
figure to hold against the floor.  Warm-up requests (connections, caches,
first pages of the databases) are sent first and not counted.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass

import trio

from ._launchers import ClusterSpec, Launcher, open_connected_client
from ._stats import summarize_ms
from ._workload import RISK_ORDER, action_for, risk_for


@dataclass(frozen=True, slots=True)
class LatencySettings:
    requests: int
    warmup_requests: int
    # The loop stops early, after a whole round of risk classes, once this much time has passed.
    max_duration_s: float = 30.0
    timeout_ms: int = 5000

    def __post_init__(self) -> None:
        assert self.requests >= len(RISK_ORDER) and self.warmup_requests >= 0 and self.timeout_ms >= 1
        assert self.max_duration_s > 0


async def closed_loop_latency(launcher: Launcher, spec: ClusterSpec, settings: LatencySettings) -> dict:
    """Run the closed loop on a fresh cluster; the result holds percentiles per risk class and overall."""
    samples: list[tuple[str, str, float]] = []
    started_s = trio.current_time()
    async with launcher.open(spec) as cluster, AsyncExitStack() as stack:
        client = await open_connected_client(cluster, stack, spec.client_ids[0], timeout_ms=settings.timeout_ms)
        for number in range(settings.warmup_requests):
            await client.submit(action_for(risk_for(number), number), risk_for(number))
        measuring_until_s = trio.current_time() + settings.max_duration_s
        cpu_started_s = cluster.cpu_seconds()
        for number in range(settings.warmup_requests, settings.warmup_requests + settings.requests):
            if trio.current_time() > measuring_until_s and len(samples) % len(RISK_ORDER) == 0:
                break
            risk = risk_for(number)
            outcome = await client.submit(action_for(risk, number), risk)
            samples.append((risk.value, outcome.status, outcome.latency_ms))
        cpu_ms_per_request = (cluster.cpu_seconds() - cpu_started_s) * 1000 / len(samples)
        description = cluster.description
    by_risk = {risk.value: summarize_ms([ms for r, status, ms in samples if r == risk.value and status != "REFUSED"])
               for risk in RISK_ORDER}
    statuses = [status for _, status, _ in samples]
    return {
        "replica_count": spec.replica_count,
        "storage": spec.storage,
        "cluster": description,
        "requests": len(samples),
        "verdicts": {status: statuses.count(status) for status in ("ALLOW", "DENY", "REFUSED")},
        "all": summarize_ms([ms for _, status, ms in samples if status != "REFUSED"]),
        "by_risk": by_risk,
        "latencies_ms": [round(ms, 3) for _, status, ms in samples if status != "REFUSED"],
        # Replicas plus client, all cores: compare with the model's CPU per unbatched verdict.
        "cpu_ms_per_verdict": round(cpu_ms_per_request, 3),
        "wall_s": round(trio.current_time() - started_s, 2),
    }
