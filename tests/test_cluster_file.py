"""The cluster file format: what ``bft init`` writes loads back to the same record, overrides round-trip, and every kind of bad cluster or key file is refused with one sentence naming the file and the problem."""

from __future__ import annotations

import copy
import os
import random
import socket
import stat
import tomllib
from pathlib import Path

import pytest
import tomli_w

from bft.cluster import (ClusterFile, ConfigFileError, PolicySpec, create_cluster_directory, dump_cluster_file,
                         free_loopback_ports, load_cluster_file, parse_address, ports_of_sibling_clusters,
                         read_key_file, write_key_file)
from bft.core import AccountabilityOptions, ClusterConfig, KeyPair, Limits, Risk, VerdictRule
from bft.runtime import NodeOptions, TransportLimits


@pytest.fixture(scope="module")
def cluster_directory(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("cluster")
    create_cluster_directory(directory, 4, 2)
    return directory


@pytest.fixture()
def document(cluster_directory) -> dict:
    return tomllib.loads((cluster_directory / "cluster.toml").read_text())


def write(directory: Path, document: dict, name: str = "edited.toml") -> Path:
    path = directory / name
    path.write_text(tomli_w.dumps(document))
    return path


def test_what_init_writes_loads_back_and_names_every_identity(cluster_directory):
    cluster = load_cluster_file(cluster_directory / "cluster.toml")
    assert cluster.config.replica_count == 4 and cluster.config.faulty_max == 1
    assert [entry.client_id for entry in cluster.clients] == ["client-0", "client-1"]
    assert [entry.operator_id for entry in cluster.operators] == ["operator-0"]
    assert len(set(cluster.addresses.values()) | {entry.metrics_address for entry in cluster.replicas}) == 8
    for entry in cluster.replicas:
        assert entry.database.parent == cluster_directory / "data"
        assert KeyPair.from_seed(cluster.replica_seed(entry.replica_id)).public_key == entry.public_key
    assert KeyPair.from_seed(cluster.client_seed("client-1")).public_key == cluster.config.client_keys["client-1"]
    assert [entry.policy.name for entry in cluster.replicas] == ["deny-list", "context-rules", "pattern-matcher",
                                                                "rate"]


def test_init_writes_private_keys_readable_by_the_owner_only_and_refuses_to_overwrite(tmp_path):
    create_cluster_directory(tmp_path / "fresh", 4, 1)
    keys = tmp_path / "fresh" / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    key_files = sorted(keys.iterdir())
    assert [path.name for path in key_files] == ["client-0.key", "operator-0.key", "replica-0.key", "replica-1.key",
                                                 "replica-2.key", "replica-3.key"]
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in key_files)
    before = (tmp_path / "fresh" / "cluster.toml").read_bytes()
    with pytest.raises(ConfigFileError, match="already exists"):
        create_cluster_directory(tmp_path / "fresh", 4, 1)
    assert (tmp_path / "fresh" / "cluster.toml").read_bytes() == before


def test_overrides_round_trip_and_defaults_are_not_written(cluster_directory, tmp_path):
    cluster = load_cluster_file(cluster_directory / "cluster.toml")
    assert not {"[limits]", "[node", "[accountability]"} & set(dump_cluster_file(cluster).split())
    edited = ClusterFile(
        tmp_path / "cluster.toml",
        ClusterConfig.create(
            "edited", cluster.config.replica_keys, {entry.client_id: entry.public_key for entry in cluster.clients},
            faulty_max=1, rules={**cluster.config.rules, Risk.HIGH: VerdictRule(min_allow_votes=4, max_deny_votes=0)},
            limits=Limits(view_change_timeout_ticks=20, checkpoint_interval=8, log_window=32, action_depth_max=6,
                          action_bytes_max=4096),
            operator_keys={entry.operator_id: entry.public_key for entry in cluster.operators},
            accountability=AccountabilityOptions(auto_quarantine_suspects=True, suspicion_min_votes=5,
                                                 against_peers_permille=950)),
        tuple(entry.__class__(entry.replica_id, entry.address, entry.public_key, entry.key_file, entry.database,
                              PolicySpec("rate", {"window_requests": 5}) if entry.replica_id == 3 else entry.policy,
                              None if entry.replica_id == 2 else entry.metrics_address)
              for entry in cluster.replicas),
        cluster.clients, cluster.operators,
        NodeOptions(tick_ms=5, transport=TransportLimits(idle_timeout_s=7.5)))
    text = dump_cluster_file(edited)
    (tmp_path / "cluster.toml").write_text(text)
    loaded = load_cluster_file(tmp_path / "cluster.toml")
    assert loaded == edited
    assert loaded.config.accountability == AccountabilityOptions(auto_quarantine_suspects=True, suspicion_min_votes=5,
                                                                 against_peers_permille=950)
    assert tomllib.loads(text)["accountability"] == {"auto_quarantine_suspects": True, "suspicion_min_votes": 5,
                                                     "against_peers_permille": 950}
    assert loaded.node_options.transport.idle_timeout_s == 7.5
    assert (loaded.config.limits.action_depth_max, loaded.config.limits.action_bytes_max) == (6, 4096)
    assert loaded.replicas[3].policy.build().window_requests == 5
    assert dump_cluster_file(loaded) == text


def test_a_policy_may_be_an_import_path():
    assert PolicySpec("bft.policies:ApproveEverything").build().name == "approve-everything"
    with pytest.raises(ValueError, match="cannot import"):
        PolicySpec("no_such_module_here:Policy").build()
    with pytest.raises(ValueError, match="has no attribute"):
        PolicySpec("bft.policies:NoSuchPolicy").build()
    with pytest.raises(ValueError, match="bad options"):
        PolicySpec("deny-list", {"no_such_option": 1}).build()


def test_addresses_parse_with_a_clear_error():
    assert parse_address("127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert parse_address("[::1]:7000") == ("::1", 7000)
    for bad in ("7000", "host:", ":80", "host:0", "host:70000", "host:http"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


def replica(document: dict, index: int = 0) -> dict:
    return document["replicas"][index]


# Each case: an edit of a valid document, and a fragment the one-sentence error must contain.
BAD_DOCUMENTS = {
    "unknown top-level key": (lambda d: d.update(colour="blue"), "unknown key 'colour' in the top level"),
    "future format": (lambda d: d.update(format=2), "format 2 is not supported"),
    "format as boolean": (lambda d: d.update(format=True), "is not supported"),
    "no cluster id": (lambda d: d.pop("cluster_id"), "missing 'cluster_id'"),
    "cluster id not text": (lambda d: d.update(cluster_id=7), "'cluster_id' in the top level must be a string"),
    "cluster id with spaces": (lambda d: d.update(cluster_id=" x"), "without surrounding spaces"),
    "no replicas": (lambda d: d.pop("replicas"), "lists no replicas"),
    "replicas not tables": (lambda d: d.update(replicas=[1, 2]), "must be an array of tables"),
    "replica without host": (lambda d: replica(d).pop("host"), "replica 0 is missing 'host'"),
    "replica without port": (lambda d: replica(d).pop("port"), "replica 0 is missing 'port'"),
    "port out of range": (lambda d: replica(d).update(port=70000), "'port' in replica 0 must be a port number"),
    "port as text": (lambda d: replica(d).update(port="7000"), "must be a port number"),
    "replica id as text": (lambda d: replica(d).update(id="0"), "'id' in replica entry 1 must be a whole number"),
    "negative replica id": (lambda d: replica(d).update(id=-1), "must not be negative"),
    "duplicate replica id": (lambda d: replica(d, 1).update(id=0), "replica id 0 appears more than once"),
    "replica ids with a gap": (lambda d: replica(d, 3).update(id=7), "replica ids must be 0 to 3"),
    "bad public key": (lambda d: replica(d).update(public_key="zz"), "'public_key' in replica 0 must be 64 hex"),
    "short public key": (lambda d: replica(d).update(public_key="ab" * 31), "must be 64 hex digits"),
    "shared public key": (lambda d: replica(d, 1).update(public_key=replica(d)["public_key"]),
                          "replica public key"),
    "unknown replica key": (lambda d: replica(d).update(colour=1), "unknown key 'colour' in replica entry 1"),
    "no database": (lambda d: replica(d).pop("database"), "replica 0 is missing 'database'"),
    "empty database path": (lambda d: replica(d).update(database=""), "'database' in replica 0 must not be empty"),
    "no policy": (lambda d: replica(d).pop("policy"), "replica 0 is missing 'policy'"),
    "unknown policy": (lambda d: replica(d).update(policy="yes-man"), "unknown policy 'yes-man' for replica 0"),
    "bad import path": (lambda d: replica(d).update(policy="not a module:X"), "neither a built-in name nor"),
    "policy options not a table": (lambda d: replica(d).update(policy_options=3), "'policy_options' in replica 0"),
    "bad metrics address": (lambda d: replica(d).update(metrics="localhost"), "'metrics' in replica 0 must be"),
    "duplicate address": (lambda d: replica(d, 1).update(port=replica(d)["port"], host=replica(d)["host"]),
                          "appears more than once"),
    "metrics on a replica port": (lambda d: replica(d, 1).update(metrics=f"{replica(d)['host']}:{replica(d)['port']}"),
                                  "appears more than once"),
    "duplicate client": (lambda d: d["clients"][1].update(id="client-0"), "client id 'client-0' appears more"),
    "client holding a replica's key": (lambda d: d["clients"][0].update(public_key=replica(d, 2)["public_key"]),
                                       "replica 2 and client 'client-0' have the same public key"),
    "two clients with one key": (lambda d: d["clients"][1].update(public_key=d["clients"][0]["public_key"]),
                                 "client 'client-0' and client 'client-1' have the same public key"),
    "operator holding a client's key": (lambda d: d["operators"][0].update(public_key=d["clients"][1]["public_key"]),
                                        "client 'client-1' and operator 'operator-0' have the same public key"),
    "action depth above the protocol maximum": (lambda d: d.update(limits={"action_depth_max": 33}),
                                                "action_depth_max must be in [1, 32]"),
    "empty client id": (lambda d: d["clients"][0].update(id=""), "'id' in client entry 1 must be 1 to 64 bytes"),
    "unknown client key": (lambda d: d["clients"][0].update(role="admin"), "unknown key 'role' in client entry 1"),
    "clients not tables": (lambda d: d.update(clients="client-0"), "'clients' must be an array of tables"),
    "operator without key": (lambda d: d["operators"][0].pop("public_key"), "operator 'operator-0' is missing"),
    "unknown limit": (lambda d: d.update(limits={"speed": 1}), "unknown key 'speed' in [limits]"),
    "limit of the wrong type": (lambda d: d.update(limits={"log_window": "big"}), "'log_window' in [limits] must be"),
    "limit as a fraction": (lambda d: d.update(limits={"log_window": 1.5}), "must be a whole number"),
    "unsafe limits": (lambda d: d.update(limits={"log_window": 8, "checkpoint_interval": 8}),
                      "not safe as configured: log_window must be at least twice"),
    "limits not a table": (lambda d: d.update(limits=3), "[limits] must be a table"),
    "rule below the floor": (lambda d: d.update(rules={"low": {"min_allow_votes": 2, "max_deny_votes": 4}}),
                             "rule for low: min_allow_votes 2 is below the fail-closed floor"),
    "rule for an unknown risk": (lambda d: d.update(rules={"extreme": {}}), "unknown key 'extreme' in [rules]"),
    "rule missing a field": (lambda d: d.update(rules={"high": {"min_allow_votes": 4}}),
                             "[rules.high] is missing 'max_deny_votes'"),
    "too many faulty": (lambda d: d.update(faulty_max=2), "4 replicas cannot tolerate 2 faulty ones"),
    "negative faulty": (lambda d: d.update(faulty_max=-1), "cannot tolerate -1 faulty"),
    "unknown accountability key": (lambda d: d.update(accountability={"auto_quarantine": True}),
                                   "unknown key 'auto_quarantine' in [accountability]"),
    "accountability switch as a number": (lambda d: d.update(accountability={"auto_quarantine_suspects": 1}),
                                          "'auto_quarantine_suspects' in [accountability] must be true or false"),
    "accountability bound as a switch": (lambda d: d.update(accountability={"evidence_records_max": True}),
                                         "'evidence_records_max' in [accountability] must be a whole number"),
    "unusable accountability bounds": (lambda d: d.update(accountability={"suspicion_min_votes": 500}),
                                       "the [accountability] settings are not usable: suspicion_min_votes must be"),
    "accountability not a table": (lambda d: d.update(accountability=True), "[accountability] must be a table"),
    "unknown node option": (lambda d: d.update(node={"turbo": True}), "unknown key 'turbo' in [node]"),
    "unusable node option": (lambda d: d.update(node={"tick_ms": 0}), "node options are not usable: tick_ms"),
    "node option as boolean": (lambda d: d.update(node={"tick_ms": True}), "'tick_ms' in [node] must be"),
    "unknown transport option": (lambda d: d.update(node={"transport": {"mtu": 1}}),
                                 "unknown key 'mtu' in [node.transport]"),
    "unusable transport option": (lambda d: d.update(node={"transport": {"idle_timeout_s": -1}}),
                                  "every timeout must be positive"),
}


@pytest.mark.parametrize("name", sorted(BAD_DOCUMENTS))
def test_every_bad_cluster_file_is_one_sentence_naming_the_file_and_the_problem(name, document, tmp_path):
    edit, expected = BAD_DOCUMENTS[name]
    edited = copy.deepcopy(document)
    edit(edited)
    path = write(tmp_path, edited)
    with pytest.raises(ConfigFileError) as raised:
        load_cluster_file(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert "\n" not in message and "b'" not in message  # One line, no Python reprs of bytes.


def test_files_that_are_not_cluster_files_are_refused_with_one_sentence(tmp_path):
    cases = {tmp_path / "missing.toml": "does not exist", tmp_path: "is a directory"}
    (tmp_path / "broken.toml").write_text("cluster_id = \n")
    cases[tmp_path / "broken.toml"] = "not valid TOML"
    (tmp_path / "binary.toml").write_bytes(b"cluster_id = \"\xff\xfe\"\n")
    cases[tmp_path / "binary.toml"] = "not UTF-8"
    (tmp_path / "huge.toml").write_bytes(b"# " + b"x" * (1024 * 1024) + b"\n")
    cases[tmp_path / "huge.toml"] = "larger than"
    (tmp_path / "deep.toml").write_text("limits = " + "[" * 10_000 + "]" * 10_000 + "\n")
    cases[tmp_path / "deep.toml"] = "nests arrays or tables too deeply"
    for path, expected in cases.items():
        with pytest.raises(ConfigFileError) as raised:
            load_cluster_file(path)
        assert str(raised.value).startswith(str(path)) and expected in str(raised.value)
        assert "\n" not in str(raised.value)


def test_lookups_of_unknown_replicas_and_clients_name_what_exists(cluster_directory):
    cluster = load_cluster_file(cluster_directory / "cluster.toml")
    with pytest.raises(ConfigFileError, match=r"there is no replica 4 \(the replicas are 0 to 3\)"):
        cluster.replica(4)
    with pytest.raises(ConfigFileError, match="there is no client 'mallory' .*client-0, client-1"):
        cluster.client("mallory")
    with pytest.raises(ConfigFileError, match=r"there is no operator 'mallory' \(the operators are: operator-0\)"):
        cluster.client("operator:mallory")


def test_operators_reach_the_config_and_sign_as_operator_clients_with_their_own_key(cluster_directory):
    cluster = load_cluster_file(cluster_directory / "cluster.toml")
    operator = cluster.operator("operator-0")
    assert dict(cluster.config.operator_keys) == {"operator-0": operator.public_key}
    assert cluster.config.client_keys["operator:operator-0"] == operator.public_key
    assert "operator:operator-0" not in cluster.config.ordinary_client_ids
    entry = cluster.client("operator:operator-0")
    assert (entry.public_key, entry.key_file) == (operator.public_key, cluster_directory / "keys" / "operator-0.key")
    assert KeyPair.from_seed(cluster.client_seed("operator:operator-0")).public_key == operator.public_key


def test_key_files_are_checked_for_permissions_content_and_the_configured_key(tmp_path):
    pair, other = KeyPair.from_seed(bytes(range(32))), KeyPair.from_seed(bytes(32))
    path = tmp_path / "good.key"
    write_key_file(path, pair)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path, pair.public_key) == pair.seed
    with pytest.raises(FileExistsError):
        write_key_file(path, other)  # Never silently replaces a key.
    with pytest.raises(ConfigFileError, match="does not match the public key"):
        read_key_file(path, other.public_key)
    with pytest.raises(ConfigFileError, match="does not exist"):
        read_key_file(tmp_path / "missing.key")
    loose = tmp_path / "loose.key"
    loose.write_text(pair.seed.hex())
    os.chmod(loose, 0o644)
    with pytest.raises(ConfigFileError, match="readable by other users"):
        read_key_file(loose)
    for name, content in (("short.key", "abcd"), ("text.key", "not a key at all"), ("empty.key", "")):
        bad = tmp_path / name
        bad.write_text(content)
        os.chmod(bad, 0o600)
        with pytest.raises(ConfigFileError, match="must hold one 32-byte seed"):
            read_key_file(bad)


def test_a_replica_or_client_without_a_key_file_says_so(document, tmp_path):
    replica(document).pop("key_file")
    document["clients"][0].pop("key_file")
    cluster = load_cluster_file(write(tmp_path, document))
    with pytest.raises(ConfigFileError, match="replica 0 has no key_file on this machine"):
        cluster.replica_seed(0)
    with pytest.raises(ConfigFileError, match="client 'client-0' has no key_file"):
        cluster.client_seed("client-0")


def test_init_ports_are_distinct_free_and_outside_the_kernels_ephemeral_range():
    ports = free_loopback_ports(40, random.Random(7))
    assert len(set(ports)) == 40
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if ephemeral.exists():
        low, _ = map(int, ephemeral.read_text().split())
        if low - 20_000 >= 1000:
            assert all(20_000 <= port < low for port in ports), ports
    for port in ports:  # Each one can really be bound.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))


class ReplayedChoices(random.Random):
    """A random source whose ``randint`` returns the given ports in turn (then the last one forever)."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__(0)
        self.ports = list(ports)

    def randint(self, low: int, high: int) -> int:
        return self.ports.pop(0) if len(self.ports) > 1 else self.ports[0]


def test_init_keeps_clear_of_the_ports_its_sibling_clusters_name(tmp_path):
    first, second = (create_cluster_directory(tmp_path / name, 2, 1) for name in ("first", "second"))
    named = {port for cluster in (first, second) for entry in cluster.replicas
             for port in (entry.address[1], entry.metrics_address[1])}
    assert ports_of_sibling_clusters(tmp_path / "third") == named
    spare = free_loopback_ports(2, random.Random(3), avoid=named)
    # The random source offers every named port first; none is taken although each is free to bind.
    assert free_loopback_ports(2, ReplayedChoices([*sorted(named), *spare]), avoid=named) == spare
    third = create_cluster_directory(tmp_path / "third", 2, 1)
    assert not named & {port for entry in third.replicas for port in (entry.address[1], entry.metrics_address[1])}
