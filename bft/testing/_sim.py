"""A seeded simulation of a whole cluster: replicas, clients, a faulty network and a clock.

Everything is driven from one ``random.Random(seed)`` in one thread, so a run
is reproduced exactly by its seed.  Every message crosses the real codec
(encode on send, decode on delivery), so the simulator exercises the same
bytes a real network would carry.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping

from ..core import (ClientCore, ClusterConfig, Commit, Decision, KeyPair, Limits, LogEntry, LogRead, Message,
                    Prepare, Ready, Rejection, RemoteProtocolError, Replica, Reply, Request, Risk, Signer,
                    VerdictCertificate, apply_ready, decode, encode, request_digest, send_unguarded)
from ..policy import Policy, PolicyDecision, evaluate_fail_safe
from ..storage import MemoryStore, Store, StorePruner

Endpoint = int | str | tuple  # A replica id, a client id, or ("twin", replica id).

# An interceptor stands in for a Byzantine replica's network card: it sees each
# message that replica sends to ``destination`` and returns what is really sent.
Interceptor = Callable[[int, Message, Signer], list[Message]]


@dataclass
class NetworkFaults:
    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    delay_ms_min: int = 1
    delay_ms_max: int = 5


class AllowAll:
    name = "allow-all"

    def evaluate(self, action, context) -> PolicyDecision:
        return PolicyDecision.allow("allow-all")


@dataclass
class ClientRecord:
    """What the simulation observed for one client operation."""

    request: Request
    invoked_ms: int
    certificate: VerdictCertificate | None = None
    completed_ms: int | None = None
    refused: bool = False


def keypair_for_test(cluster_seed: int, name: str) -> KeyPair:
    return KeyPair.from_seed(hashlib.sha256(f"bft-test-key/{cluster_seed}/{name}".encode()).digest())


class SimCluster:
    def __init__(self, replica_count: int = 4, *, seed: int = 0, policies: Mapping[int, Policy] | None = None,
                 client_ids: tuple[str, ...] = ("client-0",), limits: Limits | None = None,
                 faults: NetworkFaults | None = None, tick_ms: int = 10,
                 interceptors: Mapping[int, Interceptor] | None = None, key_seed: int = 0,
                 config_options: Mapping[str, Any] | None = None,
                 store_factory: Callable[[int], Store] | None = None, prune_stores: bool = False,
                 record_history: bool = True, full_invariant_checks: bool = True) -> None:
        """``store_factory(replica_id)`` opens a replica's store (called again on restart, so a file-backed
        store is reopened from disk); by default each replica gets a ``MemoryStore``.  ``prune_stores``
        prunes stores as a production driver does (``StorePruner``).  Without ``record_history`` the
        simulation keeps no per-request records once a request completes (for very long runs).
        ``full_invariant_checks`` runs each replica's full ``Replica.check_invariants`` after every input (the
        core itself checks only its bounds then); a benchmark of the core's own cost turns it off."""
        self.random = random.Random(seed)
        self.tick_ms = tick_ms
        self.now_ms = 1_000_000
        self.faults = faults or NetworkFaults()
        replica_keys = [keypair_for_test(key_seed, f"replica-{i}") for i in range(replica_count)]
        client_keys = {client_id: keypair_for_test(key_seed, client_id) for client_id in client_ids}
        self.config = ClusterConfig.create("sim", tuple(k.public_key for k in replica_keys),
                                           {c: k.public_key for c, k in client_keys.items()}, limits=limits,
                                           **(config_options or {}))
        self.replica_seeds = [k.seed for k in replica_keys]
        self.replicas = [Replica(self.config, i, self.replica_seeds[i]) for i in range(replica_count)]
        self.store_factory = store_factory
        self.stores = [store_factory(i) if store_factory else MemoryStore() for i in range(replica_count)]
        self.pruners = [StorePruner() if prune_stores else None for _ in range(replica_count)]
        self.record_history = record_history
        self.full_invariant_checks = full_invariant_checks
        # Replica -> (persisting outputs still to let through, whether the crash comes before the store writes,
        # which outputs count).
        self.armed_crashes: dict[int, tuple[int, bool, Callable[[Ready], bool]]] = {}
        self.policies: dict[int, Policy] = {i: AllowAll() for i in range(replica_count)}
        self.policies.update(policies or {})
        self.clients = {c: ClientCore(self.config, c, k.seed) for c, k in client_keys.items()}
        self.interceptors = dict(interceptors or {})
        self.crashed: set[int] = set()
        self.slow_sources_ms: dict[Endpoint, int] = {}
        self.slow_links_ms: dict[tuple[Endpoint, Endpoint], int] = {}  # Extra one-way delay per (source, destination).
        self.twins: dict[int, Replica] = {}
        self.twin_stores: dict[int, MemoryStore] = {}
        self.twin_finalized: dict[int, list] = {}
        self.blocked_links: set[tuple[Endpoint, Endpoint]] = set()
        self.operations: dict[tuple[str, int], ClientRecord] = {}
        self.finalized: list[list] = [[] for _ in range(replica_count)]
        self.decode_failures = 0
        self._queue: list = []
        self._sequence = 0
        for replica in self.replicas:
            self._handle_ready(replica.replica_id, replica.tick(self.now_ms))

    # ------------------------------------------------------------ client side

    def submit(self, client_id: str, action: Mapping, risk: Risk = Risk.LOW,
               deadline_ms: int | None = None, to: Collection[int] | None = None) -> Request:
        """Sign a request as ``client_id`` and send it to every replica (or only to the replicas in ``to``)."""
        deadline = deadline_ms if deadline_ms is not None else self.now_ms + 30_000
        request = self.clients[client_id].new_request(action, risk, deadline)
        self.operations[request.key] = ClientRecord(request, self.now_ms)
        for replica_id in (range(len(self.replicas)) if to is None else sorted(to)):
            self._send(client_id, replica_id, request)
        return request

    def resend(self, request: Request) -> None:
        """A client retry: the same signed request again, to every replica."""
        for replica_id in range(len(self.replicas)):
            self._send(request.client_id, replica_id, request)

    def verdict(self, request: Request) -> Decision | None:
        record = self.operations[request.key]
        return record.certificate.decision if record.certificate else None

    # ------------------------------------------------------------ faults

    def partition(self, *groups: set[Endpoint]) -> None:
        """Block every link between endpoints in different groups (clients not listed are unaffected)."""
        self.blocked_links = {(a, b) for g in groups for h in groups if g is not h for a in g for b in h}

    def heal(self) -> None:
        self.blocked_links = set()

    def crash(self, replica_id: int) -> None:
        self.crashed.add(replica_id)

    def arm_crash_after_persist(self, replica_id: int, outputs_to_skip: int = 0,
                                when: Callable[[Ready], bool] = lambda ready: True) -> None:
        """Crash ``replica_id`` inside an output that persists anything (and satisfies ``when``), after
        letting ``outputs_to_skip`` such outputs through: what needs no disk leaves (``send_unguarded``),
        the store makes the items durable, then the replica dies before sending, finalizing or evaluating
        the rest."""
        assert outputs_to_skip >= 0
        self.armed_crashes[replica_id] = (outputs_to_skip, False, when)

    def arm_crash_before_persist(self, replica_id: int, outputs_to_skip: int = 0,
                                 when: Callable[[Ready], bool] = lambda ready: True) -> None:
        """As ``arm_crash_after_persist``, but the replica dies once what needs no disk left, before the
        store writes anything of that output: the latest a runtime may send it ahead of the disk."""
        assert outputs_to_skip >= 0
        self.armed_crashes[replica_id] = (outputs_to_skip, True, when)

    def restart(self, replica_id: int) -> None:
        """Bring a crashed replica back from exactly what its store made durable."""
        assert replica_id in self.crashed, "only a crashed replica can restart"
        if self.store_factory is not None:
            self.stores[replica_id].close()
            self.stores[replica_id] = self.store_factory(replica_id)
        recovered = self.stores[replica_id].load()
        if self.pruners[replica_id] is not None:
            self.pruners[replica_id] = StorePruner()
        self.replicas[replica_id] = Replica.recover(self.config, replica_id, self.replica_seeds[replica_id],
                                                    recovered.signed, recovered.log)
        self.finalized[replica_id] = list(recovered.log) if self.record_history else []
        self.crashed.discard(replica_id)

    def put_replica(self, replica: Replica, seed: bytes) -> None:
        """A replica joining through a configuration change (``harness._reconfiguration``): a new id is
        appended, an existing id (a replacement) gets the new replica, a fresh store and no history."""
        replica_id = replica.replica_id
        assert replica_id <= len(self.replicas) and replica_id not in self.twins
        fresh = self.store_factory(replica_id) if self.store_factory else MemoryStore()
        if replica_id == len(self.replicas):
            self.replicas.append(replica)
            self.replica_seeds.append(seed)
            self.stores.append(fresh)
            self.pruners.append(StorePruner() if self.pruners[0] is not None else None)
            self.finalized.append([])
            self.policies.setdefault(replica_id, AllowAll())
        else:
            self.replicas[replica_id], self.replica_seeds[replica_id] = replica, seed
            self.stores[replica_id], self.finalized[replica_id] = fresh, []
        self.crashed.discard(replica_id)
        self._handle_ready(replica_id, replica.tick(self.now_ms))

    def add_twin(self, replica_id: int) -> tuple:
        """Twins: a second, correct copy of ``replica_id`` with the same key, reachable as ("twin", id).

        Messages addressed to the replica reach both copies unless a partition
        blocks one; together the two copies behave like one equivocating replica.
        """
        twin = Replica(self.config, replica_id, self.replica_seeds[replica_id])
        self.twins[replica_id] = twin
        self.twin_stores[replica_id] = MemoryStore()
        self.twin_finalized[replica_id] = []
        self._handle_ready(("twin", replica_id), twin.tick(self.now_ms))
        return ("twin", replica_id)

    # ------------------------------------------------------------ running

    def run(self, duration_ms: int) -> None:
        end = self.now_ms + duration_ms
        while self.now_ms < end:
            self._advance_one_tick()

    def run_until(self, condition: Callable[[], bool], max_ms: int = 60_000) -> bool:
        """Run until ``condition()`` holds or ``max_ms`` of simulated time passes."""
        end = self.now_ms + max_ms
        while not condition():
            if self.now_ms >= end:
                return False
            self._advance_one_tick()
        return True

    def all_done(self) -> bool:
        return all(r.certificate or r.refused for r in self.operations.values())

    def _advance_one_tick(self) -> None:
        next_tick = self.now_ms + self.tick_ms
        while self._queue and self._queue[0][0] <= next_tick:
            deliver_at, _, source, destination, data = heapq.heappop(self._queue)
            self.now_ms = max(self.now_ms, deliver_at)
            self._deliver(source, destination, data)
        self.now_ms = next_tick
        for replica in self.replicas:
            if replica.replica_id not in self.crashed:
                self._handle_ready(replica.replica_id, replica.tick(self.now_ms))
        for replica_id, twin in self.twins.items():
            self._handle_ready(("twin", replica_id), twin.tick(self.now_ms))
        for client_id, client in self.clients.items():
            for request in client.expire(self.now_ms):
                self.operations[request.key].refused = True
                self.operations[request.key].completed_ms = self.now_ms
                if not self.record_history:
                    del self.operations[request.key]

    def _send(self, source: Endpoint, destination: Endpoint, message: Message) -> None:
        if isinstance(destination, int) and destination in self.twins:
            self._send_one(source, ("twin", destination), message)
        self._send_one(source, destination, message)

    def _send_one(self, source: Endpoint, destination: Endpoint, message: Message) -> None:
        if (source, destination) in self.blocked_links or self.random.random() < self.faults.drop_probability:
            return
        copies = 2 if self.random.random() < self.faults.duplicate_probability else 1
        for _ in range(copies):
            delay = self.random.randint(self.faults.delay_ms_min, self.faults.delay_ms_max)
            delay += self.slow_sources_ms.get(source, 0) + self.slow_links_ms.get((source, destination), 0)
            self._sequence += 1
            heapq.heappush(self._queue, (self.now_ms + delay, self._sequence, source, destination, encode(message)))

    def _deliver(self, source: Endpoint, destination: Endpoint, data: bytes) -> None:
        if destination in self.crashed:
            return
        try:
            message = decode(data)
        except RemoteProtocolError:
            self.decode_failures += 1  # A Byzantine sender's garbage: real transports drop it too.
            return
        if isinstance(destination, str):
            self._deliver_to_client(destination, message)
            return
        if isinstance(destination, int) and destination >= len(self.replicas):
            return  # An id of a later epoch whose replica has not joined yet: nobody listens there.
        replica = self.twins[destination[1]] if isinstance(destination, tuple) else self.replicas[destination]
        from_client = isinstance(source, str) and isinstance(message, Request)
        ready = replica.submit(message) if from_client else replica.step(message)
        self._handle_ready(destination, ready)
        if isinstance(message, (Prepare, Commit)) and relays_phase_votes(self.interceptors.get(destination)):
            for other in range(len(self.replicas)):
                if other not in (destination, message.replica_id):
                    self._send_from_replica(destination, other, message)

    def _deliver_to_client(self, client_id: str, message: Message) -> None:
        if not isinstance(message, Reply):
            return
        client = self.clients.get(client_id)
        if client is None:
            return  # A reply to a command signer ("replica:I") that no simulated client drives.
        certificate = client.on_reply(message)
        record = self.operations.get((client_id, message.request_number))
        if certificate is not None and record is not None:
            record.certificate = certificate
            record.completed_ms = self.now_ms
            if not self.record_history:
                del self.operations[record.request.key]

    def _handle_ready(self, endpoint: Endpoint, ready: Ready) -> None:
        is_twin = isinstance(endpoint, tuple)
        replica_id = endpoint[1] if is_twin else endpoint
        store = self.twin_stores[replica_id] if is_twin else self.stores[replica_id]
        if not is_twin and replica_id in self.crashed:
            return  # Output of a replica that died earlier in this same step never happened.
        if self.full_invariant_checks:
            (self.twins[replica_id] if is_twin else self.replicas[replica_id]).check_invariants()
        replica = self.twins[replica_id] if is_twin else self.replicas[replica_id]
        io = _SimIO(self, endpoint, store)
        armed = None if is_twin else self.armed_crashes.get(replica_id)
        if armed is not None and ready.persist and armed[2](ready):
            outputs_to_skip, before_the_store, when = armed
            if outputs_to_skip == 0:
                send_unguarded(ready, io)
                if not before_the_store:
                    store.persist(ready.persist)  # Durable; then the process dies before the rest leaves.
                del self.armed_crashes[replica_id]
                self.crash(replica_id)
                return
            self.armed_crashes[replica_id] = (outputs_to_skip - 1, before_the_store, when)
        apply_ready(ready, replica, io)

    def _send_from_replica(self, replica_id: int, destination: Endpoint, message: Message) -> None:
        interceptor = self.interceptors.get(replica_id)
        if interceptor is None:
            self._send(replica_id, destination, message)
            return
        signer = Signer(self.config.cluster_id, self.replica_seeds[replica_id])
        for forged in interceptor(destination, message, signer):
            self._send(replica_id, destination, forged)

    def _evaluate(self, endpoint: Endpoint, request: Request) -> None:
        replica_id = endpoint[1] if isinstance(endpoint, tuple) else endpoint
        replica = self.twins[replica_id] if isinstance(endpoint, tuple) else self.replicas[replica_id]
        decision = evaluate_fail_safe(self.policies[replica_id], request, replica_id,
                                      replica.execution.agreed_history(request.client_id))
        digest = request_digest(self.config.cluster_id, request)
        self._handle_ready(endpoint, replica.record_decision(digest, decision.decision, decision.reason))



def relays_phase_votes(interceptor: Interceptor | None) -> bool:
    """Whether a Byzantine replica relays every PREPARE and COMMIT it receives (``_byzantine.relaying``)."""
    return getattr(interceptor, "relays_phase_votes", False)


class _SimIO:
    """The simulator's side of the driving contract for one replica (or twin): its store and the network."""

    def __init__(self, cluster: SimCluster, endpoint: Endpoint, store: Store) -> None:
        self.cluster, self.endpoint, self.store = cluster, endpoint, store
        self.is_twin = isinstance(endpoint, tuple)
        self.replica_id = endpoint[1] if self.is_twin else endpoint

    def persist(self, items: tuple[Message | LogEntry, ...]) -> int:
        return self.store.persist(items)

    def send_to_replica(self, replica_id: int, message: Message) -> None:
        self._send(replica_id, message)

    def send_to_client(self, client_id: str, reply: Reply) -> None:
        self._send(client_id, reply)

    def _send(self, destination: Endpoint, message: Message) -> None:
        if self.is_twin:
            self.cluster._send(self.endpoint, destination, message)
        else:
            self.cluster._send_from_replica(self.replica_id, destination, message)

    def finalized(self, entries: tuple[LogEntry, ...]) -> None:
        cluster = self.cluster
        if cluster.record_history:
            (cluster.twin_finalized if self.is_twin else cluster.finalized)[self.replica_id].extend(entries)

    def forget_votes(self, request_digests: tuple[bytes, ...]) -> None:
        """With ``prune_stores``, the ``StorePruner`` batches these with what the water marks made obsolete."""
        pruner = None if self.is_twin else self.cluster.pruners[self.replica_id]
        if pruner is not None:
            replica = self.cluster.replicas[self.replica_id]
            pruner.after_ready(self.store, replica, Ready(dead_votes=request_digests))

    def rejected(self, rejection: Rejection) -> None:
        """The simulator counts nothing per rejection; the checkers judge outcomes, not inputs."""

    def read_log(self, read: LogRead) -> tuple[LogEntry, ...]:
        return self.store.read_log(read.first_position, read.last_position)

    def evaluate(self, request: Request) -> None:
        self.cluster._evaluate(self.endpoint, request)

    def feed(self, ready: Ready) -> None:
        self.cluster._handle_ready(self.endpoint, ready)
