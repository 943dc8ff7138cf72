"""Step 1, measured: what one sign, verify, encode, decode, SQLite commit, loopback hop and policy cost here.

Every figure is the median over several rounds of a timed loop, measured in
the same run as the benchmarks it bounds, so a noisy machine moves both sides
of each ratio together.  Messages are the real ones of one verdict at n = 4 (a
request, votes, a one-entry and a full pre-prepare, prepare, commit, reply),
built and signed with the project's own ``Signer``; at larger n the vote sets
inside pre-prepares and replies grow, so their coding costs are a lower bound.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nacl.signing
import trio

from bft.core import (Batch, BatchEntry, ClientCore, ClusterConfig, Commit, Decision, Message, PrePrepare, Prepare,
                      Reply, Signer, Verifier, Vote, decode, encode, request_digest)
from bft.policy import evaluate_fail_safe
from bft.runtime import FramedConnection, Identity, Link, TransportLimits, derive_keypair, encode_frame
from bft.runtime import _handshake  # The acceptor's side of the handshake has no public entry point.
from bft.storage import SqliteStore

from ._stats import median
from ._workload import BENCH_POLICY_NAMES, RISK_ORDER, action_for, bench_policies

ROUNDS = 5
KEY_SEED = 7
CLUSTER_ID = "bench"
MESSAGE_KINDS = ("request", "vote", "preprepare", "preprepare_full", "prepare", "commit", "reply")


@dataclass(frozen=True, slots=True)
class UnitCosts:
    """Microseconds per operation on this machine, in this run."""

    sign_us: float  # bft.core.Signer.sign of a fresh copy of a vote: payload encoding, Ed25519.
    sign_raw_us: float  # pynacl alone, same payload.
    verify_us: float  # bft.core.Verifier.verify, a signature it has not seen.
    verify_cached_us: float  # The same call when the signature is in its cache.
    verify_raw_us: float  # pynacl alone.
    encode_us: dict[str, float]  # bft.core.encode by message kind (MESSAGE_KINDS).
    decode_us: dict[str, float]  # bft.core.decode (strict: schema check, canonical-form check) by kind.
    message_bytes: dict[str, int]
    sqlite_commit_us: float  # SqliteStore.persist of one vote: one WAL transaction, fsynced (synchronous=FULL).
    sqlite_commit_cpu_us: float  # The CPU (user and system) of that commit: what it costs a replica's cores.
    hop_us: float  # Half a round trip of one frame over 127.0.0.1 through bft.runtime's link and framing.
    message_cpu_us: float  # The CPU of one such frame, sending and receiving end together: the runtime's floor.
    policy_us: float  # One evaluate_fail_safe with the benchmark's policies, averaged over them.
    full_batch_requests: int  # Entries in the "preprepare_full" message.

    def to_json(self) -> dict:
        return {name: (round(value, 3) if isinstance(value, float) else value)
                for name, value in dataclasses.asdict(self).items()}


def time_per_call_us(operation: Callable[[], object], calls: int, rounds: int = ROUNDS) -> float:
    """Median over ``rounds`` of the mean time of ``calls`` back-to-back calls, in microseconds."""
    assert calls >= 1 and rounds >= 1
    operation()  # Warm-up: first-call costs (imports, caches, a database's first page) are not the steady state.
    means = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            operation()
        means.append((time.perf_counter() - started) / calls * 1e6)
    return median(means)


@dataclass(frozen=True, slots=True)
class SampleVerdict:
    """One verdict's messages at n, really signed, plus what signed them."""

    config: ClusterConfig
    messages: dict[str, Message]
    replica_signer: Signer
    replica_seed: bytes


def sample_verdict(replica_count: int, full_batch_requests: int) -> SampleVerdict:
    replica_keys = [derive_keypair(KEY_SEED, f"replica-{i}") for i in range(replica_count)]
    client_key = derive_keypair(KEY_SEED, "client-0")
    config = ClusterConfig.create(CLUSTER_ID, tuple(k.public_key for k in replica_keys),
                                  {"client-0": client_key.public_key})
    signers = [Signer(CLUSTER_ID, key.seed) for key in replica_keys]
    client = ClientCore(config, "client-0", client_key.seed)
    deadline_ms = 2**40

    def entry(number: int) -> BatchEntry:
        risk = RISK_ORDER[number % len(RISK_ORDER)]
        request = client.new_request(action_for(risk, number), risk, deadline_ms)
        digest = request_digest(CLUSTER_ID, request)
        votes = tuple(signers[i].sign(Vote(digest, Decision.ALLOW, "deny-list: 'read_file' is not denied", i,
                                           bytes(64))) for i in range(config.quorum))
        return BatchEntry(request, votes)

    first = entry(0)
    batch = Batch(1_700_000_000_000, (first,))
    full_batch = Batch(1_700_000_000_000, tuple(entry(number) for number in range(full_batch_requests)))
    primary = signers[0]
    batch_digest = bytes(32)  # Its value does not change the cost of signing or coding the message.
    digest = request_digest(CLUSTER_ID, first.request)
    reply = Reply("client-0", first.request.request_number, digest, 1, batch.timestamp_ms, Decision.ALLOW,
                  "approved", first.votes, 1, bytes(64))
    messages = {
        "request": first.request,
        "vote": first.votes[1],
        "preprepare": primary.sign(PrePrepare(0, 1, batch, 0, bytes(64))),
        "preprepare_full": primary.sign(PrePrepare(0, 2, full_batch, 0, bytes(64))),
        "prepare": signers[1].sign(Prepare(0, 1, batch_digest, 1, bytes(64))),
        "commit": signers[1].sign(Commit(0, 1, batch_digest, 1, bytes(64))),
        "reply": signers[1].sign(reply),
    }
    assert tuple(messages) == MESSAGE_KINDS
    return SampleVerdict(config, messages, signers[1], replica_keys[1].seed)


def measure_crypto(sample: SampleVerdict, calls: int) -> dict[str, float]:
    config, vote = sample.config, sample.messages["vote"]
    other_vote = sample.messages["reply"].votes[0]
    unsigned = dataclasses.replace(vote, signature=bytes(64))
    payload = encode(unsigned)  # About the size of what the Signer signs; Ed25519's cost barely depends on it.
    raw_key = nacl.signing.SigningKey(sample.replica_seed)
    raw_signature = raw_key.sign(payload).signature
    # A one-entry cache that sees two messages in turn always misses: every call really verifies.
    missing = Verifier(CLUSTER_ID, config.replica_keys, dict(config.client_keys), cache_size=1)
    alternate = [vote, other_vote]
    state = {"index": 0}

    def verify_uncached() -> None:
        state["index"] ^= 1
        missing.verify(alternate[state["index"]])

    cached = Verifier(CLUSTER_ID, config.replica_keys, dict(config.client_keys))
    cached.verify(vote)
    return {
        # Messages remember their encoding, so every timed call gets a fresh copy (a copy costs about 1 us).
        "sign_us": time_per_call_us(lambda: sample.replica_signer.sign(copy.copy(unsigned)), calls),
        "sign_raw_us": time_per_call_us(lambda: raw_key.sign(payload), calls),
        "verify_us": time_per_call_us(verify_uncached, calls),
        "verify_cached_us": time_per_call_us(lambda: cached.verify(vote), calls),
        "verify_raw_us": time_per_call_us(lambda: raw_key.verify_key.verify(payload, raw_signature), calls),
    }


def measure_codec(sample: SampleVerdict, calls: int) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
    encode_us, decode_us, sizes = {}, {}, {}
    for kind, message in sample.messages.items():
        data = encode(message)
        assert decode(data) == message
        # A full batch is large: time fewer calls of it so the whole step stays bounded.
        kind_calls = max(1, calls // 50) if kind == "preprepare_full" else calls
        # A message remembers its encoding: encode a fresh copy, as a replica encodes a new message.
        encode_us[kind] = time_per_call_us(lambda: encode(copy.copy(message)), kind_calls)
        decode_us[kind] = time_per_call_us(lambda: decode(data), kind_calls)
        sizes[kind] = len(data)
    return encode_us, decode_us, sizes


def measure_sqlite_commit(sample: SampleVerdict, commits: int, directory: Path) -> tuple[float, float]:
    """One ``persist`` of one vote, the transaction every signed message costs a replica before it sends:
    its time, and its CPU (user and system: the kernel's share of an fsync is CPU too)."""
    store = SqliteStore(directory / "commit-cost.db")
    try:
        settings = store.settings()
        assert settings["journal_mode"] == "wal" and settings["synchronous"] == 2, settings
        vote = sample.messages["vote"]
        wall_us = time_per_call_us(lambda: store.persist((vote,)), max(1, commits // ROUNDS))
        cpu_started_s = time.process_time()
        for _ in range(commits):
            store.persist((vote,))
        return wall_us, (time.process_time() - cpu_started_s) / commits * 1e6
    finally:
        store.close()


def measure_policy(sample: SampleVerdict, calls: int) -> float:
    request = sample.messages["request"]
    per_policy = [time_per_call_us(lambda policy=policy: evaluate_fail_safe(policy, request, 0), calls)
                  for policy in bench_policies(len(BENCH_POLICY_NAMES))]
    return sum(per_policy) / len(per_policy)


async def measure_hop_us(sample: SampleVerdict, round_trips: int) -> tuple[float, float]:
    """Half the median round trip of one prepare-sized frame between a ``Link`` and an echoing acceptor,
    and the CPU one such frame costs, sending and receiving end together (both ends are in this process).

    Both ends authenticate with the real handshake and speak the real framing (sealed frames),
    in one trio process, as replicas of an in-process cluster do.  Encoding and
    decoding are timed separately (``measure_codec``), so the hop is transport only: the CPU
    per frame is what this runtime costs per message before any protocol work.
    """
    assert round_trips >= 1
    config, limits = sample.config, TransportLimits()
    replica_seed = derive_keypair(KEY_SEED, "replica-0").seed
    client_seed = derive_keypair(KEY_SEED, "client-0").seed
    frame = encode_frame(encode(sample.messages["prepare"]), limits.max_frame_bytes)
    arrived = trio.Event()

    def on_echo(payloads: list[bytes]) -> None:
        arrived.set()

    async def echo(stream: trio.SocketStream) -> None:
        connection = FramedConnection(stream, limits, "bench link")
        await _handshake.accept(connection, config, Identity("replica", 0), replica_seed)
        while (payload := await connection.receive()) is not None:
            if payload:  # Keep-alives are empty; echo only real frames.
                await connection.send(payload)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    link = Link(config, Identity("client", "client-0"), client_seed, 0, ("127.0.0.1", port), limits, Counter(),
                on_payloads=on_echo)
    round_trips_s: list[float] = []
    cpu_s = 0.0
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, echo, listeners)
            nursery.start_soon(link.run)
            while not link.connected:
                await trio.sleep(0.001)
            for trip in range(round_trips + 10):  # The first few warm the connection up.
                arrived = trio.Event()
                started, cpu_started_s = trio.current_time(), time.process_time()
                link.send(frame)
                await arrived.wait()
                round_trips_s.append(trio.current_time() - started)
                cpu_s += time.process_time() - cpu_started_s if trip >= 10 else 0.0
            nursery.cancel_scope.cancel()
    return median(round_trips_s[10:]) / 2 * 1e6, cpu_s / (2 * round_trips) * 1e6


def measure_unit_costs(*, calls: int, replica_count: int = 4, full_batch_requests: int = 64,
                       directory: Path | None = None) -> UnitCosts:
    """Measure every unit cost once; ``calls`` sets the loop length (fewer for a quick run)."""
    sample = sample_verdict(replica_count, full_batch_requests)
    crypto = measure_crypto(sample, calls)
    encode_us, decode_us, sizes = measure_codec(sample, calls)
    with tempfile.TemporaryDirectory(dir=directory, prefix="bench-costs-") as scratch:
        sqlite_commit_us, sqlite_commit_cpu_us = measure_sqlite_commit(sample, max(10, calls // 10), Path(scratch))
    hop_us, message_cpu_us = trio.run(measure_hop_us, sample, max(20, calls // 5))
    return UnitCosts(**crypto, encode_us=encode_us, decode_us=decode_us, message_bytes=sizes,
                     sqlite_commit_us=sqlite_commit_us, sqlite_commit_cpu_us=sqlite_commit_cpu_us,
                     hop_us=hop_us, message_cpu_us=message_cpu_us,
                     policy_us=measure_policy(sample, max(10, calls // 5)),
                     full_batch_requests=full_batch_requests)
