"""Step 2: latency of one client in a closed loop (the next request leaves when the last verdict came).

With one request in flight the primary proposes one-request batches, so this
is the latency of a single verdict with nothing queued ahead of it: the
figure to hold against the floor.  Warm-up requests (connections, caches,
first pages of the databases) are sent first and not counted.  Then the
cluster is left idle and its CPU measured (an idle replica's cost), and one
more uncounted request wakes it before the measured ones.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass

import trio

from bft.core import Risk

from ._launchers import ClusterSpec, Launcher, RunningCluster, open_connected_client
from ._stats import summarize_ms
from ._workload import RISK_ORDER, action_for, risk_for


@dataclass(frozen=True, slots=True)
class LatencySettings:
    requests: int
    warmup_requests: int
    # The loop stops early, after a whole round of risk classes, once this much time has passed.
    max_duration_s: float = 30.0
    timeout_ms: int = 5000
    # After the warm-up: let the cluster settle, then measure its CPU while no request is sent.
    measure_idle: bool = True
    idle_settle_s: float = 0.5
    idle_measure_s: float = 2.0

    def __post_init__(self) -> None:
        assert self.requests >= len(RISK_ORDER) and self.warmup_requests >= 0 and self.timeout_ms >= 1
        assert self.max_duration_s > 0 and self.idle_settle_s >= 0 and self.idle_measure_s > 0


async def closed_loop_latency(launcher: Launcher, spec: ClusterSpec, settings: LatencySettings) -> dict:
    """Run the closed loop on a fresh cluster; the result holds percentiles per risk class and overall."""
    samples: list[tuple[str, str, float]] = []
    started_s = trio.current_time()
    async with launcher.open(spec) as cluster, AsyncExitStack() as stack:
        client = await open_connected_client(cluster, stack, spec.client_ids[0], timeout_ms=settings.timeout_ms)
        for number in range(settings.warmup_requests):
            await client.submit(action_for(risk_for(number), number), risk_for(number))
        idle = None
        if settings.measure_idle:
            idle = await idle_replica_cpu(cluster, settings)
            # The request that ends an idle period pays for waking the replicas: not one to count.
            wake_number = settings.warmup_requests + settings.requests  # After the measured ones: no action repeats.
            await client.submit(action_for(Risk.LOW, wake_number), Risk.LOW)
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
        "idle": idle,
        "wall_s": round(trio.current_time() - started_s, 2),
    }


async def idle_replica_cpu(cluster: RunningCluster, settings: LatencySettings) -> dict:
    """CPU per replica per second of a cluster that serves no request (its client connected, silent)."""
    await trio.sleep(settings.idle_settle_s)
    before, started_s = cluster.replica_cpu_snapshot(), trio.current_time()
    await trio.sleep(settings.idle_measure_s)
    used_s = before.seconds_until(cluster.replica_cpu_snapshot())
    elapsed_s = trio.current_time() - started_s
    per_replica_ms_per_s = 1000 * used_s / elapsed_s / cluster.replica_count
    return {"measured_s": round(elapsed_s, 3), "scope": before.scope,
            "cpu_ms_per_s_per_replica": round(per_replica_ms_per_s, 3),
            "percent_of_core_per_replica": round(per_replica_ms_per_s / 10, 3)}
