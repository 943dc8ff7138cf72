"""The cluster file (``cluster.toml``): who is in a cluster, where each replica runs, and with what.

One file describes a whole cluster, so every replica process, client and
operator tool reads the same thing.  It holds only public keys; each private
key sits in its own key file (32-byte Ed25519 seed as hex, mode 0600) named by
a path relative to the cluster file.  A client machine therefore needs the
cluster file and its own key file, nothing else.  The format::

    format = 1
    cluster_id = "demo"
    faulty_max = 1                      # optional; default: the most n tolerates

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
    host = "127.0.0.1"
    port = 7000
    public_key = "<64 hex digits>"
    key_file = "keys/replica-0.key"     # optional on machines that do not run this replica
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
import importlib
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NoReturn

import tomli_w

from .core import AccountabilityOptions, ClusterConfig, ConfigError, KeyPair, Limits, Risk, VerdictRule
from .core import default_rules, max_faulty, operator_signer_id, quorum_size
from .policies import POLICIES, build_policy
from .policy import Policy
from .runtime import NodeOptions, TransportLimits

FORMAT_VERSION = 1
CLUSTER_FILE_NAME = "cluster.toml"
MAX_FILE_BYTES = 1024 * 1024
MAX_ID_BYTES = 64  # The wire limit on a client id (bft.core checks the same bound on every request).
SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32

Address = tuple[str, int]

TOP_LEVEL_KEYS = {"format", "cluster_id", "faulty_max", "limits", "rules", "accountability", "node", "replicas",
                  "clients", "operators"}
REPLICA_KEYS = {"id", "host", "port", "public_key", "key_file", "database", "metrics", "policy", "policy_options"}
CLIENT_KEYS = {"id", "public_key", "key_file"}
# Operators are read by tools that act on the whole cluster; a new operator setting is one more key here.
OPERATOR_KEYS = {"id", "public_key", "key_file"}
RULE_KEYS = {"min_allow_votes", "max_deny_votes"}
# Operators sign their commands as request signer "operator:<id>" (see bft.core._accountability).
OPERATOR_SIGNER_PREFIX = operator_signer_id("")


class ConfigFileError(Exception):
    """A cluster file or key file that cannot be used; ``str()`` is one sentence naming the file."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


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


# ---------------------------------------------------------------------------- key files

def write_key_file(path: str | os.PathLike, keypair: KeyPair) -> None:
    """Write ``keypair``'s seed as hex to a new file readable by its owner only (mode 0600)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(keypair.seed.hex() + "\n")
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0


def read_key_file(path: str | os.PathLike, expected_public_key: bytes | None = None) -> bytes:
    """The 32-byte seed in a key file, checked for owner-only permissions and against the configured key."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        with open(path, "rb") as file:
            text = file.read(4 * SEED_BYTES).decode("ascii", errors="replace")
    except FileNotFoundError:
        raise ConfigFileError(path, "the key file does not exist") from None
    except OSError as error:
        raise ConfigFileError(path, f"cannot read the key file ({error.strerror or error})") from None
    if mode & 0o077:
        raise ConfigFileError(path, f"the key file is readable by other users (mode {mode:o}); run chmod 600 on it")
    try:
        seed = bytes.fromhex(text.strip())
    except ValueError:
        seed = b""
    if len(seed) != SEED_BYTES:
        raise ConfigFileError(path, f"a key file must hold one {SEED_BYTES}-byte seed as {2 * SEED_BYTES} hex digits")
    if expected_public_key is not None and KeyPair.from_seed(seed).public_key != expected_public_key:
        raise ConfigFileError(path, "the key in this file does not match the public key in the cluster file")
    return seed


# ---------------------------------------------------------------------------- loading

def load_cluster_file(path: str | os.PathLike) -> ClusterFile:
    """Read and check a cluster file; every problem raises ``ConfigFileError`` with one sentence."""
    path = Path(path)
    document = _read_toml(path)
    reader = _Reader(path)
    reader.check_keys(document, TOP_LEVEL_KEYS, "the top level")
    version = document.get("format", FORMAT_VERSION)
    if type(version) is not int or version != FORMAT_VERSION:
        reader.fail(f"format {version!r} is not supported (this version reads format {FORMAT_VERSION})")
    cluster_id = reader.identifier(document, "cluster_id", "the top level")
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
    return ClusterFile(path.absolute(), config, replicas, clients, operators, node_options)


def _read_toml(path: Path) -> dict[str, Any]:
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
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) != PUBLIC_KEY_BYTES:
            self.fail(f"'public_key' in {where} must be {2 * PUBLIC_KEY_BYTES} hex digits")
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
        return ReplicaEntry(replica_id, address, self.public_key(table, where),
                            self.file_path(table, "key_file", where, required=False),
                            self.file_path(table, "database", where, required=True),
                            self.policy(table, where), metrics_address)

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


# ---------------------------------------------------------------------------- writing

def dump_cluster_file(cluster: ClusterFile, directory: str | os.PathLike | None = None) -> str:
    """The TOML text of ``cluster``; paths under ``directory`` (default: the file's folder) are written relative."""
    base = Path(directory) if directory is not None else cluster.path.parent
    config = cluster.config
    document: dict[str, Any] = {"format": FORMAT_VERSION, "cluster_id": config.cluster_id}
    if config.faulty_max != max_faulty(config.replica_count):
        document["faulty_max"] = config.faulty_max
    _put_if_any(document, "limits", _changed_fields(config.limits, Limits()))
    defaults = default_rules(config.replica_count, config.faulty_max, config.quorum)
    _put_if_any(document, "rules", {risk.value: dataclasses.asdict(rule) for risk, rule in config.rules.items()
                                    if rule != defaults[risk]})
    _put_if_any(document, "accountability", _changed_fields(config.accountability, AccountabilityOptions()))
    node = _changed_fields(cluster.node_options, NodeOptions())
    _put_if_any(node, "transport", _changed_fields(cluster.node_options.transport, TransportLimits()))
    _put_if_any(document, "node", node)
    document["replicas"] = [_replica_table(entry, base) for entry in cluster.replicas]
    _put_if_any(document, "clients", [_identity_table(entry.client_id, entry.public_key, entry.key_file, base)
                                       for entry in cluster.clients])
    _put_if_any(document, "operators", [_identity_table(entry.operator_id, entry.public_key, entry.key_file, base)
                                         for entry in cluster.operators])
    return tomli_w.dumps(document)


def write_cluster_file(cluster: ClusterFile) -> None:
    """Write ``cluster`` to ``cluster.path``, refusing to replace a file that exists."""
    text = dump_cluster_file(cluster)
    with open(cluster.path, "x", encoding="utf-8") as file:
        file.write(text)


def _replica_table(entry: ReplicaEntry, base: Path) -> dict[str, Any]:
    table: dict[str, Any] = {"id": entry.replica_id, "host": entry.address[0], "port": entry.address[1],
                             "public_key": entry.public_key.hex()}
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

