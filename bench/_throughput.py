"""Step 3: throughput.  Offer fixed arrival rates (open loop), ramp up to saturation, then measure at 50% and 90%.

Each point sends requests on a fixed schedule whether or not earlier ones
finished, and times each verdict from its *scheduled* arrival, so time spent
queueing (in a client's window or in the replicas) counts, as it would for a
real caller.  The ramp starts at the rate one client reaches alone (one
request at a time, measured first) and multiplies it until a point saturates:
fewer verdicts per second than offered, a refusal, a shed arrival, or a p99
past the bound.  Saturation is the most verdicts per second any point got
through.  Every run is bounded in count (arrivals), time (request deadlines,
ramp steps) and memory (requests in flight).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass

import trio

from collections import Counter
from typing import Callable

from bft.runtime import AsyncClient, Outcome

from ._launchers import ClusterSpec, Launcher, open_connected_client
from ._stats import median, summarize_ms
from ._workload import action_for, risk_for

# Requests in flight per client: half the replicas' reply window, the most a client may use.
OUTSTANDING_PER_CLIENT = 32
KEEPS_UP_FRACTION = 0.95


@dataclass(frozen=True, slots=True)
class ThroughputSettings:
    client_count: int
    point_s: float  # Length of each open-loop point.
    probe_requests: int  # One-at-a-time requests whose median latency sets the ramp's first rate.
    growth: float  # Each ramp step offers this many times the last.
    max_steps: int
    latency_bound_ms: float  # A point whose p99 exceeds this is saturated.
    timeout_ms: int = 5000
    max_in_flight: int = 4096  # Arrivals beyond this many unfinished requests are shed and counted.

    def __post_init__(self) -> None:
        assert self.client_count >= 1 and self.point_s > 0 and self.probe_requests >= 1 and self.growth > 1
        assert self.max_steps >= 1 and self.latency_bound_ms > 0 and self.max_in_flight >= 1


class _Numbers:
    """Request numbers handed out across tasks, so every action is distinct."""

    def __init__(self) -> None:
        self.next = 0

    def take(self) -> int:
        self.next += 1
        return self.next


async def _submit(client: AsyncClient, number: int, timeout_ms: int) -> Outcome:
    risk = risk_for(number)
    return await client.submit(action_for(risk, number), risk, timeout_ms=timeout_ms)


def _reason_kind(outcome: Outcome) -> str:
    """A DENY's reason without its numbers, so that reasons of one kind count together."""
    return f"{outcome.request.risk.value}: {outcome.reason.split(':')[0]}"


async def open_loop_point(clients: list[AsyncClient], numbers: _Numbers, rate_per_s: float,
                          settings: ThroughputSettings, cpu_seconds: Callable[[], float]) -> dict:
    """Offer ``rate_per_s`` for ``settings.point_s``; latency runs from each request's scheduled arrival."""
    arrivals = max(1, round(rate_per_s * settings.point_s))
    interval_s = 1 / rate_per_s
    latencies_ms: list[float] = []
    statuses = {"ALLOW": 0, "DENY": 0, "REFUSED": 0, "shed": 0}
    deny_reasons: Counter[str] = Counter()
    in_flight = 0
    last_completion_s = first_arrival_s = trio.current_time() + 0.01
    cpu_started_s = cpu_seconds()

    async def one(client: AsyncClient, number: int, scheduled_s: float) -> None:
        nonlocal in_flight, last_completion_s
        try:
            outcome = await _submit(client, number, settings.timeout_ms)
        finally:
            in_flight -= 1
        statuses[outcome.status] += 1
        if outcome.status == "DENY":
            deny_reasons[_reason_kind(outcome)] += 1
        last_completion_s = max(last_completion_s, trio.current_time())
        if outcome.status != "REFUSED":
            latencies_ms.append((trio.current_time() - scheduled_s) * 1000)

    async with trio.open_nursery() as nursery:
        for index in range(arrivals):
            scheduled_s = first_arrival_s + index * interval_s
            await trio.sleep_until(scheduled_s)
            if in_flight >= settings.max_in_flight:
                statuses["shed"] += 1
                continue
            in_flight += 1
            nursery.start_soon(one, clients[index % len(clients)], numbers.take(), scheduled_s)
    elapsed_s = max(last_completion_s - first_arrival_s, settings.point_s)
    verdicts = statuses["ALLOW"] + statuses["DENY"]
    cpu_ms_per_verdict = (cpu_seconds() - cpu_started_s) * 1000 / max(1, verdicts)
    return {"offered_per_s": round(rate_per_s, 1), "arrivals": arrivals, "statuses": statuses,
            "achieved_per_s": round(verdicts / elapsed_s, 1), "deny_reasons": dict(deny_reasons.most_common(3)),
            "latency": summarize_ms(latencies_ms), "cpu_ms_per_verdict": round(cpu_ms_per_verdict, 3),
            "latencies_ms": [round(ms, 3) for ms in latencies_ms]}


def is_saturated(point: dict, settings: ThroughputSettings) -> bool:
    statuses, latency = point["statuses"], point["latency"]
    return (point["achieved_per_s"] < KEEPS_UP_FRACTION * point["offered_per_s"] or statuses["REFUSED"] > 0
            or statuses["shed"] > 0 or latency.get("p99_ms", float("inf")) > settings.latency_bound_ms)


async def measure_throughput(launcher: Launcher, spec: ClusterSpec, settings: ThroughputSettings) -> dict:
    assert spec.client_count == settings.client_count
    numbers = _Numbers()
    started_s = trio.current_time()
    async with launcher.open(spec) as cluster, AsyncExitStack() as stack:
        clients = [await open_connected_client(cluster, stack, client_id, timeout_ms=settings.timeout_ms,
                                               max_outstanding=OUTSTANDING_PER_CLIENT)
                   for client_id in spec.client_ids]
        for client in clients:  # Warm every connection and every replica's client table once.
            await _submit(client, numbers.take(), settings.timeout_ms)
        alone_ms = [(await _submit(clients[0], numbers.take(), settings.timeout_ms)).latency_ms
                    for _ in range(settings.probe_requests)]
        ramp, rate_per_s = [], 1000 / median(alone_ms)
        for _ in range(settings.max_steps):
            point = await open_loop_point(clients, numbers, rate_per_s, settings, cluster.cpu_seconds)
            ramp.append({**point, "saturated": is_saturated(point, settings)})
            if ramp[-1]["saturated"]:
                break
            rate_per_s *= settings.growth
        saturation_per_s = max(point["achieved_per_s"] for point in ramp)
        measured = {}
        for fraction in (0.5, 0.9):
            point = await open_loop_point(clients, numbers, fraction * saturation_per_s, settings,
                                          cluster.cpu_seconds)
            measured[f"at_{round(fraction * 100)}_percent"] = {**point, "fraction_of_saturation": fraction}
        description = cluster.description
    return {"replica_count": spec.replica_count, "storage": spec.storage, "cluster": description,
            "clients": settings.client_count, "outstanding_per_client": OUTSTANDING_PER_CLIENT,
            "one_client_p50_ms": round(median(alone_ms), 3), "saturation_per_s": saturation_per_s,
            "saturated_in_ramp": ramp[-1]["saturated"],
            "ramp": ramp, **measured, "wall_s": round(trio.current_time() - started_s, 2)}
