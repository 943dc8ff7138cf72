"""Step 4: scaling by simulation.  The real sans-IO core at n = 4..100, with calibrated CPU costs and WAN delays.

This is a discrete-event simulation in one thread, deterministic for a seed.
It drives the same objects every driver drives (``Replica``, ``ClientCore``,
``bft.core.apply_ready``, the real codec), so message counts are the protocol's own.
What it adds to ``bft.testing.SimCluster`` is *time*: each replica (and the
client) is a single CPU that handles its inputs one at a time, first come
first served, and each input costs what step 1 measured for the operations
it performs:

- receiving a message: its decode, plus one verification for each signature
  the replica has not checked before (a pre-prepare's request and votes are
  usually already known from their own broadcast; a bundle's parts each
  count as a message of their own);
- what the input produced: a signature per message it signed, one encode per
  distinct message sent (a broadcast is encoded once, as the runtime does),
  a policy evaluation per request to judge, and, with durable storage, one
  fsync per ``Ready`` that persists something;
- the client: a decode and a verification per reply, then the certificate
  check (request, f+1 replies, the votes).

Messages leave when the CPU finishes the input that produced them and
arrive after the one-way delay between the sender's and receiver's regions
(``WAN_ONE_WAY_MS``, plus seeded jitter).  Bandwidth is not modelled.
``SimCluster`` has no hook for per-message CPU time or sub-millisecond
delays, hence this driver; its loop is small and only uses public core API.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import time
from dataclasses import dataclass

from bft.core import (Bundle, ClientCore, ClusterConfig, KeyPair, LogEntry, LogRead, Message, PrePrepare, Ready,
                      Rejection, Replica, Reply, Request, apply_ready, decode, encode, max_faulty, request_digest)
from bft.policy import evaluate_fail_safe
from bft.storage import MemoryStore

from ._costs import UnitCosts
from ._stats import summarize_ms
from ._workload import action_for, bench_policies, risk_for

REGIONS = ("us-east", "us-west", "eu-central", "ap-southeast", "sa-east")
# Typical one-way delays between cloud regions, in ms (about half the public round-trip figures).
WAN_ONE_WAY_MS = {
    ("us-east", "us-west"): 32, ("us-east", "eu-central"): 45, ("us-east", "ap-southeast"): 110,
    ("us-east", "sa-east"): 60, ("us-west", "eu-central"): 73, ("us-west", "ap-southeast"): 85,
    ("us-west", "sa-east"): 90, ("eu-central", "ap-southeast"): 80, ("eu-central", "sa-east"): 102,
    ("ap-southeast", "sa-east"): 165,
}
SAME_REGION_MS = 1.0
JITTER_FRACTION = 0.1
TICK_MS = 10
START_MS = 1_000_000.0  # The simulated clock starts here, as SimCluster's does.
CLIENT = "client-0"
KIND_BY_TYPE = {"Request": "request", "Vote": "vote", "PrePrepare": "preprepare", "Prepare": "prepare",
                "Commit": "commit", "Reply": "reply"}
SMALL_MESSAGE_KIND = "prepare"  # Checkpoints and other small messages cost about what a prepare costs.


def one_way_ms(source_region: str, destination_region: str) -> float:
    if source_region == destination_region:
        return SAME_REGION_MS
    key = (source_region, destination_region)
    return WAN_ONE_WAY_MS.get(key) or WAN_ONE_WAY_MS[(destination_region, source_region)]


@dataclass(frozen=True, slots=True)
class ScalingSettings:
    replica_counts: tuple[int, ...]
    requests: int  # Verdicts per n, one at a time from one client.
    budget_s: float  # Wall-clock budget for the whole step; sizes predicted to overrun it are skipped.
    durable: bool = True
    seed: int = 1

    def __post_init__(self) -> None:
        assert self.replica_counts and min(self.replica_counts) >= 4 and self.requests >= 1 and self.budget_s > 0


class CostedSimulation:
    """n replicas, one client, a WAN, and a CPU queue per endpoint."""

    def __init__(self, replica_count: int, costs: UnitCosts, *, durable: bool, seed: int) -> None:
        keys = [_key(seed, f"replica-{i}") for i in range(replica_count)]
        client_key = _key(seed, CLIENT)
        self.config = ClusterConfig.create("scaling", tuple(k.public_key for k in keys),
                                           {CLIENT: client_key.public_key})
        self.replicas = [Replica(self.config, i, keys[i].seed) for i in range(replica_count)]
        self.stores = [MemoryStore() for _ in range(replica_count)]
        self.policies = bench_policies(replica_count)
        self.client = ClientCore(self.config, CLIENT, client_key.seed)
        self.costs, self.durable = costs, durable
        self.random = random.Random(seed)
        self.region = {i: REGIONS[i % len(REGIONS)] for i in range(replica_count)}
        self.region[CLIENT] = REGIONS[0]
        self.cpu_free_ms: dict[int | str, float] = {endpoint: START_MS for endpoint in self.region}
        self.seen_signatures: list[set[bytes]] = [set() for _ in range(replica_count)]
        self.now_ms = START_MS
        self.messages_sent = 0
        self.bytes_sent = 0
        self.completed_ms: dict[int, float] = {}
        self._events: list = []
        self._order = 0
        for replica_id in range(replica_count):
            self._push(START_MS, ("tick", replica_id))

    # ------------------------------------------------------------------ the event loop

    def _push(self, at_ms: float, event: tuple) -> None:
        self._order += 1
        heapq.heappush(self._events, (at_ms, self._order, event))

    def run_request(self, number: int, max_ms: float = 60_000) -> float | None:
        """Submit one request now and run until its certificate arrives; its latency in ms, or None."""
        started_ms = self.now_ms
        risk = risk_for(number)
        request = self.client.new_request(action_for(risk, number), risk, int(started_ms) + 30_000)
        done_ms = self._client_cpu(started_ms, self.costs.sign_us + self.costs.encode_us["request"])
        self._send_everywhere(CLIENT, request, done_ms)
        while request.request_number not in self.completed_ms:
            if not self._events or self._events[0][0] > started_ms + max_ms:
                return None
            self.now_ms, _, event = heapq.heappop(self._events)
            self._handle(event)
        return self.completed_ms[request.request_number] - started_ms

    def _handle(self, event: tuple) -> None:
        if event[0] == "tick":
            replica_id = event[1]
            start_ms = max(self.now_ms, self.cpu_free_ms[replica_id])
            self._apply(replica_id, self.replicas[replica_id].tick(int(start_ms)), start_ms, 0.0)
            self._push(self.now_ms + TICK_MS, event)
            return
        _, destination, data = event
        message = decode(data)
        if destination == CLIENT:
            self._client_receives(message)
        else:
            self._replica_receives(destination, message)

    # ------------------------------------------------------------------ replicas

    def _replica_receives(self, replica_id: int, message: Message) -> None:
        costs = self.costs
        cost_us = _decode_us(costs, message) + costs.verify_us * self._new_signatures(replica_id, message)
        start_ms = max(self.now_ms, self.cpu_free_ms[replica_id])
        replica = self.replicas[replica_id]
        ready = replica.submit(message) if isinstance(message, Request) else replica.step(message)
        self._apply(replica_id, ready, start_ms, cost_us)

    def _new_signatures(self, replica_id: int, message: Message) -> int:
        """Signatures in ``message`` this replica has not checked before (its verifier caches the rest)."""
        if isinstance(message, Bundle):  # It signs nothing; its parts are checked one by one.
            signatures = [part.signature for part in (*message.prepares, *message.commits)]
        else:
            signatures = [message.signature]
        if isinstance(message, PrePrepare):
            for entry in message.batch.entries:
                signatures += [entry.request.signature, *(vote.signature for vote in entry.votes)]
        seen = self.seen_signatures[replica_id]
        new = [signature for signature in signatures if signature not in seen]
        seen.update(new)
        return len(new)

    def _apply(self, replica_id: int, ready: Ready, start_ms: float, input_cost_us: float) -> None:
        """Charge the input and what it produced to the replica's CPU, then send at the end of that work."""
        costs = self.costs
        signed = [item for item in ready.persist if not isinstance(item, LogEntry)] + [r for _, r in ready.to_clients]
        distinct = {id(message): message for _, message in (*ready.to_replicas, *ready.forwards, *ready.to_clients)}
        encodes_us = sum(costs.encode_us[_kind(message)] for message in distinct.values())
        cost_us = (input_cost_us + costs.sign_us * len(signed) + encodes_us
                   + (costs.sqlite_commit_us if self.durable and ready.persist else 0.0))
        done_ms = start_ms + cost_us / 1000
        self.cpu_free_ms[replica_id] = done_ms
        apply_ready(ready, self.replicas[replica_id], _ScalingIO(self, replica_id, done_ms))

    def _evaluate(self, replica_id: int, request: Request) -> None:
        decision = evaluate_fail_safe(self.policies[replica_id], request, replica_id)
        digest = request_digest(self.config.cluster_id, request)
        after = self.replicas[replica_id].record_decision(digest, decision.decision, decision.reason)
        self._apply(replica_id, after, self.cpu_free_ms[replica_id], self.costs.policy_us)

    # ------------------------------------------------------------------ the client and the network

    def _client_cpu(self, at_ms: float, cost_us: float) -> float:
        start_ms = max(at_ms, self.cpu_free_ms[CLIENT])
        self.cpu_free_ms[CLIENT] = start_ms + cost_us / 1000
        return self.cpu_free_ms[CLIENT]

    def _client_receives(self, message: Message) -> None:
        if not isinstance(message, Reply):
            return
        outstanding = {request.request_number for request in self.client.outstanding}
        cost_us = self.costs.decode_us["reply"]
        if message.request_number in outstanding:
            cost_us += self.costs.verify_us
        certificate = self.client.on_reply(message)
        if certificate is not None:
            checks = 1 + max_faulty(len(self.replicas)) + 1 + len(certificate.votes)
            cost_us += self.costs.verify_us * checks
        done_ms = self._client_cpu(self.now_ms, cost_us)
        if certificate is not None:
            self.completed_ms[certificate.request.request_number] = done_ms

    def _send_everywhere(self, source: int | str, message: Message, at_ms: float) -> None:
        for replica_id in range(len(self.replicas)):
            self._send(source, replica_id, message, at_ms)

    def _send(self, source: int | str, destination: int | str, message: Message, at_ms: float) -> None:
        data = encode(message)
        self.messages_sent += 1
        self.bytes_sent += len(data)
        delay_ms = one_way_ms(self.region[source], self.region[destination])
        delay_ms *= 1 + self.random.uniform(-JITTER_FRACTION, JITTER_FRACTION)
        self._push(at_ms + delay_ms, ("deliver", destination, data))

    @property
    def highest_view(self) -> int:
        return max(replica.view for replica in self.replicas)


def _decode_us(costs: UnitCosts, message: Message) -> float:
    if isinstance(message, Bundle):  # The parts are PREPAREs or COMMITs, the same size.
        return costs.decode_us["prepare"] * len((*message.prepares, *message.commits))
    return costs.decode_us[_kind(message)]


def _kind(message: Message) -> str:
    """The measured message kind whose codec cost stands for ``message``'s."""
    return KIND_BY_TYPE.get(type(message).__name__, SMALL_MESSAGE_KIND)


def _key(seed: int, name: str) -> KeyPair:
    return KeyPair.from_seed(hashlib.sha256(f"bench-scaling/{seed}/{name}".encode()).digest())


def simulate_scaling(costs: UnitCosts, settings: ScalingSettings) -> dict:
    """Latency and messages per verdict for each n that fits the budget; the rest are listed as skipped."""
    points, skipped = [], []
    started_s = time.perf_counter()
    seconds_per_request_per_n2 = None
    for replica_count in sorted(settings.replica_counts):
        spent_s = time.perf_counter() - started_s
        if seconds_per_request_per_n2 is not None:
            predicted_s = seconds_per_request_per_n2 * replica_count ** 2 * settings.requests
            if spent_s + predicted_s > settings.budget_s:
                skipped.append({"replica_count": replica_count, "reason": f"predicted {predicted_s:.0f} s of wall "
                                f"time, {settings.budget_s - spent_s:.0f} s of the budget left"})
                continue
        point = _simulate_one(replica_count, costs, settings)
        seconds_per_request_per_n2 = point["wall_s"] / settings.requests / replica_count ** 2
        points.append(point)
    return {"regions": list(REGIONS), "wan_one_way_ms": {f"{a}<->{b}": ms for (a, b), ms in WAN_ONE_WAY_MS.items()},
            "jitter_fraction": JITTER_FRACTION, "durable": settings.durable, "requests_per_n": settings.requests,
            "points": points, "skipped": skipped}


def _simulate_one(replica_count: int, costs: UnitCosts, settings: ScalingSettings) -> dict:
    started_s = time.perf_counter()
    simulation = CostedSimulation(replica_count, costs, durable=settings.durable, seed=settings.seed)
    latencies = [simulation.run_request(number) for number in range(settings.requests)]
    completed = [ms for ms in latencies if ms is not None]
    verdicts = max(1, len(completed))
    return {"replica_count": replica_count, "requests": settings.requests, "completed": len(completed),
            "latency": summarize_ms(completed), "latencies_ms": [round(ms, 3) for ms in completed],
            "messages_per_verdict": round(simulation.messages_sent / verdicts, 1),
            "bytes_per_verdict": round(simulation.bytes_sent / verdicts),
            "highest_view": simulation.highest_view, "wall_s": round(time.perf_counter() - started_s, 3)}


class _ScalingIO:
    """The scaling simulation's side of the driving contract: messages leave when the CPU finishes the input
    (``done_ms``); what goes back to the core (evidence, log reads, decisions) is charged as a new input."""

    def __init__(self, scaling: CostedSimulation, replica_id: int, done_ms: float) -> None:
        self.scaling, self.replica_id, self.done_ms = scaling, replica_id, done_ms
        self.store = scaling.stores[replica_id]

    def persist(self, items: tuple[Message | LogEntry, ...]) -> int:
        return self.store.persist(items)

    def send_to_replica(self, replica_id: int, message: Message) -> None:
        self.scaling._send(self.replica_id, replica_id, message, self.done_ms)

    def send_to_client(self, client_id: str, reply: Reply) -> None:
        self.scaling._send(self.replica_id, client_id, reply, self.done_ms)

    def finalized(self, entries: tuple[LogEntry, ...]) -> None:
        """Latency is measured at the client, from its certificate."""

    def forget_votes(self, request_digests: tuple[bytes, ...]) -> None:
        if request_digests:
            self.store.prune_votes(request_digests)

    def rejected(self, rejection: Rejection) -> None:
        """Nothing is counted per rejection; its evidence, if any, goes back to the core."""

    def read_log(self, read: LogRead) -> tuple[LogEntry, ...]:
        return self.store.read_log(read.first_position, read.last_position)

    def evaluate(self, request: Request) -> None:
        self.scaling._evaluate(self.replica_id, request)

    def feed(self, ready: Ready) -> None:
        scaling = self.scaling
        scaling._apply(self.replica_id, ready, scaling.cpu_free_ms[self.replica_id], 0.0)
