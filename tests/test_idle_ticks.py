"""A quiescent core needs no fine ticks: while ``Replica.is_quiescent`` holds, ticks change nothing but the clock and the catch-up probe (at most one STATE-REQUEST per view-change timeout), so an idle node may tick rarely; it ticks at once when an input arrives and still decides."""

from __future__ import annotations

import trio

from bft.core import Decision, Risk, StateRequest
from bft.policies import build_policy
from bft.runtime import NodeOptions, open_local_cluster

from conftest import START_MS, LocalNet, freeze, replica_snapshot

CLOCK_FIELDS = ("now_ms", "ticks")


def state_without_clock(replica) -> dict:
    """Protocol state, leaving out the clock and the catch-up probe's own bookkeeping."""
    state = {name: value for name, value in replica_snapshot(replica).items()
             if name not in CLOCK_FIELDS and name != "catch_up"}
    state["catch_up"] = {name: freeze(value) for name, value in vars(replica.catch_up).items()
                         if name != "replica" and "catch_up" not in name and name not in ("_probe_due", "_heard_tick")}
    return state


def test_a_fresh_replica_is_quiescent_and_a_request_makes_it_busy_until_it_is_decided_and_forgotten(kit):
    net = LocalNet.create(kit)
    assert all(replica.is_quiescent for replica in net.replicas)
    net.submit(kit.request(number=1))
    assert not any(replica.is_quiescent for replica in net.replicas)
    net.deliver_all()
    assert len({reply.request_digest for _, reply in net.replies}) == 1
    # Late votes for the executed request wait as orphans until they expire, then nothing is left.
    limits = kit.config.limits
    for tick in range(1, limits.orphan_vote_ticks + 2):
        net.tick(START_MS + tick)
        net.deliver_all()
    assert all(replica.is_quiescent for replica in net.replicas)


def test_ticks_of_a_quiescent_replica_change_nothing_but_its_clock(kit):
    net = LocalNet.create(kit)
    for number in (1, 2, 3):
        net.submit(kit.request(number=number, risk=Risk.HIGH))
        net.deliver_all()
    for tick in range(1, kit.config.limits.orphan_vote_ticks + 2):
        net.tick(START_MS + tick)
        net.deliver_all()
    for replica in net.replicas:
        assert replica.is_quiescent
        before = state_without_clock(replica)
        probes = []
        for tick in range(1, 401):
            ready = replica.tick(START_MS + 10_000 + 10 * tick)
            assert not (ready.persist or ready.to_clients or ready.finalized or ready.evaluate or ready.rejected)
            probes += [message for _, message in ready.messages_to_replicas]
        assert all(isinstance(probe, StateRequest) for probe in probes)
        assert len(probes) <= 400 // kit.config.limits.view_change_timeout_ticks + 1
        assert state_without_clock(replica) == before


def test_a_replica_with_a_pending_request_is_not_quiescent_even_when_its_policy_has_not_answered(kit):
    net = LocalNet.create(kit)
    net.policy = lambda replica_id, request: Decision.DENY
    replica = net.replicas[1]
    ready = replica.submit(kit.request(number=7))
    assert ready.evaluate and not replica.is_quiescent


async def test_an_idle_node_ticks_rarely_and_ticks_before_the_input_that_wakes_it():
    options = NodeOptions(tick_ms=10, idle_tick_ms=400)
    policies = [build_policy("deny-list") for _ in range(4)]
    async with open_local_cluster(policies, options=options) as cluster:
        assert await cluster.wait_connected()
        ticks = [0] * len(cluster.nodes)
        for node in cluster.nodes:
            original = node.replica.tick

            def counting_tick(now_ms, original=original, index=node.replica_id):
                ticks[index] += 1
                return original(now_ms)
            node.replica.tick = counting_tick
        await trio.sleep(1.0)
        # Busy ticking would be about 100 ticks a second; idle, about 1 s / 400 ms plus the first.
        assert max(ticks) <= 5, ticks
        before_submit_ms = cluster.clock.now_ms()
        async with cluster.open_client() as client:
            outcome = await client.submit({"tool": "read_file", "path": "/workspace/README.md"}, Risk.LOW)
        assert outcome.status == "ALLOW"
        # The clock the primary stamped its batch with was brought up to date by the wake-up tick.
        assert outcome.certificate.replies[0].timestamp_ms >= before_submit_ms


def test_a_reconnected_peer_wakes_a_quiescent_replica_to_probe_at_its_next_tick(kit):
    net = LocalNet.create(kit)
    replica = net.replicas[2]
    replica.tick(START_MS + 1)
    assert replica.is_quiescent
    assert replica.peer_reconnected().is_empty()
    assert not replica.is_quiescent, "a probe is due: the driver must tick at its busy pace"
    ready = replica.tick(START_MS + 2)
    assert [type(message) for _, message in ready.messages_to_replicas] == [StateRequest]
    assert replica.is_quiescent
