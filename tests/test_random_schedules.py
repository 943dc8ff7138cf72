"""Proves S1-S8 (specs.invariants) hold on a few thousand random hypothesis schedules of the simulator:
random seeds, lossy, duplicating and reordering networks, partitions, crash-restarts, retries, submits
across risks, clients and deadlines, default or tiny windows (so checkpoints and water marks move), and
up to f Byzantine replicas drawn from bft.testing's strategies; every invariant is checked after every
phase.  Where the primary is honest and nothing is lost, it also proves every request is answered
(a certificate, or a refusal at its deadline)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bft.core import Limits, Risk, max_faulty
from bft.policy import PolicyDecision
from bft.testing import STRATEGIES, ApproveEverything, DenyEverything, NetworkFaults, SimCluster
from specs.invariants import SimMonitor

pytestmark = pytest.mark.slow  # thousands of random schedules: make test runs it, make test-fast does not

CLIENTS = ("client-0", "client-1")
SHORT_DEADLINE_MS = (15, 120)
LONG_DEADLINE_MS = 30_000
LIVENESS_WITHIN_MS = 3_000
# The view-change timeout is 50 ticks of 10 ms: 200 ms rarely sees one, 1200 ms sees one and its aftermath.
SHORT_AFTERMATH_MS = 200
VIEW_CHANGE_AFTERMATH_MS = 1_200


class RiskCeiling:
    """An honest policy that allows up to a risk class and denies above it."""

    name = "risk-ceiling"

    def __init__(self, highest_allowed: Risk) -> None:
        self.highest_allowed = list(Risk).index(highest_allowed)

    def evaluate(self, action, context) -> PolicyDecision:
        if list(Risk).index(context.risk) <= self.highest_allowed:
            return PolicyDecision.allow("within the ceiling")
        return PolicyDecision.deny("above the ceiling")


class Coin:
    """An honest policy with a fixed pseudo-random opinion per (replica, action)."""

    name = "coin"

    def evaluate(self, action, context) -> PolicyDecision:
        heads = hashlib.sha256(f"{context.replica_id}/{sorted(action.items())}".encode()).digest()[0] % 2
        return PolicyDecision.allow("heads") if heads else PolicyDecision.deny("tails")


# Small windows make short schedules cross checkpoints, move the water marks and discard old slots.
TIGHT_LIMITS = Limits(max_batch_requests=2, max_in_flight_batches=3, log_window=4, checkpoint_interval=2)

HONEST_POLICIES = {
    "allow": lambda: ApproveEverything(),  # Honest and permissive: the policy may simply agree.
    "deny": lambda: DenyEverything(),
    "ceiling-medium": lambda: RiskCeiling(Risk.MEDIUM),
    "coin": lambda: Coin(),
}


@dataclass(frozen=True)
class Schedule:
    replica_count: int
    seed: int
    drop_probability: float
    duplicate_probability: float
    delay_ms_max: int
    tight_limits: bool
    byzantine: tuple[tuple[int, str], ...]  # (replica, interceptor strategy or "policy-only")
    honest_policies: tuple[str, ...]
    phases: tuple[tuple, ...]  # (network action, submits, run_ms)

    @property
    def byzantine_ids(self) -> set[int]:
        return {replica_id for replica_id, _ in self.byzantine}

    @property
    def network_loses_messages(self) -> bool:
        return self.drop_probability > 0 or any(action[0] in ("partition", "crash") for action, _, _ in self.phases)

    @property
    def primary_is_honest(self) -> bool:
        return 0 not in self.byzantine_ids


def phases_for(replica_count: int):
    """One phase: an optional network action, a burst of submits, then some simulated time."""
    submit = st.tuples(st.integers(0, len(CLIENTS) - 1), st.sampled_from(list(Risk)),
                       st.sampled_from(SHORT_DEADLINE_MS + (LONG_DEADLINE_MS,) * 3))
    action = st.one_of(
        st.just(("none",)), st.just(("none",)), st.just(("heal",)),
        st.tuples(st.just("partition"),
                  st.frozensets(st.integers(0, replica_count - 1), min_size=1, max_size=replica_count - 1)),
        st.tuples(st.just("resend"), st.integers(0, 8)),
        st.tuples(st.just("crash"), st.integers(0, replica_count - 1)))
    return st.tuples(action, st.lists(submit, min_size=1, max_size=2), st.integers(5, 150))


@st.composite
def schedules(draw, replica_counts=(4, 4, 4, 4, 5), byzantine_strategies=tuple(sorted(STRATEGIES)) + ("policy-only",),
              byzantine_primary: bool = False, phases_max: int = 2):
    """A schedule; with ``byzantine_primary`` replica 0 is always one of the (up to f) Byzantine replicas."""
    replica_count = draw(st.sampled_from(replica_counts))
    faulty = draw(st.sets(st.integers(0, replica_count - 1), max_size=max_faulty(replica_count)))
    if byzantine_primary:
        faulty = {0} | set(sorted(faulty - {0})[:max_faulty(replica_count) - 1])
    byzantine = tuple((replica_id, draw(st.sampled_from(byzantine_strategies))) for replica_id in sorted(faulty))
    return Schedule(
        replica_count=replica_count,
        seed=draw(st.integers(0, 2**32 - 1)),
        drop_probability=draw(st.sampled_from((0.0, 0.0, 0.0, 0.03, 0.15))),
        duplicate_probability=draw(st.sampled_from((0.0, 0.1, 0.3))),
        delay_ms_max=draw(st.sampled_from((1, 5, 25, 80))),
        tight_limits=draw(st.booleans()),
        byzantine=byzantine,
        honest_policies=tuple(draw(st.sampled_from(sorted(HONEST_POLICIES))) for _ in range(replica_count)),
        phases=tuple(draw(st.lists(phases_for(replica_count), min_size=1, max_size=phases_max))),
    )


def build(schedule: Schedule) -> SimCluster:
    policies = {i: HONEST_POLICIES[name]() for i, name in enumerate(schedule.honest_policies)}
    interceptors = {}
    for replica_id, strategy in schedule.byzantine:
        policies[replica_id] = ApproveEverything()  # A Byzantine replica's own opinion is always the worst one.
        if strategy != "policy-only":
            interceptors[replica_id] = STRATEGIES[strategy](schedule.seed + replica_id, schedule.replica_count)
    faults = NetworkFaults(drop_probability=schedule.drop_probability,
                           duplicate_probability=schedule.duplicate_probability,
                           delay_ms_min=1, delay_ms_max=schedule.delay_ms_max)
    return SimCluster(schedule.replica_count, seed=schedule.seed, policies=policies, client_ids=CLIENTS,
                      faults=faults, interceptors=interceptors, limits=TIGHT_LIMITS if schedule.tight_limits else None)


def restart_crashed(cluster: SimCluster) -> None:
    """A crash lasts one phase: the replica comes back from exactly what its store made durable."""
    for replica_id in sorted(cluster.crashed):
        cluster.restart(replica_id)


def apply_phase(cluster: SimCluster, phase: tuple, requests: list, patient: list) -> None:
    action, submits, run_ms = phase
    restart_crashed(cluster)
    if action[0] == "crash":
        cluster.crash(action[1])
    elif action[0] == "partition":
        cluster.partition(set(action[1]), set(range(len(cluster.replicas))) - set(action[1]))
    elif action[0] == "heal":
        cluster.heal()
    elif action[0] == "resend" and requests:
        cluster.resend(requests[action[1] % len(requests)])
    for client, risk, deadline_offset_ms in submits:
        request = cluster.submit(CLIENTS[client], {"tool": "t", "n": len(requests)}, risk,
                                 deadline_ms=cluster.now_ms + deadline_offset_ms)
        requests.append(request)
        if deadline_offset_ms == LONG_DEADLINE_MS:
            patient.append(request)
    cluster.run(run_ms)


def run_schedule(schedule: Schedule, after_healing_ms: int) -> None:
    """Run ``schedule`` checking every invariant after each phase; then heal and check again.

    Liveness is asserted only where it is promised: an honest primary and a
    network that lost nothing.  Otherwise the healed cluster runs for
    ``after_healing_ms`` (long enough for a view change, when the caller wants
    one) and only safety is checked.
    """
    cluster = build(schedule)
    correct = set(range(schedule.replica_count)) - schedule.byzantine_ids
    monitor = SimMonitor(cluster, correct)
    requests: list = []
    patient: list = []  # Requests whose deadline lies beyond any liveness window.
    for index, phase in enumerate(schedule.phases):
        apply_phase(cluster, phase, requests, patient)
        monitor.assert_ok(f"after phase {index} {phase} of {schedule}")
    cluster.heal()
    restart_crashed(cluster)
    cluster.faults = NetworkFaults(delay_ms_min=1, delay_ms_max=schedule.delay_ms_max)
    if schedule.primary_is_honest and not schedule.network_loses_messages:
        assert cluster.run_until(cluster.all_done, LIVENESS_WITHIN_MS), f"no progress: {schedule}"
        unanswered = [r.key for r in patient if cluster.operations[r.key].certificate is None]
        assert not unanswered, f"requests with distant deadlines got no certificate: {unanswered} in {schedule}"
    else:
        cluster.run(after_healing_ms)
    monitor.assert_ok(f"after healing, {schedule}")


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=1700, **SETTINGS)
@given(schedule=schedules())
def test_random_schedules_keep_every_invariant(schedule: Schedule) -> None:
    run_schedule(schedule, SHORT_AFTERMATH_MS)


@settings(max_examples=300, **SETTINGS)
@given(schedule=schedules(replica_counts=(4,), byzantine_primary=True, phases_max=2, byzantine_strategies=(
    "equivocating-primary", "equivocating-hiding-primary", "veto-dropping-primary", "forged-signatures",
    "mangled-messages", "silent")))
def test_random_schedules_with_a_byzantine_primary_keep_every_invariant(schedule: Schedule) -> None:
    """Byzantine behaviour concentrated on what hurts most: the primary (replica 0) lying or silent."""
    assert 0 in schedule.byzantine_ids
    run_schedule(schedule, VIEW_CHANGE_AFTERMATH_MS)


def test_regression_a_new_primary_adopting_a_checkpoint_proposes_only_after_installing_its_view() -> None:
    """Found by the schedules above (seed 162393).  Replica 1 becomes primary of view 1 and, inside
    ``ViewChanges._enter_view``, adopts the NEW-VIEW's stable checkpoint; ``Checkpoints.advance_low_water`` then calls
    ``_maybe_propose`` while the view is already active but before the re-proposals and ``next_seq``
    are installed.  The signing guard stops the conflicting pre-prepare at the re-proposed seq, but the
    batch proposed at the next seq is proposed again after ``_enter_view`` resets ``proposed_seq``, and
    ``_accept_preprepare`` asserts on the occupied slot: a correct replica crashes."""
    schedule = Schedule(
        replica_count=4, seed=162393, drop_probability=0.03, duplicate_probability=0.0, delay_ms_max=25,
        tight_limits=True, byzantine=((0, "veto-dropping-primary"),),
        honest_policies=("allow", "allow", "allow", "coin"),
        phases=((("none",), [(0, Risk.LOW, 15), (0, Risk.LOW, 15)], 31),
                (("none",), [(0, Risk.LOW, 15), (0, Risk.LOW, 15)], 31),
                (("resend", 0), [(0, Risk.LOW, 15)], 21)))
    run_schedule(schedule, VIEW_CHANGE_AFTERMATH_MS)
