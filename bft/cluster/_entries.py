"""The records a loaded cluster file is made of: replicas, clients, operators, their policies and addresses.

``_file`` reads and writes the file; this module holds what it reads
into, so that code which only uses a loaded cluster need not know the format.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ._keys import ConfigFileError, read_key_file
from ..core import ClusterConfig, operator_signer_id
from ..policies import build_policy
from ..policy import Policy
from ..runtime import NodeOptions

Address = tuple[str, int]
# Operators sign their commands as request signer "operator:<id>" (see bft.core._accountability).
OPERATOR_SIGNER_PREFIX = operator_signer_id("")


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """Which policy a replica runs: a built-in name (``bft.policies.POLICIES``) or ``package.module:Name``."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_builtin(self) -> bool:
        return ":" not in self.name

    def build(self) -> Policy:
        """The policy object; ``ValueError`` with one sentence if it cannot be built."""
        if self.is_builtin:
            return build_policy(self.name, **self.options)
        module_name, _, attribute = self.name.partition(":")
        try:
            policy_type = getattr(importlib.import_module(module_name), attribute)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
        except Exception as error:  # Third-party import code may raise anything; it is a config problem.
            raise ValueError(f"cannot import policy module {module_name!r}: "
                             f"{type(error).__name__}: {error}") from None
        try:
            policy = policy_type(**self.options)
        except Exception as error:  # A plug-in constructor may raise anything on bad options.
            raise ValueError(f"bad options for policy {self.name!r}: {type(error).__name__}: {error}") from None
        if not callable(getattr(policy, "evaluate", None)):
            raise ValueError(f"{self.name} does not build a policy (it has no evaluate method)")
        return policy


@dataclass(frozen=True, slots=True)
class ReplicaEntry:
    replica_id: int
    address: Address
    public_key: bytes
    key_file: Path | None
    database: Path
    policy: PolicySpec
    metrics_address: Address | None = None
    bind_address: Address | None = None  # None: it listens where it is reached (``address``).

    @property
    def listen_address(self) -> Address:
        """Where the replica binds its listening socket; peers and clients dial ``address``."""
        return self.bind_address or self.address


@dataclass(frozen=True, slots=True)
class ClientEntry:
    client_id: str
    public_key: bytes
    key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class OperatorEntry:
    operator_id: str
    public_key: bytes
    key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class ClusterFile:
    """A loaded cluster file.  Paths are absolute (relative ones are resolved against the file's folder)."""

    path: Path
    config: ClusterConfig
    replicas: tuple[ReplicaEntry, ...]
    clients: tuple[ClientEntry, ...] = ()
    operators: tuple[OperatorEntry, ...] = ()
    node_options: NodeOptions = field(default_factory=NodeOptions)
    # A later epoch's file names the genesis cluster file and the chain of epoch certificates from it
    # (both or neither; ``bft.cluster._epochs`` checks that the chain leads to this file's configuration).
    genesis_file: Path | None = None
    chain_file: Path | None = None

    def __post_init__(self) -> None:
        assert [entry.replica_id for entry in self.replicas] == list(range(self.config.replica_count))
        assert tuple(entry.public_key for entry in self.replicas) == self.config.replica_keys
        # The config may hold more request signers than the listed clients (replicas and operators sign
        # accountability commands), but every listed client must be in it with its key.
        assert all(self.config.client_keys.get(entry.client_id) == entry.public_key for entry in self.clients)

    @property
    def addresses(self) -> dict[int, Address]:
        return {entry.replica_id: entry.address for entry in self.replicas}

    def replica(self, replica_id: int) -> ReplicaEntry:
        if not 0 <= replica_id < len(self.replicas):
            raise ConfigFileError(self.path, f"there is no replica {replica_id} (the replicas are 0 to "
                                             f"{len(self.replicas) - 1})")
        return self.replicas[replica_id]

    def client(self, client_id: str) -> ClientEntry:
        """A request signer: a listed client, or an operator named by its signer id ``operator:<id>``.

        Operators are request signers too (their quarantine and release commands are ordered like
        requests), so the client library opens ``operator:operator-0`` with the operator's key.
        """
        for entry in self.clients:
            if entry.client_id == client_id:
                return entry
        if client_id.startswith(OPERATOR_SIGNER_PREFIX):
            operator = self.operator(client_id.removeprefix(OPERATOR_SIGNER_PREFIX))
            return ClientEntry(client_id, operator.public_key, operator.key_file)
        known = ", ".join(entry.client_id for entry in self.clients) or "none"
        raise ConfigFileError(self.path, f"there is no client {client_id!r} (the clients are: {known})")

    def operator(self, operator_id: str) -> OperatorEntry:
        for entry in self.operators:
            if entry.operator_id == operator_id:
                return entry
        known = ", ".join(entry.operator_id for entry in self.operators) or "none"
        raise ConfigFileError(self.path, f"there is no operator {operator_id!r} (the operators are: {known})")

    def replica_seed(self, replica_id: int) -> bytes:
        entry = self.replica(replica_id)
        return read_key_file(self._key_file_of(entry.key_file, f"replica {replica_id}"), entry.public_key)

    def client_seed(self, client_id: str, key_file: str | os.PathLike | None = None) -> bytes:
        """The client's private seed from ``key_file`` (default: the one the cluster file names)."""
        entry = self.client(client_id)
        chosen = Path(key_file) if key_file is not None else self._key_file_of(entry.key_file, f"client {client_id!r}")
        return read_key_file(chosen, entry.public_key)

    def _key_file_of(self, key_file: Path | None, who: str) -> Path:
        if key_file is None:
            raise ConfigFileError(self.path, f"{who} has no key_file on this machine")
        return key_file


def parse_address(text: str) -> Address:
    """``"host:port"`` as a (host, port) pair; ``ValueError`` saying what is wrong."""
    host, separator, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # Allow "[::1]:7000".
    if not separator or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"must be HOST:PORT with a port in [1, 65535], not {text!r}")
    return host, int(port_text)


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
