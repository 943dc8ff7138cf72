"""The pieces that let processes follow epochs, without processes: a config-change's optional replica addresses
are parsed strictly (a malformed list is a ChangeError naming it, a valid one lands in the chain's epoch and not in
the configuration digest); a later epoch's cluster file must name its genesis and chain together and must be the
configuration its chain ends in; the operator's change is refused before submission when the next file changes
the limits, names another genesis or no chain (`bft operator reconfigure` then exits 2 with one sentence); and a runtime client that learns an epoch keeps the links of replicas that
stay, closes the replaced one's and opens the new member's; and a replica's metrics tell its epoch."""

from __future__ import annotations

import hashlib
import tomllib

import pytest
import tomli_w

from bft.cluster import ConfigFileError, create_cluster_directory, load_cluster_file, parse_metrics
from bft.cluster._epochs import change_for_next_file, cluster_epochs, read_chain_links
from bft.core import ClusterConfig, KeyPair, Limits
from bft.core._reconfiguration import (ChangeError, EpochChain, change_document, configuration_digest, parse_change,
                                       sign_document)
from bft.cli import main as bft_main
from bft.runtime import AsyncClient, ReplicaMetrics


def seed_for(name: str) -> bytes:
    return hashlib.sha256(f"bft-epochs-runtime-test/{name}".encode()).digest()


def key_of(name: str) -> bytes:
    return KeyPair.from_seed(seed_for(name)).public_key


def config_of(replicas: list[str]) -> ClusterConfig:
    return ClusterConfig.create("epochs", tuple(key_of(r) for r in replicas), {"client": key_of("client")},
                                limits=Limits(log_window=8, checkpoint_interval=4),
                                operator_keys={"alice": key_of("alice")})


GENESIS = config_of(["r0", "r1", "r2", "r3"])
REPLACED = config_of(["r0", "r1", "r2-new", "r3"])
ADDRESSES = (("10.0.0.1", 7000), ("10.0.0.2", 7000), ("10.0.0.9", 7001), ("::1", 7003))


def signed_change(addresses) -> dict:
    return sign_document("epochs", change_document(REPLACED, 1, GENESIS, addresses), {"alice": seed_for("alice")})


def test_a_change_carries_addresses_into_its_epoch_but_not_into_the_digest():
    change = parse_change(signed_change(ADDRESSES))
    assert change.addresses == ADDRESSES
    chain = EpochChain(GENESIS)
    chain.record(change, 5)
    assert chain.latest.addresses == ADDRESSES
    assert chain.latest.config_digest == configuration_digest(REPLACED)
    assert parse_change(signed_change(())).addresses == ()


@pytest.mark.parametrize("addresses, problem", [
    (["10.0.0.1:7000"], "one HOST:PORT per replica"),
    (["a:1", "b:2", "c:3", "d:0"], "replica 3's address"),
    (["a:1", "b:2", "c:3", "d"], "replica 3's address"),
    (["a:1", "b:2", "c:3", "a:1"], "one address for two replicas"),
    (["a:1", "b:2", "c:3", 7], "replica 3's address"),
    ("a:1", "one HOST:PORT per replica"),
])
def test_malformed_addresses_are_refused_with_the_reason(addresses, problem):
    document = {**signed_change(()), "addresses": addresses}
    with pytest.raises(ChangeError, match=problem):
        parse_change(document)


@pytest.fixture()
def cluster(tmp_path):
    return create_cluster_directory(tmp_path / "cluster", 4, 1)


def next_file(cluster, **top_level):
    """The next epoch's cluster file next to ``cluster``: replica 2 re-keyed, with ``top_level`` keys."""
    directory = cluster.path.parent
    document = tomllib.loads(cluster.path.read_text())
    document["replicas"][2]["public_key"] = key_of("joiner").hex()  # The operator's tool needs no private key.
    del document["replicas"][2]["key_file"]
    document.update(top_level)
    path = directory / "next.toml"
    path.write_text(tomli_w.dumps(document))
    return path


def test_a_later_epoch_file_names_genesis_and_chain_together(cluster):
    with pytest.raises(ConfigFileError, match="'genesis' and 'chain' go together"):
        load_cluster_file(next_file(cluster, genesis="cluster.toml"))


def test_a_later_epoch_file_must_be_the_configuration_its_chain_ends_in(cluster):
    loaded = load_cluster_file(next_file(cluster, genesis="cluster.toml", chain="chain.json"))
    assert read_chain_links(loaded.chain_file) == []  # No change executed yet: the chain is the genesis alone.
    with pytest.raises(ConfigFileError, match="does not describe epoch 0"):
        cluster_epochs(loaded)


def test_the_operator_tool_refuses_a_next_file_with_other_limits_or_another_genesis(cluster, tmp_path):
    seeds = {"operator-0": cluster.client_seed("operator:operator-0")}
    other_limits = load_cluster_file(next_file(cluster, genesis="cluster.toml", chain="chain.json",
                                               limits={"log_window": 64}))
    with pytest.raises(ConfigFileError, match="limits"):
        change_for_next_file(cluster, other_limits, seeds)
    elsewhere = create_cluster_directory(tmp_path / "elsewhere", 4, 1)
    foreign = load_cluster_file(next_file(cluster, genesis=str(elsewhere.path), chain="chain.json"))
    with pytest.raises(ConfigFileError, match="is not the genesis"):
        change_for_next_file(cluster, foreign, seeds)
    fine = load_cluster_file(next_file(cluster, genesis="cluster.toml", chain="chain.json"))
    document = change_for_next_file(cluster, fine, seeds)
    assert parse_change(document).addresses == tuple(fine.addresses[r] for r in range(4))


def test_a_client_learning_an_epoch_keeps_staying_links_and_replaces_the_others():
    genesis_addresses = {r: ("127.0.0.1", 9000 + r) for r in range(4)}
    client = AsyncClient(GENESIS, "client", seed_for("client"), genesis_addresses)
    kept = {r: client.links[r] for r in (0, 1, 3)}
    replaced = client.links[2]
    grown = config_of(["r0", "r1", "r2-new", "r3", "r4"])
    client.learn_epoch(20, grown, {**genesis_addresses, 2: ("127.0.0.1", 9102), 4: ("127.0.0.1", 9004)})
    assert client.config is grown and sorted(client.links) == [0, 1, 2, 3, 4]
    assert all(client.links[r] is link for r, link in kept.items())
    assert client.links[2] is not replaced and client.links[2].address == ("127.0.0.1", 9102)
    assert replaced.queue.is_empty


def test_a_replicas_metrics_tell_its_epoch_and_status_reads_it():
    metrics = ReplicaMetrics()
    metrics.observe_epoch(2, retired=False)
    gauges, _ = parse_metrics(metrics.exposition().decode())
    assert gauges["epoch"] == 2
    metrics.observe_epoch(3, retired=True)
    assert "bft_retired 1.0" in metrics.exposition().decode()


def test_bft_operator_reconfigure_names_a_mistake_in_one_sentence_before_sending_anything(cluster, capsys):
    no_chain = next_file(cluster)  # Neither 'genesis' nor 'chain': not a later epoch's file.
    code = bft_main(["operator", "reconfigure", "--config", str(cluster.path), "--next", str(no_chain),
                     "--operator", "operator-0"])
    error = capsys.readouterr().err
    assert code == 2 and "must name its 'genesis' file and its 'chain' file" in error and "Traceback" not in error
    code = bft_main(["operator", "reconfigure", "--config", str(cluster.path), "--next", str(no_chain),
                     "--operator", "nobody"])
    assert code == 2 and "there is no operator 'nobody'" in capsys.readouterr().err
