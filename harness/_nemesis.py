"""The nemesis: a seeded schedule of faults, applied to a ``SimCluster`` as simulated time passes.

Fault kinds follow Jepsen's catalogue, over replica ids only (clients keep
talking to every replica):

- partitions: ``halves``, ``isolated-node``, ``isolated-primary``, ``bridge``
  (two halves that both still reach one bridge replica) and ``majorities-ring``
  (every replica sees a majority, no two see the same one).  One partition is
  active at a time, as in Jepsen.
- network: message ``drop``, ``duplicate`` and ``delay`` (reordering), which may
  overlap; the strongest active setting of each wins.
- ``crash``: a replica stops; it restarts when its window ends if the
  simulator offers ``restart``, else it stays down for the run.
- ``byzantine``: a named strategy from ``bft.testing`` (a lying policy or a
  message interceptor), active from its start to the end of the run or, for the
  primary, to the liveness phase.

At most f replicas are ever faulty in one run (crashed or Byzantine), so the
run stays within what PBFT promises to tolerate.  The whole plan is drawn up
front from the seed, and every event records when it really started and ended.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

from bft.testing import NetworkFaults, SimCluster

PARTITION_KINDS = ("partition-halves", "partition-isolated-node", "partition-isolated-primary",
                   "partition-bridge", "partition-majorities-ring")
NETWORK_KINDS = ("network-drop", "network-duplicate", "network-delay")
PROCESS_KINDS = ("crash", "byzantine")
FAULT_KINDS = PARTITION_KINDS + NETWORK_KINDS + PROCESS_KINDS

POLICY_STRATEGIES = ("approve-everything", "deny-everything")
PRIMARY_STRATEGIES = ("equivocating-primary", "forging-collector", "veto-dropping-primary")
WINDOWS_PER_KIND_MAX = 2
WINDOW_MS_MIN, WINDOW_MS_MAX = 150, 900


@dataclass
class FaultEvent:
    """One planned fault.  ``end_ms`` None: it lasts until the nemesis heals it (or the run ends)."""

    kind: str
    start_ms: int
    end_ms: int | None
    targets: tuple[int, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)
    applied_start_ms: int | None = None
    applied_end_ms: int | None = None

    @property
    def strategy(self) -> str | None:
        return self.detail.get("strategy")

    @property
    def coverage_name(self) -> str:
        """The name fault coverage counts: Byzantine faults count per strategy."""
        return f"byzantine:{self.strategy}" if self.kind == "byzantine" else self.kind

    def describe(self) -> str:
        ended = "end of run" if self.applied_end_ms is None else f"{self.applied_end_ms} ms"
        started = "never" if self.applied_start_ms is None else f"{self.applied_start_ms} ms"
        extra = ", ".join(f"{name}={value}" for name, value in sorted(self.detail.items()))
        return f"{self.coverage_name} on {list(self.targets)}{f' ({extra})' if extra else ''} from {started} to {ended}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "coverage_name": self.coverage_name, "targets": list(self.targets),
                "detail": self.detail, "planned_start_ms": self.start_ms, "planned_end_ms": self.end_ms,
                "start_ms": self.applied_start_ms, "end_ms": self.applied_end_ms}


# ----------------------------------------------------------------- planning


def byzantine_strategy_names() -> tuple[str, ...]:
    """Every strategy the nemesis can use: lying policies plus the simulator's interceptors."""
    from bft.testing import STRATEGIES
    return POLICY_STRATEGIES + tuple(sorted(STRATEGIES))


def plan_faults(chooser: random.Random, replica_count: int, faulty_max: int, kinds: frozenset[str],
                phase_ms: int, can_restart: bool) -> list[FaultEvent]:
    """A fault schedule for a safety phase of ``phase_ms``, using only ``kinds``."""
    assert kinds <= set(FAULT_KINDS), kinds - set(FAULT_KINDS)
    assert phase_ms > WINDOW_MS_MIN and replica_count >= 1
    events = _plan_partitions(chooser, [k for k in PARTITION_KINDS if k in kinds], phase_ms)
    for kind in (k for k in NETWORK_KINDS if k in kinds):
        for _ in range(chooser.randint(1, WINDOWS_PER_KIND_MAX)):
            start, end = _window(chooser, phase_ms)
            events.append(FaultEvent(kind, start, end, detail=_network_detail(chooser, kind)))
    events += _plan_process_faults(chooser, replica_count, faulty_max, kinds, phase_ms, can_restart)
    events.sort(key=lambda event: (event.start_ms, FAULT_KINDS.index(event.kind)))
    return events


def _window(chooser: random.Random, phase_ms: int) -> tuple[int, int]:
    length = chooser.randint(WINDOW_MS_MIN, min(WINDOW_MS_MAX, phase_ms // 2))
    start = chooser.randint(0, phase_ms - length)
    return start, start + length


def _plan_partitions(chooser: random.Random, kinds: list[str], phase_ms: int) -> list[FaultEvent]:
    """Partition windows laid end to end with gaps, so only one is active at a time."""
    chosen = [kind for kind in kinds for _ in range(chooser.randint(1, WINDOWS_PER_KIND_MAX))]
    chooser.shuffle(chosen)
    events, cursor = [], chooser.randint(0, WINDOW_MS_MIN)
    for kind in chosen:
        length = chooser.randint(WINDOW_MS_MIN, WINDOW_MS_MAX)
        if cursor + length > phase_ms:
            break
        events.append(FaultEvent(kind, cursor, cursor + length))
        cursor += length + chooser.randint(50, 400)
    return events


def _network_detail(chooser: random.Random, kind: str) -> dict[str, Any]:
    if kind == "network-drop":
        return {"drop_probability": round(chooser.uniform(0.01, 0.2), 3)}
    if kind == "network-duplicate":
        return {"duplicate_probability": round(chooser.uniform(0.05, 0.5), 3)}
    return {"delay_ms_max": chooser.randint(20, 400)}


def _plan_process_faults(chooser: random.Random, replica_count: int, faulty_max: int, kinds: frozenset[str],
                         phase_ms: int, can_restart: bool) -> list[FaultEvent]:
    """Crashes and Byzantine replicas, on at most ``faulty_max`` distinct replicas in total."""
    wanted = [kind for kind in PROCESS_KINDS if kind in kinds]
    if not wanted or faulty_max == 0:
        return []
    victims = chooser.sample(range(replica_count), chooser.randint(1, faulty_max))
    if chooser.random() < 0.4 and 0 not in victims:
        victims[0] = 0  # The view-0 primary is the most interesting victim; make it one often.
    chooser.shuffle(wanted)  # With one victim (f = 1) and both kinds wanted, either may get it.
    events = []
    for position, victim in enumerate(victims):
        kind = wanted[position % len(wanted)]
        if kind == "crash":
            start, end = _window(chooser, phase_ms)
            events.append(FaultEvent("crash", start, end if can_restart else None, (victim,)))
        else:
            events.append(_byzantine_event(chooser, victim, phase_ms))
    assert len({event.targets for event in events}) == len(events) <= faulty_max
    return events


def _byzantine_event(chooser: random.Random, victim: int, phase_ms: int) -> FaultEvent:
    names = [name for name in byzantine_strategy_names() if victim == 0 or name not in PRIMARY_STRATEGIES]
    strategy = chooser.choice(names)
    start = chooser.choice((0, chooser.randint(0, phase_ms // 2)))
    return FaultEvent("byzantine", start, None, (victim,),
                      {"strategy": strategy, "strategy_seed": chooser.randrange(2**32)})


# ----------------------------------------------------------------- applying


def majorities_ring_links(replica_ids: list[int]) -> set[tuple[int, int]]:
    """Block links so each replica reaches only its ring neighbours, a majority counting itself.

    With ``reach`` neighbours on each side, every replica sees 2*reach+1 >= n//2+1
    replicas, and each sees a different set as the ring turns.
    """
    count = len(replica_ids)
    reach = max(1, -(-(count // 2) // 2))
    blocked = set()
    for i, a in enumerate(replica_ids):
        for j, b in enumerate(replica_ids):
            distance = min(abs(i - j), count - abs(i - j))
            if distance > reach:
                blocked.add((a, b))
    assert all((b, a) in blocked for a, b in blocked)
    return blocked


def bridge_links(replica_ids: list[int]) -> set[tuple[int, int]]:
    """Two halves that cannot talk, and the first replica of ``replica_ids`` talking to both."""
    bridge, rest = replica_ids[0], replica_ids[1:]
    left, right = rest[:len(rest) // 2], rest[len(rest) // 2:]
    blocked = {(a, b) for a in left for b in right} | {(b, a) for a in left for b in right}
    assert not any(bridge in link for link in blocked)
    return blocked


class Nemesis:
    """Applies a plan to a cluster as ``advance`` is called with the elapsed simulated time."""

    def __init__(self, cluster: SimCluster, events: list[FaultEvent], seed: int,
                 base_policies: dict[int, Any]) -> None:
        self.cluster = cluster
        self.events = events
        self.chooser = random.Random(seed)
        self.base_policies = dict(base_policies)
        self.can_restart = hasattr(cluster, "restart")
        self.healed = False
        self.notes: list[str] = []

    @property
    def byzantine_replicas(self) -> set[int]:
        """Replicas that were ever Byzantine: the invariants must not trust their logs."""
        return {event.targets[0] for event in self.events
                if event.kind == "byzantine" and event.applied_start_ms is not None}

    @property
    def faulty_replicas(self) -> set[int]:
        """Replicas that were ever crashed or Byzantine; the plan keeps them to at most f."""
        return {event.targets[0] for event in self.events
                if event.kind in PROCESS_KINDS and event.applied_start_ms is not None}

    def active(self) -> list[FaultEvent]:
        return [event for event in self.events
                if event.applied_start_ms is not None and event.applied_end_ms is None]

    def advance(self, elapsed_ms: int) -> None:
        """Start and end every event that is due by ``elapsed_ms``; at most one change of each per event."""
        if self.healed:
            return
        for event in self.events:
            if event.applied_start_ms is None and event.start_ms <= elapsed_ms:
                event.applied_start_ms = elapsed_ms
                self._start(event)
            if (event.applied_start_ms is not None and event.applied_end_ms is None
                    and event.end_ms is not None and event.end_ms <= elapsed_ms):
                event.applied_end_ms = elapsed_ms
                self._end(event)
        self._apply_network()

    def heal_for_liveness(self, elapsed_ms: int) -> list[str]:
        """End every fault but Byzantine non-primary replicas; say what stays faulty and why."""
        self.healed = True
        primary = self._primary()
        for event in self.events:
            if event.applied_start_ms is None or event.applied_end_ms is not None:
                continue  # Never started (the phase ended first), or already over.
            if event.kind == "byzantine" and event.targets[0] != primary:
                self.notes.append(f"replica {event.targets[0]} stays Byzantine ({event.strategy}) "
                                  "in the liveness phase")
                continue
            if event.kind == "crash" and not self.can_restart:
                self.notes.append(f"replica {event.targets[0]} stays crashed: SimCluster has no restart yet")
                continue
            event.applied_end_ms = elapsed_ms
            self._end(event)
        self._apply_network()
        return self.notes

    # ------------------------------------------------------------- effects

    def _primary(self) -> int:
        """The primary as the lowest-numbered non-crashed correct replica sees it."""
        correct = [i for i in range(len(self.cluster.replicas))
                   if i not in self.cluster.crashed and i not in self.byzantine_replicas]
        witness = self.cluster.replicas[correct[0] if correct else 0]
        return witness.primary_id

    def _start(self, event: FaultEvent) -> None:
        cluster, replica_ids = self.cluster, list(range(len(self.cluster.replicas)))
        if event.kind in PARTITION_KINDS:
            event.targets = tuple(self._start_partition(event.kind, replica_ids))
        elif event.kind == "crash":
            cluster.crash(event.targets[0])
        elif event.kind == "byzantine":
            self._start_byzantine(event)

    def _start_partition(self, kind: str, replica_ids: list[int]) -> list[int]:
        """Install the partition; return the replicas it singles out (for the timeline)."""
        shuffled = self.chooser.sample(replica_ids, len(replica_ids))
        if kind == "partition-halves":
            half = len(shuffled) // 2
            self.cluster.partition(set(shuffled[:half]), set(shuffled[half:]))
            return sorted(shuffled[:half])
        if kind in ("partition-isolated-node", "partition-isolated-primary"):
            lonely = self._primary() if kind == "partition-isolated-primary" else shuffled[0]
            self.cluster.partition({lonely}, set(replica_ids) - {lonely})
            return [lonely]
        if kind == "partition-bridge":
            self.cluster.blocked_links = bridge_links(shuffled)
            return [shuffled[0]]
        assert kind == "partition-majorities-ring", kind
        self.cluster.blocked_links = majorities_ring_links(shuffled)
        return shuffled

    def _start_byzantine(self, event: FaultEvent) -> None:
        from bft.testing import STRATEGIES, ApproveEverything, DenyEverything
        victim, strategy = event.targets[0], event.strategy
        if strategy in POLICY_STRATEGIES:
            lying = ApproveEverything() if strategy == "approve-everything" else DenyEverything()
            self.cluster.policies[victim] = lying
            return
        factory: Callable = STRATEGIES[strategy]
        self.cluster.interceptors[victim] = factory(event.detail["strategy_seed"], len(self.cluster.replicas))

    def _end(self, event: FaultEvent) -> None:
        cluster = self.cluster
        if event.kind in PARTITION_KINDS:
            cluster.heal()
        elif event.kind == "crash":
            assert self.can_restart, "a crash is planned to end only when the simulator can restart"
            cluster.restart(event.targets[0])
        elif event.kind == "byzantine":
            victim = event.targets[0]
            cluster.interceptors.pop(victim, None)
            cluster.policies[victim] = self.base_policies[victim]

    def _apply_network(self) -> None:
        """Set the network to the strongest setting among active network faults (benign if none)."""
        benign = NetworkFaults()
        active = [event.detail for event in self.active() if event.kind in NETWORK_KINDS]
        self.cluster.faults = NetworkFaults(
            drop_probability=max([d.get("drop_probability", 0.0) for d in active], default=0.0),
            duplicate_probability=max([d.get("duplicate_probability", 0.0) for d in active], default=0.0),
            delay_ms_min=benign.delay_ms_min,
            delay_ms_max=max([d.get("delay_ms_max", benign.delay_ms_max) for d in active], default=benign.delay_ms_max))
