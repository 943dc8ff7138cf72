"""``python -m harness byzantine-replica --config CLUSTER.toml --id I --strategy NAME``: a lying replica process.

It is the process ``bft replica`` runs (same launch checks, store, policy,
metrics, logging and signal handling, through ``bft.cluster.run_replica``)
with one difference: every message the node sends to another replica passes
through a Byzantine interceptor from ``bft.testing`` first, exactly as
``SimCluster`` applies one in simulation.  The seam is the node's links: each
``Link`` in ``ReplicaNode.links`` is wrapped by an ``InterceptingLink`` that
decodes the frame the node hands it, lets the interceptor turn the message into
zero or more messages (re-signed with this replica's own key where it lies),
and sends those.  Nothing in ``bft`` changes behaviour; production ``bft
replica`` has no switch for any of this, and this command exists only in the
test harness.

Only messages to replicas pass through the interceptor: replies to clients
are sent honestly, which is why the strategies that only lie to clients are
not offered.

Exit status: 0 after a clean shutdown (SIGTERM or SIGINT), 1 when the machine
refused to start the replica, 2 for a usage or configuration mistake (one
sentence on stderr, as ``bft replica`` reports it).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Callable, TextIO

from bft.cluster import (ConfigFileError, NodeFactory, ReplicaStartError, ReplicaUsageError, load_cluster_file,
                         run_replica)
from bft.core import Bundle, LocalProtocolError, Message, Prepare, Signer, decode, encode
from bft.runtime import ReplicaNode
from bft.runtime._framing import HEADER_BYTES, encode_frame
from bft.testing import STRATEGIES, Interceptor

logger = logging.getLogger("harness.byzantine")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
REPLICA_ID_MAX = 127
# A digest no batch has: the second PREPARE of an equivocating pair votes for it.
PHANTOM_BATCH_DIGEST = bytes(32)
# Strategies that only change replies to clients would leave this process honest: they are not offered.
CLIENT_ONLY_STRATEGIES = frozenset({"lying-replies"})


def equivocating_prepares() -> Interceptor:
    """Every PREPARE goes out twice on the same link: as the core made it, then re-signed for a batch digest
    nobody proposed.  The receiver (the primary, or every backup when this replica is the primary and its
    PREPARE travels in the bundles it forwards) thus holds two validly signed, conflicting PREPAREs from this
    replica for one (view, seq): the proof the accountability code turns into a quarantine."""

    def phantom(prepare: Prepare, signer: Signer) -> Prepare:
        return signer.sign(dataclasses.replace(prepare, batch_digest=PHANTOM_BATCH_DIGEST))

    def intercept(destination, message: Message, signer: Signer) -> list[Message]:
        if isinstance(message, Prepare) and message.batch_digest != PHANTOM_BATCH_DIGEST:
            return [message, phantom(message, signer)]
        if isinstance(message, Bundle):
            own = [part for part in message.prepares if part.replica_id == message.replica_id]
            return [message, *(dataclasses.replace(message, prepares=(phantom(part, signer),), commits=())
                               for part in own)]
        return [message]

    return intercept


# name -> factory(seed, replica_count) -> interceptor, like ``bft.testing.STRATEGIES``.
REAL_PROCESS_STRATEGIES: dict[str, Callable[[int, int], Interceptor]] = {
    **{name: factory for name, factory in STRATEGIES.items() if name not in CLIENT_ONLY_STRATEGIES},
    "equivocating-prepares": lambda seed, replica_count: equivocating_prepares(),
}


class InterceptingLink:
    """Stands in for one of a node's outgoing links: the interceptor decides what actually goes out on it.

    Everything but ``send`` (``run``, ``connected``, ...) is the wrapped link's own.
    """

    def __init__(self, link, target_id: int, interceptor: Interceptor, signer: Signer, max_frame_bytes: int,
                 max_message_bytes: int) -> None:
        assert max_frame_bytes >= 1 and max_message_bytes >= 1
        self._link = link
        self._target_id = target_id
        self._interceptor = interceptor
        self._signer = signer
        self._max_frame_bytes = max_frame_bytes
        self._max_message_bytes = max_message_bytes

    def __getattr__(self, name: str):
        return getattr(self._link, name)

    def send(self, frame: bytes) -> None:
        payload = frame[HEADER_BYTES:]
        if not payload:  # A keep-alive carries no message.
            self._link.send(frame)
            return
        # The node encoded this frame itself a moment ago, so decoding it cannot fail.
        message = decode(payload, self._max_message_bytes)
        for produced in self._interceptor(self._target_id, message, self._signer):
            try:
                self._link.send(encode_frame(encode(produced), self._max_frame_bytes))
            except LocalProtocolError:  # A lie too large for a frame: a peer would reject it unread.
                self._link.counters["byzantine-dropped-oversized"] += 1


def intercepting_node_factory(strategy: str, interceptor: Interceptor) -> NodeFactory:
    """Builds a ``ReplicaNode`` as ``bft replica`` does, then puts ``interceptor`` on each of its links."""

    def build(config, replica_id, seed, policy, addresses, **options) -> ReplicaNode:
        node = ReplicaNode(config, replica_id, seed, policy, addresses, **options)
        # Logging is configured by now, so this lands in the replica's JSON log like everything else.
        logger.warning("replica %d runs the Byzantine strategy %s", replica_id, strategy,
                       extra={"replica_id": replica_id, "strategy": strategy})
        signer = Signer(config.cluster_id, seed)
        max_frame_bytes = node.options.transport.max_frame_bytes
        max_message_bytes = min(max_frame_bytes, config.limits.max_message_bytes)
        node.links = {peer: InterceptingLink(link, peer, interceptor, signer, max_frame_bytes, max_message_bytes)
                      for peer, link in node.links.items()}
        return node

    return build


# ----------------------------------------------------------------------------- command line


def add_parser(commands) -> None:
    command = commands.add_parser(
        "byzantine-replica", help="run one replica process whose messages to replicas pass a Byzantine strategy",
        description="Run replica ID like `bft replica` does, but lying to the other replicas as STRATEGY says.")
    command.add_argument("--config", required=True, metavar="CLUSTER.toml")
    command.add_argument("--id", type=int, required=True, dest="replica_id")
    command.add_argument("--strategy", required=True, choices=sorted(REAL_PROCESS_STRATEGIES), metavar="NAME",
                         help=f"how to lie: {', '.join(sorted(REAL_PROCESS_STRATEGIES))}")
    command.add_argument("--seed", type=int, default=0, help="the seed of randomized strategies (default 0)")


def main(arguments: argparse.Namespace, out: TextIO) -> int:
    if not 0 <= arguments.replica_id <= REPLICA_ID_MAX:
        return _fail(EXIT_USAGE, f"--id must be in [0, {REPLICA_ID_MAX}]")
    try:
        # The strategy factories need the cluster size; run_replica reads and checks the file once more.
        replica_count = load_cluster_file(arguments.config).config.replica_count
        interceptor = REAL_PROCESS_STRATEGIES[arguments.strategy](arguments.seed, replica_count)
        run_replica(arguments.config, arguments.replica_id,
                    node_factory=intercepting_node_factory(arguments.strategy, interceptor))
    except (ConfigFileError, ReplicaUsageError) as error:
        return _fail(EXIT_USAGE, str(error))
    except ReplicaStartError as error:
        return _fail(EXIT_FAILED, str(error))
    print(f"replica {arguments.replica_id} ({arguments.strategy}) stopped", file=out)
    return EXIT_OK


def _fail(code: int, sentence: str) -> int:
    print(f"python -m harness byzantine-replica: {sentence}", file=sys.stderr)
    return code
