"""Create a local cluster directory: fresh keys, a cluster file on free loopback ports, empty data/logs folders.

The layout (what ``bft init DIR`` writes)::

    DIR/                   mode 0700
      cluster.toml         the cluster file (public keys, addresses, policies)
      keys/                mode 0700; one hex seed per identity, each mode 0600
        replica-I.key  client-C.key  operator-0.key
      data/                each replica's SQLite database (created on first start)
      logs/ run/           created by ``bft up`` (logs and pid files)

Ports are chosen by binding port 0 on 127.0.0.1 and reading what the kernel
gave; the sockets are closed again before the file is written, so another
program could take one before the cluster starts (then ``bft up`` names the
replica that could not listen, and a new ``bft init`` picks other ports).
Keys come from the operating system's random source (``KeyPair.generate``).
"""

from __future__ import annotations

import os
import secrets
import socket
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

from ._cluster_file import (CLUSTER_FILE_NAME, ClientEntry, ClusterFile, ConfigFileError, OperatorEntry, PolicySpec,
                            ReplicaEntry, write_cluster_file, write_key_file)
from .core import ClusterConfig, ConfigError, KeyPair, Limits
from .policies import POLICIES
from .runtime import NodeOptions

LOOPBACK = "127.0.0.1"
# The honest built-in policies, in the order replicas get them (replica i runs the (i mod 4)-th).
DEFAULT_POLICIES = ("deny-list", "context-rules", "pattern-matcher", "rate")
REPLICAS_MIN, REPLICAS_MAX = 1, 64
CLIENTS_MAX = 64


def free_loopback_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free on 127.0.0.1 a moment ago (all held open until all are chosen)."""
    assert 0 <= count <= 2 * REPLICAS_MAX
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            listener = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            listener.bind((LOOPBACK, 0))
            ports.append(listener.getsockname()[1])
    assert len(set(ports)) == count
    return ports


def create_cluster_directory(directory: str | os.PathLike, replica_count: int, client_count: int = 1, *,
                             policies: Sequence[str] = DEFAULT_POLICIES, limits: Limits | None = None,
                             node_options: NodeOptions | None = None, cluster_id: str | None = None) -> ClusterFile:
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
    identities = ([f"replica-{i}" for i in range(replica_count)] + [f"client-{i}" for i in range(client_count)]
                  + ["operator-0"])
    pairs = {name: _write_new_key(keys / f"{name}.key") for name in identities}
    ports = free_loopback_ports(2 * replica_count)
    replicas = tuple(ReplicaEntry(i, (LOOPBACK, ports[i]), pairs[f"replica-{i}"].public_key, keys / f"replica-{i}.key",
                                  directory / "data" / f"replica-{i}.db", PolicySpec(policies[i % len(policies)]),
                                  (LOOPBACK, ports[replica_count + i]))
                     for i in range(replica_count))
    clients = tuple(ClientEntry(f"client-{i}", pairs[f"client-{i}"].public_key, keys / f"client-{i}.key")
                    for i in range(client_count))
    operators = (OperatorEntry("operator-0", pairs["operator-0"].public_key, keys / "operator-0.key"),)
    try:
        config = ClusterConfig.create(cluster_id or f"local-{secrets.token_hex(4)}",
                                      tuple(entry.public_key for entry in replicas),
                                      {entry.client_id: entry.public_key for entry in clients}, limits=limits,
                                      operator_keys={entry.operator_id: entry.public_key for entry in operators})
    except ConfigError as error:
        raise ConfigFileError(path, f"the cluster would not be safe: {error}") from None
    cluster = ClusterFile(path, config, replicas, clients, operators, (node_options or NodeOptions()).check())
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


def _write_new_key(path: Path) -> KeyPair:
    keypair = KeyPair.generate()
    try:
        write_key_file(path, keypair)
    except FileExistsError:
        raise ConfigFileError(path, "a key file already exists here; remove the old keys or choose another "
                                    "directory") from None
    except OSError as error:
        raise ConfigFileError(path, f"cannot write the key file ({error.strerror or error})") from None
    return keypair
