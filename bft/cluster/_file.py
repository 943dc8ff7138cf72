"""The cluster file (``cluster.toml``): who is in a cluster, where each replica runs, and with what.

One file describes a whole cluster, so every replica process, client and
operator tool reads the same thing.  It holds only public keys; each private
key sits in its own key file (32-byte Ed25519 seed as hex, mode 0600, see
``bft.cluster._keys``) on the machine of its node, given on the command line
(``--key-file``) or named by a path relative to the cluster file (what the
one-machine ``bft init`` writes).  A replica's or client's machine therefore
needs the cluster file and its own key file, nothing else.  The format::

    format = 1
    cluster_id = "demo"
    faulty_max = 1                      # optional; default: the most n tolerates
    genesis = "genesis.toml"            # optional, with chain: this file describes a later epoch of the
    chain = "chain.json"                # cluster born as genesis.toml, proved by the epoch certificates in
                                        # chain.json (bft operator reconfigure appends them; bft.cluster._epochs)

    [limits]                            # optional overrides of bft.core.Limits
    view_change_timeout_ticks = 50
    [rules.high]                        # optional, per risk class (low, medium, high, critical)
    min_allow_votes = 4
    max_deny_votes = 0
    [accountability]                    # optional overrides of bft.core.AccountabilityOptions
    auto_quarantine_suspects = true     # isolate drifting replicas without an operator (off by default)
    [node]                              # optional overrides of bft.runtime.NodeOptions
    tick_ms = 10
    [node.transport]                    # optional overrides of bft.runtime.TransportLimits
    idle_timeout_s = 60.0

    [[replicas]]
    id = 0
    host = "127.0.0.1"                  # where the other replicas and the clients reach it (advertised)
    port = 7000
    bind = "0.0.0.0:7000"               # optional: where it listens, if not at host:port (behind NAT, say)
    public_key = "<64 hex digits>"
    key_file = "keys/replica-0.key"     # optional: the replica may be given --key-file instead
    database = "data/replica-0.db"
    metrics = "127.0.0.1:9100"          # optional Prometheus endpoint
    policy = "deny-list"                # a built-in name, or "package.module:Name"
    [replicas.policy_options]           # optional keyword arguments of the policy
    denied_capabilities = ["shell", "payments"]

    [[clients]]
    id = "client-0"
    public_key = "<64 hex digits>"
    key_file = "keys/client-0.key"

    [[operators]]                       # people allowed to act on the cluster as a whole: they sign
    id = "operator-0"                   # quarantine and release commands as "operator:<id>"
    public_key = "<64 hex digits>"
    key_file = "keys/operator-0.key"

Unknown keys are errors, so a misspelt setting cannot silently fall back to a
default.  ``load_cluster_file`` reads with the standard library's ``tomllib``
and raises ``ConfigFileError`` whose text is one sentence naming the file and
the problem; ``dump_cluster_file`` writes with ``tomli_w`` and writes only the
overrides that differ from the defaults, so ``load(dump(x)) == x``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any, NoReturn

import tomli_w

from ._entries import (OPERATOR_SIGNER_PREFIX, Address, ClientEntry, ClusterFile, OperatorEntry, PolicySpec,
                               ReplicaEntry, format_address, parse_address)
from ._keys import PUBLIC_KEY_BYTES, ConfigFileError, public_key_problem
from ..core import AccountabilityOptions, ClusterConfig, ConfigError, Limits, Risk, VerdictRule
from ..core import default_rules, max_faulty, quorum_size
from ..policies import POLICIES
from ..runtime import NodeOptions, TransportLimits

# What other modules import from here; the records and key-file errors are defined in _cluster_entries and _keys.
__all__ = ["CLUSTER_FILE_NAME", "FORMAT_VERSION", "OPERATOR_SIGNER_PREFIX", "Address", "ClientEntry", "ClusterFile",
           "ConfigFileError", "OperatorEntry", "PolicySpec", "ReplicaEntry", "check_draft_document",
           "cluster_from_document", "dump_cluster_file", "format_address", "load_cluster_file", "parse_address",
           "read_cluster_document", "settings_tables", "write_cluster_file"]

FORMAT_VERSION = 1
CLUSTER_FILE_NAME = "cluster.toml"
MAX_FILE_BYTES = 1024 * 1024
MAX_ID_BYTES = 64  # The wire limit on a client id (bft.core checks the same bound on every request).

TOP_LEVEL_KEYS = {"format", "cluster_id", "faulty_max", "limits", "rules", "accountability", "node", "replicas",
                  "clients", "operators", "genesis", "chain"}
REPLICA_KEYS = {"id", "host", "port", "bind", "public_key", "key_file", "database", "metrics", "policy",
                "policy_options"}
CLIENT_KEYS = {"id", "public_key", "key_file"}
# Operators are read by tools that act on the whole cluster; a new operator setting is one more key here.
OPERATOR_KEYS = {"id", "public_key", "key_file"}
RULE_KEYS = {"min_allow_votes", "max_deny_votes"}


# ---------------------------------------------------------------------------- loading

def load_cluster_file(path: str | os.PathLike) -> ClusterFile:
    """Read and check a cluster file; every problem raises ``ConfigFileError`` with one sentence."""
    path = Path(path)
    return cluster_from_document(path, read_cluster_document(path))


def cluster_from_document(path: Path, document: dict[str, Any]) -> ClusterFile:
    """Check a parsed cluster file as if it were read from ``path`` (relative paths resolve against its folder)."""
    reader = _Reader(path)
    cluster_id = _checked_heading(reader, document)
    replicas = reader.replicas(document.get("replicas"))
    clients = tuple(reader.client(table, index) for index, table in
                    enumerate(reader.table_list(document, "clients")))
    operators = tuple(reader.operator(table, index) for index, table in
                      enumerate(reader.table_list(document, "operators")))
    reader.check_unique([entry.client_id for entry in clients], "client id")
    reader.check_unique([entry.operator_id for entry in operators], "operator id")
    reader.check_keys_unique([*((f"replica {entry.replica_id}", entry.public_key) for entry in replicas),
                              *((f"client {entry.client_id!r}", entry.public_key) for entry in clients),
                              *((f"operator {entry.operator_id!r}", entry.public_key) for entry in operators)])
    reader.check_unique([*(entry.address for entry in replicas),
                         *(entry.metrics_address for entry in replicas if entry.metrics_address)], "address")
    config = reader.cluster_config(document, cluster_id, replicas, clients, operators)
    node_options = reader.node_options(document.get("node", {}))
    genesis_file = reader.file_path(document, "genesis", "the top level", required=False)
    chain_file = reader.file_path(document, "chain", "the top level", required=False)
    if (genesis_file is None) != (chain_file is None):
        reader.fail("'genesis' and 'chain' go together: a later epoch's file names both its genesis file and "
                    "the epoch certificates that lead from it")
    return ClusterFile(path.absolute(), config, replicas, clients, operators, node_options, genesis_file, chain_file)


def check_draft_document(path: Path, document: dict[str, Any]) -> str:
    """Check what a cluster file with no replicas yet can hold (``bft cluster new``); return its cluster id."""
    reader = _Reader(path)
    cluster_id = _checked_heading(reader, document)
    unexpected = sorted(set(document) & {"replicas", "clients", "operators"})
    assert not unexpected, f"a draft has no {unexpected[0]} yet"
    return cluster_id


def _checked_heading(reader: _Reader, document: dict[str, Any]) -> str:
    reader.check_keys(document, TOP_LEVEL_KEYS, "the top level")
    version = document.get("format", FORMAT_VERSION)
    if type(version) is not int or version != FORMAT_VERSION:
        reader.fail(f"format {version!r} is not supported (this version reads format {FORMAT_VERSION})")
    return reader.identifier(document, "cluster_id", "the top level")


def read_cluster_document(path: Path) -> dict[str, Any]:
    """The parsed TOML of a cluster file, before any check of its content (``ConfigFileError`` if unreadable)."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigFileError(path, "the cluster file does not exist") from None
    except IsADirectoryError:
        raise ConfigFileError(path, "this is a directory, not a cluster file") from None
    except OSError as error:
        raise ConfigFileError(path, f"cannot read the cluster file ({error.strerror or error})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigFileError(path, f"the cluster file is larger than {MAX_FILE_BYTES} bytes")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigFileError(path, "the cluster file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigFileError(path, f"not valid TOML ({error})") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively; nothing was built yet.
        raise ConfigFileError(path, "the cluster file nests arrays or tables too deeply") from None


class _Reader:
    """Checks one document's values, each problem raised as a ``ConfigFileError`` naming where it is."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.directory = path.absolute().parent

    def fail(self, problem: str) -> NoReturn:
        raise ConfigFileError(self.path, problem)

    def check_keys(self, table: Any, allowed: set[str], where: str) -> None:
        if not isinstance(table, dict):
            self.fail(f"{where} must be a table")
        unknown = sorted(set(table) - allowed)
        if unknown:
            self.fail(f"unknown key {unknown[0]!r} in {where} (allowed: {', '.join(sorted(allowed))})")

    def check_unique(self, values: list, what: str) -> None:
        seen = set()
        for value in values:
            if value in seen:
                shown = format_address(value) if isinstance(value, tuple) else \
                    value.hex() if isinstance(value, bytes) else repr(value)
                self.fail(f"{what} {shown} appears more than once")
            seen.add(value)

    def check_keys_unique(self, holders: list[tuple[str, bytes]]) -> None:
        """Every identity needs its own key: a client holding a replica's key could sign as that replica
        (its votes, its replies), and two holders of one key cannot be told apart by their signatures."""
        first_holder: dict[bytes, str] = {}
        for holder, public_key in holders:
            if public_key in first_holder:
                self.fail(f"{first_holder[public_key]} and {holder} have the same public key; every replica, "
                          f"client and operator needs its own key")
            first_holder[public_key] = holder

    def required(self, table: dict, key: str, where: str) -> Any:
        if key not in table:
            self.fail(f"{where} is missing {key!r}")
        return table[key]

    def typed(self, table: dict, key: str, where: str, kind: type, required: bool = True) -> Any:
        if not required and key not in table:
            return None
        value = self.required(table, key, where)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            self.fail(f"{key!r} in {where} must be {_KIND_NAMES.get(kind, kind.__name__)}, not {value!r}")
        return value

    def identifier(self, table: dict, key: str, where: str) -> str:
        value = self.typed(table, key, where, str)
        if not value or len(value.encode()) > MAX_ID_BYTES or not value.isprintable() or value != value.strip():
            self.fail(f"{key!r} in {where} must be 1 to {MAX_ID_BYTES} bytes of printable text without "
                      f"surrounding spaces, not {value!r}")
        return value

    def public_key(self, table: dict, where: str) -> bytes:
        text = self.typed(table, "public_key", where, str)
        problem = public_key_problem(text)
        if problem:
            self.fail(f"'public_key' in {where} {problem}")
        key = bytes.fromhex(text)
        assert len(key) == PUBLIC_KEY_BYTES
        return key

    def file_path(self, table: dict, key: str, where: str, required: bool) -> Path | None:
        text = self.typed(table, key, where, str, required)
        if text is None:
            return None
        if not text:
            self.fail(f"{key!r} in {where} must not be empty")
        return self.directory / text

    def table_list(self, document: dict, key: str) -> list[dict]:
        value = document.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            self.fail(f"{key!r} must be an array of tables ([[{key}]])")
        return value

    def replicas(self, tables: Any) -> tuple[ReplicaEntry, ...]:
        if not tables:
            self.fail("the cluster file lists no replicas ([[replicas]])")
        tables = self.table_list({"replicas": tables}, "replicas")
        entries = sorted((self.replica(table, index) for index, table in enumerate(tables)),
                         key=lambda entry: entry.replica_id)
        ids = [entry.replica_id for entry in entries]
        self.check_unique(ids, "replica id")
        if ids != list(range(len(ids))):
            self.fail(f"replica ids must be 0 to {len(ids) - 1}, each once; found {ids}")
        self.check_unique([entry.public_key for entry in entries], "replica public key")
        return tuple(entries)

    def replica(self, table: dict, index: int) -> ReplicaEntry:
        where = f"replica entry {index + 1}"
        self.check_keys(table, REPLICA_KEYS, where)
        replica_id = self.typed(table, "id", where, int)
        if replica_id < 0:
            self.fail(f"'id' in {where} must not be negative, not {replica_id}")
        where = f"replica {replica_id}"
        host = self.typed(table, "host", where, str)
        address = (host, self.port(table.get("port"), f"'port' in {where}", where))
        metrics = self.typed(table, "metrics", where, str, required=False)
        metrics_address = None if metrics is None else self.address(metrics, f"'metrics' in {where}")
        bind = self.typed(table, "bind", where, str, required=False)
        bind_address = None if bind is None else self.address(bind, f"'bind' in {where}")
        return ReplicaEntry(replica_id, address, self.public_key(table, where),
                            self.file_path(table, "key_file", where, required=False),
                            self.file_path(table, "database", where, required=True),
                            self.policy(table, where), metrics_address, bind_address)

    def port(self, value: Any, what: str, where: str) -> int:
        if value is None:
            self.fail(f"{where} is missing 'port'")
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            self.fail(f"{what} must be a port number in [1, 65535], not {value!r}")
        return value

    def address(self, text: str, what: str) -> Address:
        try:
            return parse_address(text)
        except ValueError as error:
            self.fail(f"{what} {error}")

    def policy(self, table: dict, where: str) -> PolicySpec:
        name = self.typed(table, "policy", where, str)
        options = table.get("policy_options", {})
        if not isinstance(options, dict):
            self.fail(f"'policy_options' in {where} must be a table")
        if ":" in name:
            module_name, _, attribute = name.partition(":")
            if not (all(part.isidentifier() for part in module_name.split(".")) and attribute.isidentifier()):
                self.fail(f"policy {name!r} of {where} is neither a built-in name nor a 'package.module:Name' path")
        elif name not in POLICIES:
            self.fail(f"unknown policy {name!r} for {where}; the built-in policies are {', '.join(sorted(POLICIES))}, "
                      f"or give an import path 'package.module:Name'")
        return PolicySpec(name, options)

    def client(self, table: dict, index: int) -> ClientEntry:
        where = f"client entry {index + 1}"
        self.check_keys(table, CLIENT_KEYS, where)
        client_id = self.identifier(table, "id", where)
        where = f"client {client_id!r}"
        return ClientEntry(client_id, self.public_key(table, where),
                           self.file_path(table, "key_file", where, required=False))

    def operator(self, table: dict, index: int) -> OperatorEntry:
        where = f"operator entry {index + 1}"
        self.check_keys(table, OPERATOR_KEYS, where)
        operator_id = self.identifier(table, "id", where)
        where = f"operator {operator_id!r}"
        return OperatorEntry(operator_id, self.public_key(table, where),
                             self.file_path(table, "key_file", where, required=False))

    def cluster_config(self, document: dict, cluster_id: str, replicas: tuple[ReplicaEntry, ...],
                       clients: tuple[ClientEntry, ...], operators: tuple[OperatorEntry, ...]) -> ClusterConfig:
        faulty_max = self.typed(document, "faulty_max", "the top level", int, required=False)
        if faulty_max is not None and not 0 <= 3 * faulty_max < len(replicas):
            self.fail(f"{len(replicas)} replicas cannot tolerate {faulty_max} faulty ones: n >= 3f+1 is required")
        limits = self.overrides(Limits(), document.get("limits", {}), "[limits]")
        rules = self.rules(document.get("rules", {}), len(replicas), faulty_max)
        accountability = self.accountability(document.get("accountability", {}))
        try:
            return ClusterConfig.create(cluster_id, tuple(entry.public_key for entry in replicas),
                                        {entry.client_id: entry.public_key for entry in clients},
                                        faulty_max=faulty_max, rules=rules, limits=limits,
                                        operator_keys={entry.operator_id: entry.public_key for entry in operators},
                                        accountability=accountability)
        except ConfigError as error:
            self.fail(f"the cluster is not safe as configured: {error}")

    def rules(self, table: Any, replica_count: int, faulty_max: int | None) -> dict[Risk, VerdictRule] | None:
        self.check_keys(table, {risk.value for risk in Risk}, "[rules]")
        if not table:
            return None
        faulty = max_faulty(replica_count) if faulty_max is None else faulty_max
        rules = default_rules(replica_count, faulty, quorum_size(replica_count, faulty))
        for risk_name, rule_table in table.items():
            where = f"[rules.{risk_name}]"
            self.check_keys(rule_table, RULE_KEYS, where)
            rules[Risk(risk_name)] = VerdictRule(self.typed(rule_table, "min_allow_votes", where, int),
                                                 self.typed(rule_table, "max_deny_votes", where, int))
        return rules

    def accountability(self, table: Any) -> AccountabilityOptions:
        options = self.overrides(AccountabilityOptions(), table, "[accountability]")
        problem = options.problem()
        if problem:
            self.fail(f"the [accountability] settings are not usable: {problem}")
        return options

    def node_options(self, table: Any) -> NodeOptions:
        if not isinstance(table, dict):
            self.fail("[node] must be a table")
        node_table = dict(table)
        transport = self.overrides(TransportLimits(), node_table.pop("transport", {}), "[node.transport]")
        options = dataclasses.replace(self.overrides(NodeOptions(), node_table, "[node]"), transport=transport)
        problem = options.problem()
        if problem:
            self.fail(f"the node options are not usable: {problem}")
        return options

    def overrides(self, defaults: Any, table: Any, where: str) -> Any:
        """``defaults`` with the scalar fields ``table`` names replaced, each checked against the default's type."""
        scalar_fields = {item.name: getattr(defaults, item.name) for item in dataclasses.fields(defaults)
                         if isinstance(getattr(defaults, item.name), (int, float, str))}
        self.check_keys(table, set(scalar_fields), where)
        changes = {}
        for key, value in table.items():
            kind = type(scalar_fields[key])
            accepted = (int, float) if kind is float else (kind,)
            if not isinstance(value, accepted) or (isinstance(value, bool) and kind is not bool):
                self.fail(f"{key!r} in {where} must be {_KIND_NAMES.get(kind, kind.__name__)}, not {value!r}")
            changes[key] = kind(value)
        return dataclasses.replace(defaults, **changes)


_KIND_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false", dict: "a table"}


# ---------------------------------------------------------------------------- writing

def dump_cluster_file(cluster: ClusterFile, directory: str | os.PathLike | None = None) -> str:
    """The TOML text of ``cluster``; paths under ``directory`` (default: the file's folder) are written relative."""
    base = Path(directory) if directory is not None else cluster.path.parent
    config = cluster.config
    document: dict[str, Any] = {"format": FORMAT_VERSION, "cluster_id": config.cluster_id}
    if cluster.genesis_file is not None and cluster.chain_file is not None:
        document["genesis"] = _relative(cluster.genesis_file, base)
        document["chain"] = _relative(cluster.chain_file, base)
    if config.faulty_max != max_faulty(config.replica_count):
        document["faulty_max"] = config.faulty_max
    defaults = default_rules(config.replica_count, config.faulty_max, config.quorum)
    _put_if_any(document, "rules", {risk.value: dataclasses.asdict(rule) for risk, rule in config.rules.items()
                                    if rule != defaults[risk]})
    document.update(settings_tables(config.limits, config.accountability, cluster.node_options))
    document["replicas"] = [_replica_table(entry, base) for entry in cluster.replicas]
    _put_if_any(document, "clients", [_identity_table(entry.client_id, entry.public_key, entry.key_file, base)
                                       for entry in cluster.clients])
    _put_if_any(document, "operators", [_identity_table(entry.operator_id, entry.public_key, entry.key_file, base)
                                         for entry in cluster.operators])
    return tomli_w.dumps(document)


def settings_tables(limits: Limits, accountability: AccountabilityOptions, node_options: NodeOptions) -> dict[str, Any]:
    """The ``[limits]``, ``[accountability]`` and ``[node]`` tables that set these values (only what differs
    from the defaults)."""
    tables: dict[str, Any] = {}
    _put_if_any(tables, "limits", _changed_fields(limits, Limits()))
    _put_if_any(tables, "accountability", _changed_fields(accountability, AccountabilityOptions()))
    node = _changed_fields(node_options, NodeOptions())
    _put_if_any(node, "transport", _changed_fields(node_options.transport, TransportLimits()))
    _put_if_any(tables, "node", node)
    return tables


def write_cluster_file(cluster: ClusterFile) -> None:
    """Write ``cluster`` to ``cluster.path``, refusing to replace a file that exists."""
    text = dump_cluster_file(cluster)
    with open(cluster.path, "x", encoding="utf-8") as file:
        file.write(text)


def _replica_table(entry: ReplicaEntry, base: Path) -> dict[str, Any]:
    table: dict[str, Any] = {"id": entry.replica_id, "host": entry.address[0], "port": entry.address[1],
                             "public_key": entry.public_key.hex()}
    if entry.bind_address is not None:
        table["bind"] = format_address(entry.bind_address)
    if entry.key_file is not None:
        table["key_file"] = _relative(entry.key_file, base)
    table["database"] = _relative(entry.database, base)
    if entry.metrics_address is not None:
        table["metrics"] = format_address(entry.metrics_address)
    table["policy"] = entry.policy.name
    _put_if_any(table, "policy_options", dict(entry.policy.options))
    return table


def _identity_table(identity: str, public_key: bytes, key_file: Path | None, base: Path) -> dict[str, Any]:
    table = {"id": identity, "public_key": public_key.hex()}
    if key_file is not None:
        table["key_file"] = _relative(key_file, base)
    return table


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base.absolute()).as_posix()
    except ValueError:
        return str(path)


def _changed_fields(value: Any, defaults: Any) -> dict[str, Any]:
    return {item.name: getattr(value, item.name) for item in dataclasses.fields(value)
            if isinstance(getattr(value, item.name), (int, float, str))
            and getattr(value, item.name) != getattr(defaults, item.name)}


def _put_if_any(table: dict, key: str, value: Any) -> None:
    if value:
        table[key] = value

