"""Create a local cluster directory: fresh keys, a cluster file on free loopback ports, empty data/logs folders.

The layout (what ``bft init DIR`` writes)::

    DIR/                   mode 0700
      cluster.toml         the cluster file (public keys, addresses, policies)
      keys/                mode 0700; one hex seed per identity, each mode 0600
        replica-I.key  client-C.key  operator-0.key
      data/                each replica's SQLite database (created on first start)
      logs/ run/           created by ``bft up`` (logs and pid files)

Ports are chosen at random below the kernel's ephemeral range (so no program
binding port 0 is handed one) and checked by binding them on 127.0.0.1; the
sockets are closed again before the file is written, so another program could
still take one before the cluster starts (then ``bft up`` names the port and
who holds it, and starts nothing).  Ports that the cluster files in sibling
folders name are avoided, so clusters initialised side by side do not collide.
Keys come from the operating system's random source, each written by the same
``create_key_file`` that ``bft keygen`` uses, and the cluster file is assembled
by the same steps as ``bft cluster add-replica`` / ``add-client`` /
``add-operator``; only here, the one-machine shortcut, do all the private keys
of a cluster sit in one folder (which is why the cluster file names them).
"""

from __future__ import annotations

import os
import random
import secrets
import socket
from collections.abc import Set
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

from ._assembly import DEFAULT_POLICIES, add_client, add_operator, add_replica, new_cluster_document
from ._file import (CLUSTER_FILE_NAME, ClusterFile, ConfigFileError, cluster_from_document, load_cluster_file,
                            settings_tables, write_cluster_file)
from ._keys import create_key_file
from ..core import AccountabilityOptions, Limits
from ..policies import POLICIES
from ..runtime import NodeOptions

LOOPBACK = "127.0.0.1"
REPLICAS_MIN, REPLICAS_MAX = 1, 64
CLIENTS_MAX = 64
PORT_MIN = 20_000  # Above the ports well-known services use.
MIN_RANGE_PORTS = 1000  # Below this much room under the ephemeral range, let the kernel choose (port 0).
PORT_ATTEMPTS_PER_PORT = 20
SIBLING_CLUSTERS_MAX = 256  # Cluster files next to a new one whose ports it keeps clear of.


def free_loopback_ports(count: int, rng: random.Random | None = None, avoid: Set[int] = frozenset()) -> list[int]:
    """``count`` distinct ports that were free on 127.0.0.1 a moment ago (all held open until all are chosen).

    They are drawn at random from below the kernel's ephemeral range when there is room, because the
    kernel hands out ephemeral ports to every program that binds port 0 or connects: a port taken from
    that range and released again here could be given to, say, a test's proxy before the replica binds it.
    Ports in ``avoid`` (those other clusters' files name, running or not) are never chosen.
    """
    assert 0 <= count <= 2 * REPLICAS_MAX
    rng = rng or random.SystemRandom()
    low, high = _non_ephemeral_range()
    with ExitStack() as stack:
        ports: list[int] = []
        for _ in range(PORT_ATTEMPTS_PER_PORT * count):
            if len(ports) == count:
                break
            candidate = rng.randint(low, high) if high - low >= MIN_RANGE_PORTS else 0
            port = _bind_loopback(stack, candidate)
            if port is not None and port not in ports and port not in avoid:
                ports.append(port)
        if len(ports) < count:
            raise OSError(f"found only {len(ports)} of {count} free loopback ports")
    return ports


def ports_of_sibling_clusters(directory: Path) -> set[int]:
    """The ports named by the cluster files next to ``directory`` (``../*/cluster.toml``), best effort.

    Clusters initialised side by side are often started later, together; a port that was free
    when each was initialised may be the other's.  Unreadable files are skipped (``bft up``
    still names any port that turns out to be taken).
    """
    ports: set[int] = set()
    try:
        siblings = sorted(directory.parent.glob(f"*/{CLUSTER_FILE_NAME}"))[:SIBLING_CLUSTERS_MAX]
    except OSError:
        return ports
    for path in siblings:
        try:
            cluster = load_cluster_file(path)
        except ConfigFileError:
            continue
        for entry in cluster.replicas:
            ports.update(address[1] for address in (entry.address, entry.metrics_address) if address)
    return ports


def _non_ephemeral_range() -> tuple[int, int]:
    """Ports from ``PORT_MIN`` up to just below the kernel's ephemeral range (Linux); (0, 0) if unknown."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0, 0
    return PORT_MIN, ephemeral_low - 1


def _bind_loopback(stack: ExitStack, port: int) -> int | None:
    listener = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    try:
        listener.bind((LOOPBACK, port))
    except OSError:
        return None  # Taken; try another.
    return listener.getsockname()[1]


def create_cluster_directory(directory: str | os.PathLike, replica_count: int, client_count: int = 1, *,
                             policies: Sequence[str] = DEFAULT_POLICIES, limits: Limits | None = None,
                             node_options: NodeOptions | None = None, cluster_id: str | None = None,
                             accountability: AccountabilityOptions | None = None) -> ClusterFile:
    """Write a new local cluster into ``directory`` and return its loaded description.

    Raises ``ConfigFileError`` (one sentence) if ``directory`` already holds a cluster file or a key,
    cannot be written, or the arguments describe an unusable cluster.
    """
    directory = Path(directory).absolute()
    path = directory / CLUSTER_FILE_NAME
    _check_arguments(path, replica_count, client_count, policies)
    if path.exists():
        raise ConfigFileError(path, "a cluster file already exists here; remove it or choose another directory")
    keys = directory / "keys"
    try:
        for folder in (directory, keys, directory / "data"):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys.chmod(0o700)  # It may have existed (empty) with looser permissions.
    except OSError as error:
        raise ConfigFileError(directory, f"cannot create the cluster directory ({error.strerror or error})") from None
    try:
        ports = free_loopback_ports(2 * replica_count, avoid=ports_of_sibling_clusters(directory))
    except OSError as error:
        raise ConfigFileError(directory, f"cannot choose ports for the cluster ({error})") from None
    document = new_cluster_document(cluster_id or f"local-{secrets.token_hex(4)}")
    document.update(settings_tables(limits or Limits(), accountability or AccountabilityOptions(),
                                    (node_options or NodeOptions()).check()))
    for i in range(replica_count):
        add_replica(document, create_key_file(keys / f"replica-{i}.key").public_key, (LOOPBACK, ports[i]),
                    policy=policies[i % len(policies)], metrics=(LOOPBACK, ports[replica_count + i]),
                    key_file=f"keys/replica-{i}.key", database=f"data/replica-{i}.db")
    for i in range(client_count):
        add_client(document, f"client-{i}", create_key_file(keys / f"client-{i}.key").public_key,
                   key_file=f"keys/client-{i}.key")
    add_operator(document, "operator-0", create_key_file(keys / "operator-0.key").public_key,
                 key_file="keys/operator-0.key")
    cluster = cluster_from_document(path, document)
    try:
        write_cluster_file(cluster)
    except FileExistsError:
        raise ConfigFileError(path, "a cluster file already exists here; remove it or choose another directory") \
            from None
    except OSError as error:
        raise ConfigFileError(path, f"cannot write the cluster file ({error.strerror or error})") from None
    return cluster


def _check_arguments(path: Path, replica_count: int, client_count: int, policies: Sequence[str]) -> None:
    if not REPLICAS_MIN <= replica_count <= REPLICAS_MAX:
        raise ConfigFileError(path, f"the replica count must be in [{REPLICAS_MIN}, {REPLICAS_MAX}], "
                                    f"not {replica_count}")
    if not 0 <= client_count <= CLIENTS_MAX:
        raise ConfigFileError(path, f"the client count must be in [0, {CLIENTS_MAX}], not {client_count}")
    if not policies:
        raise ConfigFileError(path, "at least one policy is needed")
    unknown = [name for name in policies if name not in POLICIES]
    if unknown:
        raise ConfigFileError(path, f"unknown policy {unknown[0]!r}; the built-in policies are "
                                    f"{', '.join(sorted(POLICIES))}")
