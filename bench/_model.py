"""The floor and the ceiling, computed from measured unit costs by an explicit, printed model.

Latency floor: the critical path of one verdict, as stages that must happen
one after another (``critical_path``).  Each stage names its network hop,
its signatures, the verifications that stand between a replica and its next
step, its decodes and encodes, and its fsync.  The model is optimistic by
construction: every replica has a core of its own, no message waits in a
queue, and interpreter overhead outside the measured operations is free.
It is also the shortest PBFT path, with PREPAREs and COMMITs sent to every
replica; the cluster sends them through the primary (SPEC.md section 11c),
which adds two hops and two fsyncs to its own path.  The floor is kept at
the shorter path on purpose, so the latency that design choice costs shows
in the measured ratio instead of being hidden by a higher floor.

Throughput ceiling: the CPU that one verdict costs all replicas and the
client together (``cpu_per_verdict_us``), with the per-batch work amortised
over full batches, divided into the machine's cores.  fsync is I/O, not CPU;
it gets its own (disk) ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bft.core import Risk, max_faulty, quorum_size

from ._costs import UnitCosts

RISKS_AWAITING_EVERY_VOTE = (Risk.HIGH, Risk.CRITICAL)


@dataclass(frozen=True, slots=True)
class Stage:
    """One step of the critical path; counts are of operations done one after another."""

    what: str
    hops: int = 0
    signs: int = 0
    verifies: int = 0
    cached_verifies: int = 0
    fsyncs: int = 0
    policy_evaluations: int = 0
    encodes: dict[str, int] = field(default_factory=dict)
    decodes: dict[str, int] = field(default_factory=dict)

    def cost_us(self, costs: UnitCosts, durable: bool) -> float:
        coding = (sum(costs.encode_us[kind] * count for kind, count in self.encodes.items())
                  + sum(costs.decode_us[kind] * count for kind, count in self.decodes.items()))
        return (self.hops * costs.hop_us + self.signs * costs.sign_us + self.verifies * costs.verify_us
                + self.cached_verifies * costs.verify_cached_us + self.policy_evaluations * costs.policy_us
                + (self.fsyncs * costs.sqlite_commit_us if durable else 0.0) + coding)


def votes_awaited(replica_count: int, risk: Risk) -> int:
    """How many votes the primary holds before it proposes, when every policy allows.

    With all ALLOW votes a LOW or MEDIUM verdict is settled at a quorum; HIGH and
    CRITICAL tolerate no DENY, so they are settled only once every vote is in.
    """
    if risk in RISKS_AWAITING_EVERY_VOTE:
        return replica_count
    return quorum_size(replica_count, max_faulty(replica_count))


def critical_path(replica_count: int, risk: Risk = Risk.LOW) -> tuple[Stage, ...]:
    """request -> votes -> pre-prepare -> prepare -> commit -> reply, stage by stage."""
    assert replica_count >= 4
    faulty = max_faulty(replica_count)
    quorum = quorum_size(replica_count, faulty)
    awaited = votes_awaited(replica_count, risk)
    return (
        Stage("client signs the request and sends it to every replica",
              hops=1, signs=1, encodes={"request": 1}),
        Stage("a replica checks the request, runs its policy, signs, persists and broadcasts its vote",
              hops=1, signs=1, verifies=1, fsyncs=1, policy_evaluations=1, decodes={"request": 1},
              encodes={"vote": 1}),
        Stage(f"the primary checks the {awaited - 1} remote votes it waits for, one after another, "
              "then signs, persists and broadcasts the pre-prepare",
              hops=1, signs=1, verifies=awaited - 1, fsyncs=1, decodes={"vote": awaited - 1},
              encodes={"preprepare": 1}),
        Stage("a backup checks the pre-prepare (its request and votes are cache hits), "
              "signs, persists and broadcasts its prepare",
              hops=1, signs=1, verifies=1, cached_verifies=1 + awaited, fsyncs=1, decodes={"preprepare": 1},
              encodes={"prepare": 1}),
        Stage(f"a replica checks {quorum - 1} remote prepares, then signs, persists and broadcasts its commit",
              hops=1, signs=1, verifies=quorum - 1, fsyncs=1, decodes={"prepare": quorum - 1},
              encodes={"commit": 1}),
        Stage(f"a replica checks {quorum - 1} remote commits, executes, signs the reply, "
              "persists the log entry and sends the reply",
              hops=1, signs=1, verifies=quorum - 1, fsyncs=1, decodes={"commit": quorum - 1},
              encodes={"reply": 1}),
        Stage(f"the client checks {faulty + 1} replies, then the certificate with a fresh verifier "
              f"(request, {faulty + 1} replies, {awaited} votes)",
              verifies=(faulty + 1) + 1 + (faulty + 1) + awaited, decodes={"reply": faulty + 1}),
    )


def path_totals(stages: tuple[Stage, ...]) -> dict[str, int]:
    totals = {name: sum(getattr(stage, name) for stage in stages)
              for name in ("hops", "signs", "verifies", "cached_verifies", "fsyncs", "policy_evaluations")}
    totals["encodes"] = sum(sum(stage.encodes.values()) for stage in stages)
    totals["decodes"] = sum(sum(stage.decodes.values()) for stage in stages)
    return totals


def latency_floor_ms(costs: UnitCosts, replica_count: int, risk: Risk, durable: bool) -> float:
    floor_us = sum(stage.cost_us(costs, durable) for stage in critical_path(replica_count, risk))
    assert floor_us > 0
    return floor_us / 1000


def cpu_per_verdict_us(costs: UnitCosts, replica_count: int, batch_requests: int) -> float:
    """CPU of one LOW verdict summed over every replica and the client, batches of ``batch_requests``.

    Per request, on each of n replicas: check the request, run the policy, sign
    and encode its vote, check the n-1 other votes, find the request and its
    votes in the verifier cache inside the pre-prepare, sign and encode a reply.
    Per batch: the primary signs and encodes the pre-prepare, n-1 backups decode
    and check it; every replica signs, encodes and broadcasts a prepare and a
    commit and checks n-1 of each.  The client signs its request, decodes n
    replies, checks f+1 and then the certificate.
    """
    assert replica_count >= 4 and batch_requests >= 1
    n, faulty = replica_count, max_faulty(replica_count)
    awaited = quorum_size(n, faulty)
    e, d = costs.encode_us, costs.decode_us
    check = costs.verify_us
    per_request_per_replica = (d["request"] + check + costs.policy_us + costs.sign_us + e["vote"]
                               + (n - 1) * (d["vote"] + check) + (1 + awaited) * costs.verify_cached_us
                               + costs.sign_us + e["reply"])
    # The full-batch message was measured at ``full_batch_requests`` entries; scale it to this batch.
    preprepare_share = batch_requests / costs.full_batch_requests
    per_batch = (costs.sign_us + e["preprepare_full"] * preprepare_share
                 + (n - 1) * (d["preprepare_full"] * preprepare_share + check)
                 + n * 2 * (costs.sign_us + e["prepare"] + (n - 1) * (d["prepare"] + check)))
    client = (costs.sign_us + e["request"] + n * d["reply"] + (faulty + 1) * check
              + (1 + (faulty + 1) + awaited) * check)
    return n * per_request_per_replica + per_batch / batch_requests + client


def throughput_ceiling_per_s(costs: UnitCosts, replica_count: int, batch_requests: int, cores: int) -> float:
    assert cores >= 1
    return cores * 1e6 / cpu_per_verdict_us(costs, replica_count, batch_requests)


def disk_ceiling_per_s(costs: UnitCosts, replica_count: int, batch_requests: int) -> float:
    """Verdicts per second that one disk allows if fsyncs run one at a time.

    Each replica persists every vote in its own transaction and, per batch, the
    pre-prepare (primary), its prepare, its commit and the batch's log entries.
    """
    fsyncs_per_verdict = replica_count * (1 + 3 / batch_requests)
    return 1e6 / (fsyncs_per_verdict * costs.sqlite_commit_us)


def floor_report(costs: UnitCosts, replica_count: int, batch_requests: int, cores: int) -> dict:
    """Everything the floor step prints and stores for one n."""
    stages = critical_path(replica_count, Risk.LOW)
    floors = {risk.value: {"memory_ms": round(latency_floor_ms(costs, replica_count, risk, False), 3),
                           "durable_ms": round(latency_floor_ms(costs, replica_count, risk, True), 3)}
              for risk in Risk}
    return {
        "replica_count": replica_count,
        "quorum": quorum_size(replica_count, max_faulty(replica_count)),
        "critical_path_low_risk": [stage.what for stage in stages],
        "critical_path_totals_low_risk": path_totals(stages),
        "latency_floor_by_risk": floors,
        "cpu_per_verdict_us": round(cpu_per_verdict_us(costs, replica_count, batch_requests), 1),
        "cpu_per_verdict_unbatched_us": round(cpu_per_verdict_us(costs, replica_count, 1), 1),
        "ceiling_batch_requests": batch_requests,
        "throughput_ceiling_per_s": round(throughput_ceiling_per_s(costs, replica_count, batch_requests, cores), 1),
        "throughput_ceiling_unbatched_per_s": round(throughput_ceiling_per_s(costs, replica_count, 1, cores), 1),
        "disk_ceiling_per_s": round(disk_ceiling_per_s(costs, replica_count, batch_requests), 1),
    }
