"""Assemble a cluster file from public keys and addresses, one entry at a time.

This is what ``bft cluster new``, ``add-replica``, ``add-client`` and
``add-operator`` do, and what ``bft init`` does for a cluster on one machine;
``next-epoch`` and ``set-replica`` prepare the file of a later configuration
epoch the same way (``bft operator reconfigure`` then orders it).
No step takes a private key: each node makes its own with ``bft keygen`` and
hands over only the public key it prints.

``change_cluster_file`` reads the file, applies one change to the parsed
document, checks the whole result exactly as a replica would load it (ids,
keys and addresses each used once, n >= 3f+1, known policies), and only then
replaces the file, atomically: a step that is refused leaves the file as it
was.  A file just made by ``new`` has no replicas yet; it is a draft that no
replica or client can use, and replicas must be added before clients or
operators, so every later step checks a whole cluster.
"""

from __future__ import annotations

import copy
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

import tomli_w

from ._file import (FORMAT_VERSION, Address, ClusterFile, ConfigFileError, check_draft_document,
                            cluster_from_document, format_address, read_cluster_document)

# The honest built-in policies, in the order replicas get them (replica i runs the (i mod 4)-th) unless told.
DEFAULT_POLICIES = ("deny-list", "context-rules", "pattern-matcher", "rate")
Result = TypeVar("Result")


def new_cluster_document(cluster_id: str) -> dict[str, Any]:
    """The draft document of a cluster with no members yet."""
    return {"format": FORMAT_VERSION, "cluster_id": cluster_id}


def add_replica(document: dict[str, Any], public_key: bytes, address: Address, *, bind: Address | None = None,
                policy: str | None = None, database: str | None = None, metrics: Address | None = None,
                key_file: str | None = None) -> int:
    """Append the next replica to ``document`` and return its id (ids are 0, 1, ... in the order added).

    ``address`` is where peers and clients reach it; ``bind`` where it listens if that differs.
    By default replica i runs ``DEFAULT_POLICIES[i % 4]`` and keeps its database in
    ``data/replica-i.db`` next to the cluster file on its own machine.
    """
    replicas = document.setdefault("replicas", [])
    replica_id = len(replicas)
    table: dict[str, Any] = {"id": replica_id, "host": address[0], "port": address[1],
                             "public_key": public_key.hex()}
    if bind is not None:
        table["bind"] = format_address(bind)
    if key_file is not None:
        table["key_file"] = key_file
    table["database"] = database or f"data/replica-{replica_id}.db"
    if metrics is not None:
        table["metrics"] = format_address(metrics)
    table["policy"] = policy or DEFAULT_POLICIES[replica_id % len(DEFAULT_POLICIES)]
    replicas.append(table)
    return replica_id


def add_client(document: dict[str, Any], client_id: str, public_key: bytes, key_file: str | None = None) -> None:
    """Append a client (a request signer) to ``document``."""
    document.setdefault("clients", []).append(_identity_table(client_id, public_key, key_file))


def add_operator(document: dict[str, Any], operator_id: str, public_key: bytes, key_file: str | None = None) -> None:
    """Append an operator (who may sign quarantine and release commands) to ``document``."""
    document.setdefault("operators", []).append(_identity_table(operator_id, public_key, key_file))


def _identity_table(identity: str, public_key: bytes, key_file: str | None) -> dict[str, Any]:
    table = {"id": identity, "public_key": public_key.hex()}
    if key_file is not None:
        table["key_file"] = key_file
    return table


def create_cluster_file(path: str | os.PathLike, cluster_id: str) -> None:
    """Write a new draft cluster file; refuses to replace any file."""
    path = Path(path)
    document = new_cluster_document(cluster_id)
    check_draft_document(path, document)
    _write(path, document, replace=False)


def change_cluster_file(path: str | os.PathLike, change: Callable[[dict[str, Any]], Result]) -> tuple[ClusterFile,
                                                                                                       Result]:
    """Apply ``change`` to the file's document, check the whole cluster, and replace the file only if it passes.

    Returns the cluster as loaded from the new file and what ``change`` returned.
    """
    path = Path(path)
    document = copy.deepcopy(read_cluster_document(path))
    if "replicas" not in document:
        check_draft_document(path, document)  # Whatever else is wrong with it is the first thing to say.
    result = change(document)
    if "replicas" not in document:
        raise ConfigFileError(path, "the cluster has no replicas yet; add them first (bft cluster add-replica), "
                                    "then its clients and operators")
    try:
        cluster_from_document(path, document)
    except ConfigFileError as error:
        raise ConfigFileError(path, f"{error.problem}; the file was not changed") from None
    _write(path, document, replace=True)
    return cluster_from_document(path, read_cluster_document(path)), result


def _write(path: Path, document: dict[str, Any], *, replace: bool) -> None:
    """Write ``document`` to ``path``: a new file (``replace=False``), or atomically over the old one."""
    text = tomli_w.dumps(document)
    try:
        if replace:
            _replace_atomically(path, text)
        else:
            with open(path, "x", encoding="utf-8") as file:
                file.write(text)
    except FileExistsError:
        raise ConfigFileError(path, "a file already exists here; bft cluster never replaces a file (remove "
                                    "it or choose another name)") from None
    except OSError as error:
        raise ConfigFileError(path, f"cannot write the cluster file ({error.strerror or error})") from None


def _replace_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never a half-written one."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))  # Keep the old file's permissions.
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


# ---------------------------------------------------------------------------- the next epoch's file

def next_epoch_file(current: str | os.PathLike, next_path: str | os.PathLike,
                    chain: str | os.PathLike | None = None) -> ClusterFile:
    """Write ``next_path``: ``current``'s cluster as the draft of the next epoch, naming the genesis file and the
    chain file (``current``'s own if it is a later epoch's file; else ``current`` itself and ``chain``, by
    default ``chain.json`` next to it).  The operator then changes it (``set_replica``, ``add_replica``) and
    orders it with ``bft operator reconfigure``.  Never replaces a file."""
    current, next_path = Path(current), Path(next_path)
    document = copy.deepcopy(read_cluster_document(current))
    existing = cluster_from_document(current, document)  # The current file is checked whole first.
    if existing.genesis_file is not None and existing.chain_file is not None:
        if chain is not None:
            raise ConfigFileError(current, "this later epoch's file already names its chain file; leave out "
                                           "the chain (the change's certificate goes to the same chain)")
        genesis_path, chain_path = existing.genesis_file, existing.chain_file
    else:
        genesis_path = current
        chain_path = Path(chain) if chain is not None else current.parent / "chain.json"
    document["genesis"] = os.path.relpath(genesis_path, next_path.parent)
    document["chain"] = os.path.relpath(chain_path, next_path.parent)
    cluster_from_document(next_path, document)
    _write(next_path, document, replace=False)
    return cluster_from_document(next_path, read_cluster_document(next_path))


def set_replica(document: dict[str, Any], replica_id: int, *, public_key: bytes | None = None,
                address: Address | None = None, bind: Address | None = None,
                metrics: Address | None = None) -> None:
    """Give replica ``replica_id`` a new key (a rotation) and/or a new address (a replacement on another host).

    A new key drops the entry's ``key_file`` (it named the old key); a new address drops the old ``bind`` and
    ``metrics`` (they were the old host's) unless new ones are given.
    """
    replicas = document.get("replicas", [])
    tables = [table for table in replicas if table.get("id") == replica_id]
    if len(tables) != 1:
        raise ValueError(f"there is no replica {replica_id} (ids 0 to {len(replicas) - 1})")
    table = tables[0]
    if public_key is not None:
        table["public_key"] = public_key.hex()
        table.pop("key_file", None)
    if address is not None:
        table["host"], table["port"] = address
        table.pop("bind", None)
        table.pop("metrics", None)
    if bind is not None:
        table["bind"] = format_address(bind)
    if metrics is not None:
        table["metrics"] = format_address(metrics)
