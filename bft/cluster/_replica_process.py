"""One replica as one OS process: ``bft replica --config CLUSTER.toml --id I``.

The replica's private key is the file ``--key-file`` names (what ``bft keygen``
wrote on this machine), or else the ``key_file`` its cluster file entry names
(what the one-machine ``bft init`` writes).  With ``--key-file`` the replica id
may be left out: it is the one whose public key the key file holds.  The
replica listens on its entry's ``bind`` address if it has one, else on the
address the others dial.

The process runs the sans-IO core inside ``bft.runtime.ReplicaNode``, keeps its
durable state in ``bft.storage.SqliteStore`` at the database path the cluster
file gives, evaluates requests with the policy the cluster file names, and
serves Prometheus metrics on the configured address, and logs JSON lines to stderr.  SIGTERM or SIGINT stops
it cleanly: the node's tasks are cancelled, the store is closed, and the exit
code is 0.

A replica of a later epoch (one that joins the cluster through a configuration
change) runs from that epoch's cluster file, whose ``genesis`` and ``chain`` keys
lead to it (``bft.cluster._epochs``): it starts in that epoch and fetches the
state by state transfer.  A replica that the core retires (removed, or its key
replaced, by a change) stops once what it produced is durable, logs that it
retired and exits with code 0.

``--listen`` and ``--peer`` override addresses without editing the shared
cluster file, so a test harness can put a fault-injecting proxy between
replicas: replica 1 listens where it is configured, the proxy listens
elsewhere, and replica 0 is told ``--peer 1=PROXY``.

Everything that can go wrong before the node runs is reported in one
sentence: what the operator got wrong (an unreadable or inconsistent cluster
or key file, an unknown replica id, a policy that cannot be built, a ``--peer``
that is not a replica) as ``ConfigFileError`` or ``ReplicaUsageError``, what
the machine refused (a database that cannot be opened) as ``ReplicaStartError``.
A port already in use is checked before anything starts and reported as a
``ReplicaUsageError`` naming the port and, where ``/proc`` tells, its owner.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import trio

from ._epochs import ClusterEpochs, cluster_epochs
from ._file import Address, ClusterFile, ConfigFileError, format_address, load_cluster_file
from ._keys import read_key_file
from ._ports import listen_problem, port_in_use_sentence
from ..core import KeyPair, LocalProtocolError
from ..policy import Policy
from ..runtime import MetricsServer, ReplicaMetrics, ReplicaNode, configure_json_logging, serve_metrics
from ..storage import SqliteStore, StorageError, Store

logger = logging.getLogger("bft.replica")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Builds the node from ReplicaNode's arguments; a test harness may pass a wrapper (never the CLI).
NodeFactory = Callable[..., ReplicaNode]


class ReplicaStartError(Exception):
    """The replica cannot start; ``str()`` is one sentence saying why."""


class ReplicaUsageError(ReplicaStartError):
    """The replica cannot start because of how it was invoked (for example a ``--peer`` that is not a replica)."""


@dataclass(frozen=True, slots=True)
class ReplicaLaunch:
    """Everything one replica process needs, checked before any socket is opened."""

    cluster: ClusterFile
    replica_id: int
    seed: bytes = field(repr=False)
    policy: Policy
    listen_address: Address
    addresses: Mapping[int, Address]
    epochs: ClusterEpochs | None = None  # None: the cluster file's configuration is the genesis.

    @property
    def database(self) -> Path:
        return self.cluster.replica(self.replica_id).database

    @property
    def metrics_address(self) -> Address | None:
        return self.cluster.replica(self.replica_id).metrics_address


def prepare_launch(cluster_path: str | os.PathLike, replica_id: int | None, listen_address: Address | None = None,
                   peer_addresses: Mapping[int, Address] | None = None, *,
                   key_file: str | os.PathLike | None = None) -> ReplicaLaunch:
    """Load and check everything the replica needs; ``ConfigFileError`` or ``ReplicaUsageError`` (one sentence).

    ``replica_id`` may be None only with a ``key_file``: the replica is then the one holding that key.
    """
    cluster = load_cluster_file(cluster_path)
    if key_file is not None:
        replica_id, seed = replica_of_key_file(cluster, key_file, replica_id)
    elif replica_id is None:
        raise ReplicaUsageError("say which replica to run: give --id, or --key-file with the replica's own key")
    else:
        seed = cluster.replica_seed(replica_id)
    entry = cluster.replica(replica_id)
    peers = dict(peer_addresses or {})
    unknown = sorted(peer for peer in peers if peer not in cluster.addresses or peer == replica_id)
    if unknown:
        raise ReplicaUsageError(f"--peer {unknown[0]} is not another replica of this cluster "
                                f"(the replicas are 0 to {cluster.config.replica_count - 1})")
    try:
        policy = entry.policy.build()
    except ValueError as error:
        raise ConfigFileError(cluster.path, f"replica {replica_id}'s policy cannot be built: {error}") from None
    addresses = {**cluster.addresses, **peers}
    return ReplicaLaunch(cluster, replica_id, seed, policy, listen_address or entry.listen_address, addresses,
                         cluster_epochs(cluster))


def replica_of_key_file(cluster: ClusterFile, key_file: str | os.PathLike, replica_id: int | None) -> tuple[int, bytes]:
    """The id of the replica whose public key matches the key in ``key_file``, and the key's seed.

    If ``replica_id`` is given it must be that replica: running one replica with another's key
    would make two processes sign as one replica.
    """
    seed = read_key_file(key_file)
    public_key = KeyPair.from_seed(seed).public_key
    owners = [entry.replica_id for entry in cluster.replicas if entry.public_key == public_key]
    assert len(owners) <= 1, "the cluster file loader refuses a public key held twice"
    if not owners:
        raise ConfigFileError(key_file, f"this key belongs to no replica of {cluster.path} (its public key is "
                                        f"{public_key.hex()}; is the cluster file the latest one?)")
    if replica_id is not None and replica_id != owners[0]:
        cluster.replica(replica_id)  # An id that is no replica at all is named as such.
        raise ConfigFileError(key_file, f"this is replica {owners[0]}'s key, not replica {replica_id}'s")
    return owners[0], seed


def check_ports(launch: ReplicaLaunch) -> None:
    """``ReplicaUsageError`` naming a port this replica needs that is already in use, and its owner if known."""
    for address in filter(None, (launch.listen_address, launch.metrics_address)):
        problem = listen_problem(address)
        if problem:
            raise ReplicaUsageError(f"replica {launch.replica_id} cannot start: {problem}")


def open_store(launch: ReplicaLaunch) -> SqliteStore:
    """The replica's SQLite store, creating its folder if needed; ``ReplicaStartError`` if it cannot be used."""
    database = launch.database
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        return SqliteStore(database)
    except (OSError, StorageError, sqlite3.Error) as error:  # Unwritable, damaged or not a replica database.
        raise ReplicaStartError(f"{database}: cannot open the replica database ({error})") from None


async def serve_replica(launch: ReplicaLaunch, store: Store, *, stop_on_signals: bool = True,
                        node_factory: NodeFactory = ReplicaNode,
                        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the replica until SIGTERM or SIGINT arrives (or the caller cancels); return normally then.

    The signal handlers are installed before the port is bound, so a replica that accepts
    connections is one that a SIGTERM stops cleanly.  ``stop_on_signals=False`` leaves signals
    alone, for running several replicas in one process (tests).
    """
    if stop_on_signals:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            await _serve(launch, store, signals, task_status, node_factory)
    else:
        await _serve(launch, store, None, task_status, node_factory)


async def _serve(launch: ReplicaLaunch, store: Store, signals, task_status: trio.TaskStatus[int],
                 node_factory: NodeFactory) -> None:
    cluster = launch.cluster
    metrics = ReplicaMetrics()
    epochs = launch.epochs or ClusterEpochs(cluster.config, ())
    joining = {"later_epochs": epochs.later} if epochs.later else {}
    try:
        node = node_factory(epochs.genesis, launch.replica_id, launch.seed, launch.policy, launch.addresses,
                            store=store, options=cluster.node_options, metrics=metrics, **joining)
    except StorageError as error:
        raise ReplicaStartError(f"{launch.database}: the stored state cannot be recovered ({error})") from None
    except (LocalProtocolError, ValueError) as error:  # The key is not this epoch's, an address is unknown.
        raise ReplicaStartError(f"replica {launch.replica_id} cannot start in this configuration: {error}") from None
    # Metrics first: once the replica's port accepts, ``bft up`` reports it up, and both its ports
    # must then be taken (a second cluster's check would otherwise find the metrics port free).
    metrics_server = _start_metrics(launch, metrics)
    try:
        async with await _listen(launch) as listener:
            await _run_until_signalled(launch, node, listener, signals, task_status)
    finally:
        if metrics_server is not None:
            metrics_server.close()


async def _listen(launch: ReplicaLaunch) -> trio.SocketListener:
    host, port = launch.listen_address
    try:
        return (await trio.open_tcp_listeners(port, host=host))[0]
    except OSError as error:
        if error.errno == errno.EADDRINUSE:  # Taken since ``check_ports`` looked.
            raise ReplicaUsageError(f"replica {launch.replica_id} cannot start: "
                                    f"{port_in_use_sentence(launch.listen_address)}") from None
        raise ReplicaStartError(f"replica {launch.replica_id} cannot listen on "
                                f"{format_address(launch.listen_address)} ({error.strerror or error})") from None


async def _run_until_signalled(launch: ReplicaLaunch, node: ReplicaNode, listener: trio.SocketListener,
                               signals, task_status: trio.TaskStatus[int]) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(node.run, listener)
        logger.info("replica %d of cluster %s is serving on %s", launch.replica_id, launch.cluster.config.cluster_id,
                    format_address((launch.listen_address[0], port)))
        task_status.started(port)
        nursery.start_soon(_stop_when_retired, launch, node, nursery.cancel_scope)
        if signals is None:
            await trio.sleep_forever()  # Until the caller cancels.
        async for received in signals:
            logger.info("replica %d received %s; shutting down", launch.replica_id, signal.Signals(received).name)
            nursery.cancel_scope.cancel()
            break


async def _stop_when_retired(launch: ReplicaLaunch, node: ReplicaNode, cancel_scope: trio.CancelScope) -> None:
    """A replica the configuration no longer lists stops, once what it produced is durable (its verdict log
    stays for audit)."""
    await node.epoch_follower.retired.wait()
    await node.wait_durable()
    logger.info("replica %d retired in epoch %d; stopping", launch.replica_id, node.epoch_follower.number)
    cancel_scope.cancel()


def _start_metrics(launch: ReplicaLaunch, metrics: ReplicaMetrics) -> MetricsServer | None:
    """Serve the replica's Prometheus metrics on its configured address (none configured: no endpoint)."""
    if launch.metrics_address is None:
        return None
    host, port = launch.metrics_address
    try:
        return serve_metrics(metrics, host, port)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise ReplicaUsageError(f"replica {launch.replica_id} cannot start: "
                                    f"{port_in_use_sentence(launch.metrics_address)}") from None
        raise ReplicaStartError(f"replica {launch.replica_id} cannot serve metrics on "
                                f"{format_address(launch.metrics_address)} ({error.strerror or error})") from None


def run_replica(cluster_path: str | os.PathLike, replica_id: int | None, listen_address: Address | None = None,
                peer_addresses: Mapping[int, Address] | None = None, *, key_file: str | os.PathLike | None = None,
                node_factory: NodeFactory = ReplicaNode) -> None:
    """The body of ``bft replica``: returns after a clean shutdown, raises ``ReplicaStartError`` otherwise."""
    launch = prepare_launch(cluster_path, replica_id, listen_address, peer_addresses, key_file=key_file)
    replica_id = launch.replica_id
    check_ports(launch)
    # Only now: a mistake in the invocation is reported as one plain sentence, not as a log line.
    configure_json_logging(replica_id=replica_id)
    store = open_store(launch)
    try:
        trio.run(functools.partial(serve_replica, launch, store, node_factory=node_factory))
    finally:
        store.close()
    logger.info("replica %d stopped", replica_id)
