"""The cluster an interaction script drives: sans-IO replicas, their stores, clients and a FIFO network.

Nothing happens on its own.  A message sent is queued until a script command
delivers or drops it; a replica's clock moves only on ``tick``; a policy answers
at once (``allow``/``deny``) or waits for ``decide`` (``manual``).  Every input's
``Ready`` goes through ``bft.core.apply_ready`` (persist, then send, ...)
and is written out as lines, so the output of a command is everything the replicas did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..core import (ClientCore, ClusterConfig, Decision, Limits, LogEntry, LogRead, Message, Ready, Rejection, Replica,
                    Reply, Request, Risk, Signer, apply_ready, decode, encode, request_digest)
from ..policy import PolicyDecision, evaluate_fail_safe
from ..storage import MemoryStore
from ._interaction_text import TYPE_NAMES, RequestNames, final_line, quoted
from ._sim import Interceptor, keypair_for_test

START_MS = 1_000_000
TICK_MS = 10
OPERATOR = "alice"
Endpoint = int | str  # A replica id or a client id.


class ScriptError(Exception):
    """A script asked for something impossible (bad arguments, an unknown replica); names the reason."""


def endpoint_name(endpoint: Endpoint) -> str:
    return f"r{endpoint}" if isinstance(endpoint, int) else endpoint


def names_of(endpoints) -> str:
    return ",".join(endpoint_name(endpoint) for endpoint in endpoints)


@dataclass
class InFlight:
    source: Endpoint
    destination: Endpoint
    data: bytes  # Every message crosses the real codec, as on a network.

    def message(self) -> Message:
        return decode(self.data)


class FixedPolicy:
    """A policy that answers every action with one decision; the reason names it."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.name = decision.value.lower()

    def evaluate(self, action, context) -> PolicyDecision:
        return PolicyDecision(self.decision, f"policy {self.name}")


class InteractionCluster:
    """n replicas with their stores, the clients (and operator alice), the queue and the fault switches.

    Keys come from ``keypair_for_test(key_seed, name)``, so every run signs the same bytes.
    Stores are never pruned, so ``log`` and restarts see everything a replica persisted.
    """

    def __init__(self, replica_count: int, client_ids: tuple[str, ...], limits: Limits, key_seed: int = 0) -> None:
        replica_keys = [keypair_for_test(key_seed, f"replica-{i}") for i in range(replica_count)]
        client_keys = {client_id: keypair_for_test(key_seed, client_id) for client_id in client_ids}
        operator_key = keypair_for_test(key_seed, f"operator-{OPERATOR}")
        self.config = ClusterConfig.create("golden", tuple(k.public_key for k in replica_keys),
                                           {c: k.public_key for c, k in client_keys.items()}, limits=limits,
                                           operator_keys={OPERATOR: operator_key.public_key})
        self.seeds = [k.seed for k in replica_keys]
        self.now_ms = START_MS
        self.tick_count = 0
        self.replicas = [Replica(self.config, i, self.seeds[i]) for i in range(replica_count)]
        self.stores = [MemoryStore() for _ in range(replica_count)]
        self.clients = {c: ClientCore(self.config, c, k.seed) for c, k in client_keys.items()}
        self.clients[f"operator:{OPERATOR}"] = ClientCore(self.config, f"operator:{OPERATOR}", operator_key.seed)
        self.names = RequestNames(self.config.cluster_id)
        self.crashed: set[int] = set()
        self.held: dict[int, list[Ready]] = {}  # Replicas whose Readies wait for process-ready.
        self.policies: dict[int, str] = {i: "allow" for i in range(replica_count)}
        self.awaiting_decision: dict[int, list[Request]] = {i: [] for i in range(replica_count)}
        self.interceptors: dict[int, Interceptor] = {}
        self.blocked: set[tuple[int, int]] = set()
        self.queue: list[InFlight] = []
        for replica in self.replicas:
            assert replica.tick(self.now_ms).is_empty(), "a fresh replica has nothing to say on its first tick"

    @property
    def replica_count(self) -> int:
        return len(self.replicas)

    # ------------------------------------------------------------ applying a Ready

    def feed(self, replica_id: int, ready: Ready, lines: list[str], indent: str) -> None:
        """Apply one Ready of ``replica_id`` (or hold it) and write what it did into ``lines``."""
        self.replicas[replica_id].check_invariants()
        if replica_id in self.held:
            self.held[replica_id].append(ready)
            if not ready.is_empty():
                lines.append(f"{indent}r{replica_id} ready held ({self._ready_size(ready)} items)")
            return
        self._apply(replica_id, ready, lines, indent)

    @staticmethod
    def _ready_size(ready: Ready) -> int:
        return sum(len(part) for part in (ready.persist, ready.to_replicas, ready.forwards, ready.to_clients,
                                          ready.evaluate, ready.rejected, ready.log_reads, ready.dead_votes))

    def _apply(self, replica_id: int, ready: Ready, lines: list[str], indent: str) -> None:
        io = _ScriptIO(self, replica_id, lines, indent)
        apply_ready(ready, self.replicas[replica_id], io)
        io.write_sent()

    def evaluate(self, replica_id: int, request: Request, lines: list[str], indent: str) -> None:
        """The script's policy: answer at once, or wait for ``decide`` when the replica's policy is manual."""
        name = self.names.learn(request)
        if self.policies[replica_id] == "manual":
            lines.append(f"{indent}r{replica_id} evaluate {name}: awaiting decide")
            self.awaiting_decision[replica_id].append(request)
            return
        self.decide(replica_id, request, self.policies[replica_id], None, lines, indent)

    def decide(self, replica_id: int, request: Request, answer: str, reason: str | None,
               lines: list[str], indent: str) -> None:
        """Answer one evaluation as the policy ``answer`` ("allow" or "deny") and feed the vote back."""
        policy = FixedPolicy(Decision.ALLOW if answer == "allow" else Decision.DENY)
        decision = evaluate_fail_safe(policy, request, replica_id)
        text = reason if reason is not None and not request.client_id.startswith("operator:") else decision.reason
        lines.append(f"{indent}r{replica_id} policy {self.names.learn(request)}: "
                     f"{decision.decision.value} {quoted(text)}")
        digest = request_digest(self.config.cluster_id, request)
        self.feed(replica_id, self.replicas[replica_id].record_decision(digest, decision.decision, text),
                  lines, indent)

    def _intercept(self, replica_id: int, destination: Endpoint, message: Message) -> list[Message]:
        interceptor = self.interceptors.get(replica_id)
        if interceptor is None:
            return [message]
        return interceptor(destination, message, Signer(self.config.cluster_id, self.seeds[replica_id]))

    def release(self, replica_id: int, lines: list[str]) -> None:
        """process-ready: apply the Readies held for ``replica_id`` in order, and stop holding."""
        for ready in self.held.pop(replica_id, []):
            self._apply(replica_id, ready, lines, "")

    # ------------------------------------------------------------ the network

    def deliver(self, item: InFlight, lines: list[str]) -> None:
        message = item.message()
        lines.append(f"{endpoint_name(item.source)}->{endpoint_name(item.destination)} {self.names.describe(message)}")
        destination = item.destination
        if isinstance(destination, str):
            self._deliver_to_client(destination, message, lines)
            return
        if destination in self.crashed:
            lines.append(f"  dropped: r{destination} is down")
            return
        if isinstance(item.source, int) and (item.source, destination) in self.blocked:
            lines.append("  dropped: partitioned")
            return
        replica = self.replicas[destination]
        from_client = isinstance(item.source, str) and isinstance(message, Request)
        ready = replica.submit(message) if from_client else replica.step(message)
        self.feed(destination, ready, lines, "  ")

    def _deliver_to_client(self, client_id: str, message: Message, lines: list[str]) -> None:
        client = self.clients.get(client_id)
        if client is None or not isinstance(message, Reply):
            lines.append(f"  not read: no client process runs as {client_id}")
            return
        certificate = client.on_reply(message)
        if certificate is not None:
            replies = ",".join(f"r{reply.replica_id}" for reply in certificate.replies)
            lines.append(f"  {client_id} CERTIFIED {client_id}#{certificate.request.request_number} "
                         f"{certificate.decision.value} seq={certificate.replies[0].seq} replies={replies}")

    def matching(self, source: Endpoint | None, destination: Endpoint | None, type_name: str | None,
                 ) -> list[InFlight]:
        def matches(item: InFlight) -> bool:
            if source is not None and item.source != source:
                return False
            if destination is not None and item.destination != destination:
                return False
            return type_name is None or TYPE_NAMES[type(item.message())] == type_name
        return [item for item in self.queue if matches(item)]

    def take(self, items: list[InFlight]) -> None:
        chosen = set(map(id, items))
        self.queue = [item for item in self.queue if id(item) not in chosen]

    # ------------------------------------------------------------ clients, time, crashes

    def propose(self, client_id: str, action: str, risk, deadline_ms: int, to: list[int], lines: list[str]) -> None:
        client = self.clients.get(client_id)
        if client is None:
            raise ScriptError(f"no client {client_id!r}; name it in cluster clients=...")
        request = client.new_request(action, risk, deadline_ms)
        for replica_id in to:
            self.queue.append(InFlight(client_id, replica_id, encode(request)))
        lines.append(f"{client_id}->{names_of(to)} {self.names.describe(request)}")

    def tick(self, replica_ids: list[int], lines: list[str]) -> None:
        self.now_ms += TICK_MS
        self.tick_count += 1
        for replica_id in replica_ids:
            if replica_id in self.crashed:
                continue
            header = len(lines)
            self.feed(replica_id, self.replicas[replica_id].tick(self.now_ms), lines, "  ")
            if len(lines) > header:
                lines.insert(header, f"r{replica_id} tick {self.tick_count}")
        for client_id, client in self.clients.items():
            for request in client.expire(self.now_ms):
                lines.append(f"{client_id} REFUSED {client_id}#{request.request_number}: "
                             f"deadline {request.deadline_ms} passed without f+1 matching replies")

    def crash(self, replica_id: int) -> tuple[int, int]:
        self.crashed.add(replica_id)
        self.held.pop(replica_id, None)  # Computed but never persisted or sent: lost with the process.
        self.awaiting_decision[replica_id] = []
        store = self.stores[replica_id]
        return len(store.signed), len(store.log)

    def restart(self, replica_id: int, lines: list[str]) -> None:
        if replica_id not in self.crashed:
            raise ScriptError(f"r{replica_id} is not crashed")
        recovered = self.stores[replica_id].load()
        replica = Replica.recover(self.config, replica_id, self.seeds[replica_id], recovered.signed, recovered.log)
        self.replicas[replica_id] = replica
        self.crashed.discard(replica_id)
        lines.append(f"r{replica_id} recovered from {len(recovered.signed)} signed messages and "
                     f"{len(recovered.log)} log entries")
        lines.extend(self.status_lines([replica_id]))
        # A restarted process reads its clock before anything else arrives.
        header = len(lines)
        self.feed(replica_id, replica.tick(self.now_ms), lines, "  ")
        if len(lines) > header:
            lines.insert(header, f"r{replica_id} tick {self.tick_count}")

    def operator_command(self, kind: str, replica_id: int, note: str, lines: list[str]) -> None:
        document = {"command": kind, "replica": replica_id, "note": note}
        self.propose(f"operator:{OPERATOR}", json.dumps(document), Risk.LOW, self.now_ms + 60_000,
                     list(range(self.replica_count)), lines)

    def status_lines(self, replica_ids: list[int]) -> list[str]:
        return [self._status(replica_id) for replica_id in replica_ids]

    def _status(self, replica_id: int) -> str:
        if replica_id in self.crashed:
            return f"r{replica_id} down"
        replica = self.replicas[replica_id]
        role = "primary" if replica.is_primary else "backup"
        activity = "active" if replica.view_active else "changing"
        quarantined = ",".join(f"r{r}" for r in sorted(replica.accountability.quarantined)) or "-"
        return (f"r{replica_id} view={replica.view} {activity} {role} low={replica.low_water} "
                f"high={replica.high_water} executed={replica.last_executed} next-seq={replica.next_seq} "
                f"log={replica.execution.log_length} pending={len(replica.pending)} "
                f"awaiting-decide={len(self.awaiting_decision[replica_id])} quarantined={quarantined}")


class _ScriptIO:
    """The script's side of the driving contract for one Ready of one replica: each step becomes lines.

    Sends are grouped by message (one line names every destination) and written before the next step's
    lines.  Dead votes are only written out: the scripts never prune a store (see ``InteractionCluster``).
    """

    def __init__(self, cluster: InteractionCluster, replica_id: int, lines: list[str], indent: str) -> None:
        self.cluster, self.replica_id, self.lines, self.indent = cluster, replica_id, lines, indent
        self.me = f"r{replica_id}"
        self.sent: dict[str, list[Endpoint]] = {}

    def write_sent(self) -> None:
        for description, destinations in self.sent.items():
            self.lines.append(f"{self.indent}{self.me}->{names_of(destinations)} {description}")
        self.sent.clear()

    def persist(self, items: tuple[Message | LogEntry, ...]) -> int:
        self.write_sent()  # What leaves ahead of the disk (``send_unguarded``) shows before it.
        for item in items:
            author = getattr(item, "replica_id", self.replica_id)  # Others' messages kept as proofs name their author.
            origin = "" if author == self.replica_id else f" (from r{author})"
            self.lines.append(f"{self.indent}{self.me} persist {self.cluster.names.describe(item)}{origin}")
        return self.cluster.stores[self.replica_id].persist(items)

    def send_to_replica(self, replica_id: int, message: Message) -> None:
        self._send(replica_id, message)

    def send_to_client(self, client_id: str, reply: Reply) -> None:
        self._send(client_id, reply)

    def _send(self, destination: Endpoint, message: Message) -> None:
        cluster = self.cluster
        for wire in cluster._intercept(self.replica_id, destination, message):
            cluster.queue.append(InFlight(self.replica_id, destination, encode(wire)))
            self.sent.setdefault(cluster.names.describe(wire), []).append(destination)

    def finalized(self, entries: tuple[LogEntry, ...]) -> None:
        self.write_sent()
        self.lines.extend(f"{self.indent}{self.me} {final_line(entry)}" for entry in entries)

    def forget_votes(self, request_digests: tuple[bytes, ...]) -> None:
        if not request_digests:
            return
        self.write_sent()
        names = " ".join(self.cluster.names.of(digest) for digest in request_digests)
        self.lines.append(f"{self.indent}{self.me} dead votes: {names}")

    def rejected(self, rejection: Rejection) -> None:
        self.write_sent()
        self.lines.append(f"{self.indent}{self.me} rejected {rejection.sender}: {rejection.reason}: {rejection.detail}")
        if rejection.evidence is not None:
            self.lines.append(f"{self.indent}{self.me} reports evidence against r{rejection.evidence.accused}")

    def read_log(self, read: LogRead) -> tuple[LogEntry, ...]:
        self.write_sent()
        entries = self.cluster.stores[self.replica_id].read_log(read.first_position, read.last_position)
        self.lines.append(f"{self.indent}{self.me} reads log {read.first_position}..{read.last_position} "
                          f"for r{read.replica_id}: {len(entries)} entries")
        return entries

    def evaluate(self, request: Request) -> None:
        self.write_sent()
        self.cluster.evaluate(self.replica_id, request, self.lines, self.indent)

    def feed(self, ready: Ready) -> None:
        self.write_sent()
        self.cluster.feed(self.replica_id, ready, self.lines, self.indent)
