"""A replica process follows its core from one configuration epoch to the next (specs/RECONFIGURATION.md).

The core decides when an epoch begins (the stable checkpoint at the activation
seq, ``bft.core._replica_epochs``); the node only notices it at the end of a
round (``ReplicaNode._end_round`` compares epoch numbers, one integer per
round) and then brings its I/O in line with the new configuration:

- once everything produced up to the switch has been sent, links to replicas
  that stay with the same key are kept, links to replicas removed or re-keyed
  are closed, and links to new members are opened (a message for a new member
  produced before its link exists is dropped and counted, as to any
  unreachable peer: the new member catches up by state transfer anyway),
  at the addresses the ``config-change`` named (signed by the operators and
  ordered with the change), else at the address the id had before;
- incoming connections of replicas that left are closed at once, and the
  handshake from now on checks the new epoch's keys (``Sessions`` reads
  ``node.config``);
- the CP-mode quorum watch and the metrics use the new n and quorum;
- a replica that is not a member of the new epoch retires: it closes every
  link and sets ``retired``, which the replica process waits on to stop with a
  log line saying so (``bft.cluster._replica_process``).  Its core already
  ignores every input (``Replica._run``), so nothing it signs after the switch
  counts anywhere.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Mapping

import trio

from ..core import ClusterConfig, Replica
from ._transport import Address, Link

if TYPE_CHECKING:  # The node imports this module; the name is only an annotation here.
    from ._node import ReplicaNode

logger = logging.getLogger("bft.runtime")

# How long a link to a replica that left may take to send what it still holds: the last CHECKPOINTs and COMMITs
# of the old epoch, without which a leaving replica that is a few seqs behind never sees the switch.
LEAVING_LINK_LINGER_S = 5.0
LEAVING_LINK_POLL_S = 0.01


def epoch_addresses(replica: Replica) -> dict[int, Address]:
    """Where the members of the replica's current epoch are reached, as its config-change said ({} if it did
    not say, or for the genesis epoch)."""
    epoch = replica.epochs.known_epochs()[replica.epochs.number]
    return dict(enumerate(epoch.addresses))


def starting_addresses(replica: Replica, given: Mapping[int, Address]) -> dict[int, Address]:
    """The addresses a node starts with: those it was given (its cluster file, ``--peer``), completed with those
    the change that began its current epoch named (a member restarted after a change its file predates)."""
    named = epoch_addresses(replica)
    addresses = {replica_id: given.get(replica_id, named.get(replica_id)) for replica_id in
                 range(replica.config.replica_count)}
    missing = sorted(replica_id for replica_id, address in addresses.items() if address is None)
    if missing:
        raise ValueError(f"no address is known for replica {missing[0]} of epoch {replica.epochs.number}")
    return addresses


class EpochFollower:
    """Keeps a node's links, sessions and gauges in line with the epoch its core works in."""

    def __init__(self, node: ReplicaNode) -> None:
        self._node = node
        self.number = node.replica.epochs.number
        self.retired = trio.Event()
        node.metrics.observe_epoch(self.number, node.replica.epochs.retired)

    def follow(self) -> None:
        """The core entered a later epoch in the round that just ended: follow it.

        The handshake checks the new keys at once (a joiner may connect now), but the links change only
        once everything produced so far, this round's output included, has been sent (``_switch_links``):
        what the old epoch's replicas said up to the switch (the CHECKPOINTs at the activation seq above
        all) must reach the replicas that leave, or they never see the switch and never retire."""
        node, replica = self._node, self._node.replica
        assert replica.epochs.number > self.number, (replica.epochs.number, self.number)
        self.number = replica.epochs.number
        node.metrics.observe_epoch(self.number, replica.epochs.retired)
        if replica.epochs.retired:
            node.start_task(self._retire)
            return
        old, new = node.config, replica.config
        staying = {peer for peer in range(min(old.replica_count, new.replica_count))
                   if old.replica_keys[peer] == new.replica_keys[peer]}
        node.addresses = self._next_addresses(new)
        node.config = new
        node.quorum_changed()
        # What a leaving replica sends now is of no use (the core rejects it), and a joiner that connects from
        # now on is authenticated with the new keys: its session must not be closed with the old ones.
        node.sessions.close_replicas_outside(staying)
        node.start_task(self._switch_links, new)

    async def _switch_links(self, new: ClusterConfig) -> None:
        node = self._node
        await node.wait_durable()
        closed = self._close_links_outside(new)
        opened = [peer for peer in range(new.replica_count) if peer not in node.links and peer != node.replica_id]
        for peer in opened:
            self._open_link(new, peer)
        for link in node.links.values():
            link.config = new
        logger.info("replica %d works in epoch %d: %d replicas, quorum %d; links closed to %s, opened to %s",
                    node.replica_id, self.number, new.replica_count, new.quorum, closed or "none", opened or "none",
                    extra={"replica_id": node.replica_id, "epoch": self.number, "event": "epoch-entered"})

    def _next_addresses(self, new: ClusterConfig) -> dict[int, Address]:
        node = self._node
        named = epoch_addresses(node.replica)
        addresses = {}
        for peer in range(new.replica_count):
            address = named.get(peer) or node.addresses.get(peer)
            if address is None:  # A new member the change gave no address for: no link can reach it.
                node.counters["epoch-member-without-address"] += 1
                logger.error("replica %d: epoch %d's change names no address for replica %d; no link to it",
                             node.replica_id, self.number, peer, extra={"replica_id": node.replica_id})
                continue
            addresses[peer] = address
        return addresses

    def _close_links_outside(self, new: ClusterConfig) -> list[int]:
        """Take out the links that do not reach a member of ``new`` with the key and address it has there (each
        link judges by the configuration it was opened or last kept with, so switches may follow quickly); each
        is closed once what it still holds has left (``_close_when_drained``)."""
        node = self._node
        closed = sorted(peer for peer, link in node.links.items() if not link.reaches(new, node.addresses.get(peer)))
        for peer in closed:
            node.start_task(_close_when_drained, node.links.pop(peer))
        return closed

    def _open_link(self, config: ClusterConfig, peer: int) -> None:
        node = self._node
        address = node.addresses.get(peer)
        if address is None:
            return
        link = Link(config, node.identity, node.seed, peer, address, node.options.transport, node.counters,
                    on_rejected=node.metrics.rejected)
        node.links[peer] = link
        node.start_task(link.run)

    async def _retire(self) -> None:
        node = self._node
        await node.wait_durable()  # What it said up to the switch still goes out (the others may need it:
        node.sessions.close_replicas_outside(set())  # its CHECKPOINT at the activation seq may complete a quorum).
        async with trio.open_nursery() as draining:  # Before ``retired``: the process stops once it is set.
            for peer in sorted(node.links):
                draining.start_soon(_close_when_drained, node.links.pop(peer))
        logger.warning("replica %d retired: it is not a member of epoch %d (removed, or its key replaced)",
                       node.replica_id, self.number,
                       extra={"replica_id": node.replica_id, "epoch": self.number, "event": "retired"})
        self.retired.set()


async def _close_when_drained(link: Link) -> None:
    """Close ``link`` once its queue is empty or its peer no longer takes it (disconnected: a peer of the new
    epoch refuses a replica that left), or after ``LEAVING_LINK_LINGER_S`` at most.  Nothing new is queued on
    it: it is no longer among the node's links."""
    with trio.move_on_after(LEAVING_LINK_LINGER_S):
        while link.connected and not link.queue.is_empty:
            await trio.sleep(LEAVING_LINK_POLL_S)
    link.close()
