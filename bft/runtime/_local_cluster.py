"""A whole cluster in one process: n replica nodes on free 127.0.0.1 ports, in one nursery.

Used by ``bft demo`` and the runtime tests.  Listeners are bound (port 0) before
any node starts, so every node knows every address up front and no port can
be taken by someone else between choosing and binding it.  Keys are derived
from ``key_seed`` so a run is reproducible; they are for local use only.
"""

from __future__ import annotations

import hashlib
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AbstractSet, Any, AsyncContextManager, AsyncIterator, Sequence

import trio

from ..core import AccountabilityOptions, ClusterConfig, KeyPair, Limits, Risk, VerdictRule, operator_signer_id
from ..policy import Policy
from ..storage import Store
from ._client import AsyncClient, open_client
from ._node import ReplicaNode
from ._options import NodeOptions, RuntimeClock
from ._relay import Relay
from ._transport import Address

LOOPBACK = "127.0.0.1"


def derive_keypair(key_seed: int, name: str) -> KeyPair:
    """A reproducible key for local clusters and tests; never use it for a real deployment."""
    return KeyPair.from_seed(hashlib.sha256(f"bft-local-key/{key_seed}/{name}".encode()).digest())


@dataclass
class LocalCluster:
    config: ClusterConfig
    addresses: dict[int, Address]
    nodes: list[ReplicaNode]
    client_keys: dict[str, KeyPair]
    clock: RuntimeClock
    options: NodeOptions
    # relays[(source, target)] carries source's link to target; empty unless opened with relayed=True.
    relays: dict[tuple[int, int], Relay] = field(default_factory=dict)

    def open_client(self, client_id: str = "client-0", **options: Any) -> AsyncContextManager[AsyncClient]:
        options.setdefault("clock", self.clock)
        options.setdefault("limits", self.options.transport)
        return open_client(self.config, client_id, self.client_keys[client_id].seed, self.addresses, **options)

    def partition(self, *groups: AbstractSet[int]) -> None:
        """Let replicas talk only within their group (a replica in no group is alone); clients still
        reach every replica.  Needs ``relayed=True``.  ``heal`` undoes it."""
        assert self.relays, "open the cluster with relayed=True to partition it"
        group_of = {replica_id: index for index, group in enumerate(groups) for replica_id in group}
        assert len(group_of) == sum(len(group) for group in groups), "groups must not overlap"
        for (source, target), relay in self.relays.items():
            together = source in group_of and group_of.get(source) == group_of.get(target)
            relay.set_cut(not together)

    def heal(self) -> None:
        for relay in self.relays.values():
            relay.set_cut(False)

    async def wait_connected(self, timeout_s: float = 10.0) -> bool:
        """Wait until every replica's link to every other replica is up; False on timeout."""
        wanted = len(self.nodes) - 1
        with trio.move_on_after(timeout_s):
            while any(node.peers_connected < wanted for node in self.nodes):
                await trio.sleep(0.005)
            return True
        return False


@asynccontextmanager
async def open_local_cluster(policies: Sequence[Policy], *, client_ids: Sequence[str] = ("client-0",),
                             cluster_id: str = "local", key_seed: int = 0, options: NodeOptions | None = None,
                             limits: Limits | None = None, rules: dict[Risk, VerdictRule] | None = None,
                             stores: Sequence[Store] | None = None, relayed: bool = False,
                             accountability: AccountabilityOptions | None = None,
                             operator_ids: Sequence[str] = ()) -> AsyncIterator[LocalCluster]:
    """Start one replica per policy and yield the running cluster; stop them all on exit.

    ``stores`` gives each replica its store (default: a fresh ``MemoryStore``);
    a store that already holds a replica's state restarts that replica from it.
    The caller owns the stores and closes them.  ``relayed`` routes replica-to-replica
    links through relays so that ``LocalCluster.partition`` can cut them.  Each of
    ``operator_ids`` becomes an operator of the cluster; ``open_client("operator:NAME")``
    then signs as that operator.
    """
    assert stores is None or len(stores) == len(policies), "one store per replica"
    options = (options or NodeOptions()).check()
    replica_keys = [derive_keypair(key_seed, f"replica-{i}") for i in range(len(policies))]
    client_keys = {client_id: derive_keypair(key_seed, client_id) for client_id in client_ids}
    public_client_keys = {name: key.public_key for name, key in client_keys.items()}
    operator_keys = {name: derive_keypair(key_seed, operator_signer_id(name)) for name in operator_ids}
    client_keys.update({operator_signer_id(name): key for name, key in operator_keys.items()})
    config = ClusterConfig.create(cluster_id, tuple(k.public_key for k in replica_keys), public_client_keys,
                                  rules=rules, limits=limits, accountability=accountability,
                                  operator_keys={name: key.public_key for name, key in operator_keys.items()})
    listeners = [(await trio.open_tcp_listeners(0, host=LOOPBACK))[0] for _ in policies]
    addresses = {i: (LOOPBACK, listener.socket.getsockname()[1]) for i, listener in enumerate(listeners)}
    clock = RuntimeClock()
    relays = {(source, target): Relay(addresses[target]) for source in addresses for target in addresses
              if relayed and source != target}
    relay_listeners = {pair: (await trio.open_tcp_listeners(0, host=LOOPBACK))[0] for pair in relays}
    node_addresses = [{target: (LOOPBACK, relay_listeners[(source, target)].socket.getsockname()[1])
                       if relayed and target != source else address for target, address in addresses.items()}
                      for source in addresses]
    nodes = [ReplicaNode(config, i, replica_keys[i].seed, policy, node_addresses[i], options=options, clock=clock,
                         store=stores[i] if stores is not None else None)
             for i, policy in enumerate(policies)]
    async with trio.open_nursery() as nursery:
        for pair, relay in relays.items():
            await nursery.start(relay.run, relay_listeners[pair])
        for node, listener in zip(nodes, listeners):
            await nursery.start(node.run, listener)
        try:
            yield LocalCluster(config, addresses, nodes, client_keys, clock, options, relays)
        finally:
            nursery.cancel_scope.cancel()
