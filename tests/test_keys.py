"""Keys made where they live: ``bft keygen`` writes an owner-only key it never overwrites, ``bft cluster`` assembles a loadable cluster file from public keys and bind/advertised addresses only, bad input is one sentence that changes nothing, a replica finds its id from its own key, each host's folder holds only its own private key, and no command outside ``bft init`` opens another node's key file."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from bft.cluster import (ConfigFileError, ReplicaUsageError, free_loopback_ports, load_cluster_file, prepare_launch,
                         read_key_file)
from bft.cli import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, main
from bft.core import KeyPair

HOSTS = ("host-0", "host-1", "host-2", "host-3")
# A 32-byte value that is hex of the right length but no Ed25519 point (no key bft keygen makes).
NOT_A_POINT = "01" * 32


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(argument) for argument in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def keygen(capsys, path: Path) -> str:
    code, out, err = run(capsys, "keygen", "--out", path)
    assert code == EXIT_OK, err
    return out.strip()


def assemble(capsys, admin: Path, public_keys: dict[str, str], addresses: dict[str, tuple[str, str | None]],
             client_key: str) -> Path:
    """``bft cluster new`` and one ``add-*`` per node, as the admin would run them; returns the cluster file."""
    cluster_file = admin / "cluster.toml"
    assert run(capsys, "cluster", "new", cluster_file, "--id", "walk")[0] == EXIT_OK
    for host in HOSTS:
        advertised, bind = addresses[host]
        extra = ("--bind", bind) if bind else ()
        code, _, err = run(capsys, "cluster", "add-replica", cluster_file, "--public-key", public_keys[host],
                           "--address", advertised, *extra)
        assert code == EXIT_OK, err
    code, _, err = run(capsys, "cluster", "add-client", cluster_file, "--id", "client-0", "--public-key", client_key)
    assert code == EXIT_OK, err
    return cluster_file


@pytest.fixture()
def hosts(tmp_path, capsys) -> dict:
    """Four replica hosts and a client host, each with only the key it made, and the assembled cluster file on each."""
    folders = {name: tmp_path / name for name in (*HOSTS, "client", "admin")}
    for folder in folders.values():
        folder.mkdir()
    public_keys = {host: keygen(capsys, folders[host] / "replica.key") for host in HOSTS}
    client_key = keygen(capsys, folders["client"] / "client.key")
    ports = free_loopback_ports(4)
    addresses = {host: (f"127.0.0.1:{port}", None) for host, port in zip(HOSTS, ports)}
    cluster_file = assemble(capsys, folders["admin"], public_keys, addresses, client_key)
    for name in (*HOSTS, "client"):
        shutil.copy(cluster_file, folders[name] / "cluster.toml")
    return {"folders": folders, "public_keys": public_keys, "client_key": client_key}


# ---------------------------------------------------------------------------- keygen

def test_keygen_writes_an_owner_only_key_prints_its_public_key_and_never_overwrites(tmp_path, capsys):
    path = tmp_path / "replica.key"
    code, out, err = run(capsys, "keygen", "--out", path)
    assert code == EXIT_OK and "mode 0600" in err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert out == KeyPair.from_seed(read_key_file(path)).public_key.hex() + "\n", "stdout is the public key alone"
    seed_before = path.read_bytes()
    code, out, err = run(capsys, "keygen", "--out", path)
    assert code == EXIT_USAGE and out == "" and "already exists" in err and err.count("\n") == 1
    assert path.read_bytes() == seed_before


def test_keygen_writes_owner_only_even_under_a_permissive_umask(tmp_path, capsys):
    previous = os.umask(0)
    try:
        keygen(capsys, tmp_path / "k.key")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600


@pytest.mark.parametrize("target, contains", [("missing/k.key", "No such file"), (".", "is a directory")])
def test_keygen_into_a_place_it_cannot_write_is_one_sentence(target, contains, tmp_path, capsys):
    code, out, err = run(capsys, "keygen", "--out", tmp_path / target)
    assert code == EXIT_USAGE and out == "" and contains in err and err.count("\n") == 1, err


# ---------------------------------------------------------------------------- assembly

def test_a_cluster_assembled_from_public_keys_loads_with_bind_and_advertised_addresses(tmp_path, capsys):
    keys = {host: KeyPair.generate().public_key.hex() for host in HOSTS}
    addresses = {host: (f"10.9.0.{i + 1}:7000", "0.0.0.0:7000" if i % 2 == 0 else None)
                 for i, host in enumerate(HOSTS)}
    cluster_file = assemble(capsys, tmp_path, keys, addresses, KeyPair.generate().public_key.hex())
    operator_key = KeyPair.generate().public_key.hex()
    assert run(capsys, "cluster", "add-operator", cluster_file, "--id", "ops", "--public-key", operator_key)[0] == 0
    cluster = load_cluster_file(cluster_file)
    assert (cluster.config.replica_count, cluster.config.faulty_max, cluster.config.quorum) == (4, 1, 3)
    for i, (host, entry) in enumerate(zip(HOSTS, cluster.replicas)):
        assert entry.public_key.hex() == keys[host] and entry.key_file is None
        assert entry.address == (f"10.9.0.{i + 1}", 7000)
        assert entry.listen_address == (("0.0.0.0", 7000) if i % 2 == 0 else entry.address)
        assert entry.database == tmp_path / "data" / f"replica-{i}.db"
    assert [entry.policy.name for entry in cluster.replicas] == ["deny-list", "context-rules", "pattern-matcher",
                                                                   "rate"]
    assert cluster.operator("ops").public_key.hex() == operator_key
    assert "key_file" not in cluster_file.read_text()


@pytest.mark.parametrize("argv, contains", [
    (("add-replica", "--public-key", "abcd", "--address", "10.9.0.9:7000"), "must be 64 hex digits"),
    (("add-replica", "--public-key", NOT_A_POINT, "--address", "10.9.0.9:7000"), "is not an Ed25519 public key"),
    (("add-replica", "--public-key", "{replica0}", "--address", "10.9.0.9:7000"), "appears more than once"),
    (("add-replica", "--public-key", "{fresh}", "--address", "10.9.0.1:7000"), "address 10.9.0.1:7000 appears"),
    (("add-replica", "--public-key", "{fresh}", "--address", "10.9.0.9"), "must be HOST:PORT"),
    (("add-replica", "--public-key", "{fresh}", "--address", "10.9.0.9:1", "--policy", "yes-man"), "unknown policy"),
    (("add-client", "--id", "client-1", "--public-key", "{replica0}"), "have the same public key"),
    (("add-client", "--id", "client-0", "--public-key", "{fresh}"), "client id 'client-0' appears more than once"),
    (("add-operator", "--id", " ops", "--public-key", "{fresh}"), "without surrounding spaces"),
    (("new", "--id", "again"), "never replaces a file"),
])
def test_bad_assembly_input_is_one_sentence_and_leaves_the_file_unchanged(argv, contains, tmp_path, capsys):
    keys = {host: KeyPair.generate().public_key.hex() for host in HOSTS}
    cluster_file = assemble(capsys, tmp_path, keys, {host: (f"10.9.0.{i + 1}:7000", None)
                                                     for i, host in enumerate(HOSTS)},
                            KeyPair.generate().public_key.hex())
    before = cluster_file.read_bytes()
    substitutions = {"replica0": keys["host-0"], "fresh": KeyPair.generate().public_key.hex()}
    arguments = [argument.format(**substitutions) for argument in argv]
    code, out, err = run(capsys, "cluster", arguments[0], cluster_file, *arguments[1:])
    assert code == EXIT_USAGE and out == "" and err.count("\n") == 1 and contains in err, err
    assert cluster_file.read_bytes() == before
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == [], "a temporary file was left"


def test_clients_wait_for_the_replicas_and_a_draft_is_no_cluster(tmp_path, capsys):
    cluster_file = tmp_path / "cluster.toml"
    assert run(capsys, "cluster", "new", cluster_file, "--id", "draft")[0] == EXIT_OK
    code, _, err = run(capsys, "cluster", "add-client", cluster_file, "--id", "c", "--public-key",
                       KeyPair.generate().public_key.hex())
    assert code == EXIT_USAGE and "add them first" in err
    with pytest.raises(ConfigFileError, match="lists no replicas"):
        load_cluster_file(cluster_file)


# ---------------------------------------------------------------------------- a replica and its own key

def test_a_replica_finds_its_id_from_its_own_key_file_and_refuses_anyone_elses(hosts, tmp_path):
    folders = hosts["folders"]
    for replica_id, host in enumerate(HOSTS):
        launch = prepare_launch(folders[host] / "cluster.toml", None, key_file=folders[host] / "replica.key")
        assert launch.replica_id == replica_id
        assert KeyPair.from_seed(launch.seed).public_key.hex() == hosts["public_keys"][host]
    cluster_on_host_1 = folders["host-1"] / "cluster.toml"
    with pytest.raises(ConfigFileError, match="this is replica 1's key, not replica 2's"):
        prepare_launch(cluster_on_host_1, 2, key_file=folders["host-1"] / "replica.key")
    with pytest.raises(ConfigFileError, match="belongs to no replica"):
        prepare_launch(cluster_on_host_1, None, key_file=folders["client"] / "client.key")
    with pytest.raises(ConfigFileError, match="has no key_file on this machine"):
        prepare_launch(cluster_on_host_1, 1)
    with pytest.raises(ReplicaUsageError, match="give --id, or --key-file"):
        prepare_launch(cluster_on_host_1, None)
    (folders["host-1"] / "replica.key").chmod(0o644)
    with pytest.raises(ConfigFileError, match="readable by other users"):
        prepare_launch(cluster_on_host_1, None, key_file=folders["host-1"] / "replica.key")


def test_each_host_folder_holds_only_its_own_private_key(hosts):
    folders = hosts["folders"]
    key_names = {**{host: "replica.key" for host in HOSTS}, "client": "client.key"}
    seeds = {name: (folders[name] / key_name).read_text().strip() for name, key_name in key_names.items()}
    for name, seed in seeds.items():
        files = [path for path in folders[name].rglob("*") if path.is_file()]
        assert [path.name for path in files if path.suffix == ".key"] == [key_names[name]]
        text = b"".join(path.read_bytes() for path in files)
        others = [other for other, other_seed in seeds.items() if other != name and other_seed.encode() in text]
        assert others == [], f"{name}'s folder holds the private key of {others}"
        assert text.count(seed.encode()) == 1, "the own key appears only in its key file"
    admin_text = b"".join(path.read_bytes() for path in folders["admin"].rglob("*") if path.is_file())
    assert not any(seed.encode() in admin_text for seed in seeds.values()), "the assembler saw a private key"


# ---------------------------------------------------------------------------- no command opens another node's key

@contextlib.contextmanager
def opened_files():
    """Every path the process opens meanwhile (Python's ``open`` audit event covers ``open`` and ``os.open``)."""
    paths: list[str] = []
    _recorders.append(paths)
    try:
        yield paths
    finally:
        _recorders.remove(paths)


_recorders: list[list[str]] = []


def _record_open(event: str, arguments: tuple) -> None:
    if event == "open" and _recorders and isinstance(arguments[0], (str, bytes, Path)):
        _recorders[-1].append(str(Path(arguments[0] if not isinstance(arguments[0], bytes)
                                       else arguments[0].decode()).resolve()))


sys.addaudithook(_record_open)  # Audit hooks cannot be removed; this one records only inside ``opened_files``.


def test_no_command_outside_init_opens_another_nodes_private_key(tmp_path, capsys):
    folders = {name: tmp_path / name for name in (*HOSTS, "client", "admin")}
    for folder in folders.values():
        folder.mkdir()
    key_files = {name: folders[name] / ("client.key" if name == "client" else "replica.key")
                 for name in (*HOSTS, "client")}
    public_keys = {}
    for name, key_file in key_files.items():
        with opened_files() as paths:
            public_keys[name] = keygen(capsys, key_file)
        assert_opened_only_own_key(paths, key_files, name)
    addresses = {host: (f"127.0.0.1:{port}", None) for host, port in zip(HOSTS, free_loopback_ports(4))}
    with opened_files() as paths:
        cluster_file = assemble(capsys, folders["admin"], public_keys, addresses, public_keys["client"])
    assert str(cluster_file.resolve()) in paths, "the recorder saw the cluster file written"
    assert not {str(path.resolve()) for path in key_files.values()} & set(paths), "assembly opened a private key"
    with opened_files() as paths:  # The next epoch's file: a replica moved to a new host with a new key.
        next_file = folders["admin"] / "epoch-1.toml"
        assert run(capsys, "cluster", "next-epoch", cluster_file, next_file)[0] == EXIT_OK
        assert run(capsys, "cluster", "set-replica", next_file, "--id", 2, "--public-key",
                   KeyPair.generate().public_key.hex(), "--address", "127.0.0.1:1")[0] == EXIT_OK
    assert str(next_file.resolve()) in paths, "the recorder saw the next epoch's file written"
    assert not {str(path.resolve()) for path in key_files.values()} & set(paths), "next-epoch opened a private key"
    for name in (*HOSTS, "client"):
        shutil.copy(cluster_file, folders[name] / "cluster.toml")
    for name in HOSTS:
        with opened_files() as paths:
            prepare_launch(folders[name] / "cluster.toml", None, key_file=key_files[name])
        assert_opened_only_own_key(paths, key_files, name)
    with opened_files() as paths:  # Nobody runs: the request is refused by its deadline.
        code, _, _ = run(capsys, "submit", "--config", folders["client"], "--client", "client-0", "--key-file",
                         key_files["client"], "--risk", "low", "--action", '{"tool": "read_file"}',
                         "--timeout-ms", "300")
    assert code == EXIT_REFUSED
    assert_opened_only_own_key(paths, key_files, "client")


def assert_opened_only_own_key(paths: list[str], key_files: dict[str, Path], own: str) -> None:
    assert str(key_files[own].resolve()) in paths, f"{own} did not open its own key (the recorder is broken)"
    others = [name for name, path in key_files.items() if name != own and str(path.resolve()) in paths]
    assert others == [], f"{own}'s command opened the private key of {others}"


@pytest.mark.parametrize("argv, contains", [
    (("replica", "--config", "{host}/cluster.toml"), "give --id, or --key-file"),
    (("replica", "--config", "{host}/cluster.toml", "--key-file", "{host}/missing.key"), "does not exist"),
    (("replica", "--config", "{host}/cluster.toml", "--key-file", "{client}/client.key"), "belongs to no replica"),
    (("replica", "--config", "{host}/cluster.toml", "--id", "9", "--key-file", "{host}/replica.key"),
     "there is no replica 9"),
    (("cluster", "new", "{host}/other.toml", "--id", ""), "'cluster_id' in the top level must be 1 to 64 bytes"),
    (("cluster", "add-replica", "{host}/cluster.toml", "--public-key", "{replica0}", "--address", "h:0"),
     "must be HOST:PORT"),
])
def test_replica_and_cluster_command_mistakes_are_one_sentence_and_exit_code_2(argv, contains, hosts, capsys):
    folders = hosts["folders"]
    arguments = [argument.format(host=folders["host-0"], client=folders["client"],
                                 replica0=hosts["public_keys"]["host-0"]) for argument in argv]
    code, out, err = run(capsys, *arguments)
    assert code == EXIT_USAGE and out == "" and err.count("\n") == 1 and contains in err, err
    assert "Traceback" not in err


def test_a_replica_refuses_its_own_key_file_if_others_can_read_it(hosts, capsys):
    key_file = hosts["folders"]["host-2"] / "replica.key"
    key_file.chmod(0o640)
    code, _, err = run(capsys, "replica", "--config", hosts["folders"]["host-2"], "--key-file", key_file)
    assert code == EXIT_USAGE and "readable by other users (mode 640); run chmod 600 on it" in err, err


# ---------------------------------------------------------------------------- the next epoch's file

def test_next_epoch_names_genesis_and_chain_and_set_replica_changes_one_entry(tmp_path, capsys):
    keys = {host: KeyPair.generate().public_key.hex() for host in HOSTS}
    cluster_file = assemble(capsys, tmp_path, keys, {host: (f"10.9.0.{i + 1}:7000", "0.0.0.0:7000")
                                                     for i, host in enumerate(HOSTS)},
                            KeyPair.generate().public_key.hex())
    code, out, err = run(capsys, "cluster", "next-epoch", cluster_file, tmp_path / "epoch-1.toml")
    assert code == EXIT_OK and "genesis cluster.toml, chain chain.json" in out, err
    fresh = KeyPair.generate().public_key.hex()
    code, out, err = run(capsys, "cluster", "set-replica", tmp_path / "epoch-1.toml", "--id", 2, "--public-key", fresh,
                         "--address", "10.9.0.9:7000", "--metrics", "10.9.0.9:9100")
    assert code == EXIT_OK and out.startswith("replica 2: key ") and "reached at 10.9.0.9:7000" in out, err
    genesis, following = load_cluster_file(cluster_file), load_cluster_file(tmp_path / "epoch-1.toml")
    assert (following.genesis_file, following.chain_file) == (cluster_file, tmp_path / "chain.json")
    changed = following.replica(2)
    assert changed.public_key.hex() == fresh and changed.address == ("10.9.0.9", 7000)
    assert changed.listen_address == changed.address, "the old host's bind address is not carried to the new one"
    assert following.replicas[:2] == genesis.replicas[:2] and following.replicas[3] == genesis.replicas[3]
    assert following.clients == genesis.clients
    # A later epoch's file passes its genesis and chain on; the key of replica 1 alone changes.
    code, out, err = run(capsys, "cluster", "next-epoch", tmp_path / "epoch-1.toml", tmp_path / "epoch-2.toml")
    assert code == EXIT_OK, err
    rotated = KeyPair.generate().public_key.hex()
    assert run(capsys, "cluster", "set-replica", tmp_path / "epoch-2.toml", "--id", 1, "--public-key", rotated)[0] == 0
    second = load_cluster_file(tmp_path / "epoch-2.toml")
    assert (second.genesis_file, second.chain_file) == (cluster_file, tmp_path / "chain.json")
    assert second.replica(1).public_key.hex() == rotated and second.replica(1).address == genesis.replica(1).address


@pytest.mark.parametrize("argv, contains", [
    (("next-epoch", "{genesis}", "{epoch1}"), "never replaces a file"),
    (("next-epoch", "{epoch1}", "{epoch2}", "--chain", "other.json"), "already names its chain file"),
    (("set-replica", "{epoch1}", "--id", "4", "--address", "10.9.0.9:7000"), "there is no replica 4"),
    (("set-replica", "{epoch1}", "--id", "1", "--public-key", "{replica0}"), "appears more than once"),
    (("set-replica", "{epoch1}", "--id", "1", "--address", "10.9.0.1:7000"), "address 10.9.0.1:7000 appears"),
    (("set-replica", "{epoch1}", "--id", "1"), "give --public-key, --address or both"),
])
def test_bad_next_epoch_input_is_one_sentence_and_writes_nothing(argv, contains, tmp_path, capsys):
    keys = {host: KeyPair.generate().public_key.hex() for host in HOSTS}
    cluster_file = assemble(capsys, tmp_path, keys, {host: (f"10.9.0.{i + 1}:7000", None)
                                                     for i, host in enumerate(HOSTS)},
                            KeyPair.generate().public_key.hex())
    assert run(capsys, "cluster", "next-epoch", cluster_file, tmp_path / "epoch-1.toml")[0] == EXIT_OK
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    substitutions = {"genesis": cluster_file, "epoch1": tmp_path / "epoch-1.toml", "epoch2": tmp_path / "epoch-2.toml",
                     "replica0": keys["host-0"]}
    code, out, err = run(capsys, "cluster", *[argument.format(**substitutions) for argument in argv])
    assert code == EXIT_USAGE and out == "" and err.count("\n") == 1 and contains in err, err
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
