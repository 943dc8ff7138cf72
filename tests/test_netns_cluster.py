"""A cluster across hosts for real: four replicas, each in its own Linux network namespace with its own address (two bind 0.0.0.0 and are dialled at their advertised address), two clients in two more; verdicts carry certificates ``bft verify`` accepts, verdicts continue when the primary's host is lost, a client cut off with one replica is refused while the majority side goes on, and with no quorum on either side every request is refused (never ALLOW) until the partition heals.

Skipped, with the reason, where namespaces cannot be made (not Linux, not root, no iproute2).  Every
wait is bounded; the namespaces are deleted and the processes stopped whatever happens.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest

from _netns import HostNetwork, namespaces_problem, wait_for_line
from bft.cli import EXIT_OK, EXIT_REFUSED, main

REPLICA_HOSTS = ("replica-0", "replica-1", "replica-2", "replica-3")
CLIENT_HOSTS = {"client-a": "laptop-a", "client-b": "laptop-b"}  # client id -> the host it runs on
PORT = 7000
BENIGN = {"tool": "read_file", "path": "/workspace/README.md"}
DANGEROUS = {"tool": "shell", "command": "rm -rf / --no-preserve-root"}
START_TIMEOUT_S = 20.0
VERDICT_TIMEOUT_MS = 5000
REFUSAL_TIMEOUT_MS = 2000
ATTEMPTS_MAX = 4  # A verdict may need a retry while links reconnect or a view changes; never more than this.
PROBLEM = namespaces_problem()

pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"no network namespaces here: {PROBLEM}")


class NamespacedCluster:
    """The hosts, their folders (each with the cluster file and only its own key) and the replica processes."""

    def __init__(self, network: HostNetwork, root: Path) -> None:
        self.network = network
        self.root = root
        self.processes: dict[str, object] = {}
        self.submissions = 0

    def folder(self, host: str) -> Path:
        return self.root / host

    def start_replicas(self, hosts) -> None:
        """Start ``bft replica`` on each host (all at once) and wait until each serves."""
        for host in hosts:
            self.processes[host] = self.network.start(
                host, [sys.executable, "-m", "bft", "replica", "--config", "cluster.toml", "--key-file", "replica.key"],
                log=self.folder(host) / "replica.log", cwd=self.folder(host))
        for host in hosts:
            wait_for_line(self.folder(host) / "replica.log", "is serving on", self.processes[host], START_TIMEOUT_S)

    def submit(self, client_id: str, action: dict, risk: str, timeout_ms: int) -> tuple[int, dict]:
        """``bft submit`` on the client's host; returns its exit code and printed outcome."""
        host = CLIENT_HOSTS[client_id]
        self.submissions += 1
        result = self.network.run(host, [sys.executable, "-m", "bft", "submit", "--config", "cluster.toml",
                                         "--client", client_id, "--key-file", "client.key", "--risk", risk,
                                         "--action", json.dumps(action), "--timeout-ms", str(timeout_ms)],
                                  cwd=self.folder(host), timeout_s=timeout_ms / 1000 + 15)
        assert result.stdout, result.stderr
        return result.returncode, json.loads(result.stdout)

    def verdict(self, client_id: str, action: dict, risk: str) -> dict:
        """A verdict (retried a bounded number of times while the cluster recovers), its certificate verified
        offline by ``bft verify`` on the client's host."""
        for _ in range(ATTEMPTS_MAX):
            code, outcome = self.submit(client_id, action, risk, VERDICT_TIMEOUT_MS)
            if outcome["status"] != "REFUSED":
                break
        assert outcome["status"] in ("ALLOW", "DENY"), outcome
        self.assert_certificate_verifies(CLIENT_HOSTS[client_id], outcome)
        return outcome

    def assert_certificate_verifies(self, host: str, outcome: dict) -> None:
        """``bft verify`` (offline, so run here) against the host's copy of the cluster file."""
        path = self.folder(host) / f"outcome-{self.submissions}.json"
        path.write_text(json.dumps(outcome))
        code = main(["verify", str(path), "--config", str(self.folder(host) / "cluster.toml")])
        assert code == EXIT_OK, f"bft verify refused the certificate of {outcome['status']} in {path}"

    def assert_refused(self, client_id: str) -> None:
        code, outcome = self.submit(client_id, BENIGN, "low", REFUSAL_TIMEOUT_MS)
        assert (code, outcome["status"], outcome["certificate"]) == (EXIT_REFUSED, "REFUSED", None), outcome


def build_folders(network: HostNetwork, root: Path) -> None:
    """Keys made in each host's folder, the cluster file assembled from public keys, copied to every host.

    (``bft keygen`` needs no network, so it runs in this process; test_walkthrough.py runs it on the hosts.)
    """
    public_keys = {}
    for host in (*REPLICA_HOSTS, *CLIENT_HOSTS.values()):
        (root / host).mkdir()
        key_name = "replica.key" if host in REPLICA_HOSTS else "client.key"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["keygen", "--out", str(root / host / key_name)]) == EXIT_OK
        public_keys[host] = printed.getvalue().strip()
    cluster_file = root / "cluster.toml"
    assert main(["cluster", "new", str(cluster_file), "--id", "namespaces"]) == EXIT_OK
    for index, host in enumerate(REPLICA_HOSTS):
        bind = ["--bind", f"0.0.0.0:{PORT}"] if index % 2 == 0 else []
        assert main(["cluster", "add-replica", str(cluster_file), "--public-key", public_keys[host],
                     "--address", f"{network.address(host)}:{PORT}", *bind]) == EXIT_OK
    for client_id, host in CLIENT_HOSTS.items():
        assert main(["cluster", "add-client", str(cluster_file), "--id", client_id,
                     "--public-key", public_keys[host]]) == EXIT_OK
    for host in (*REPLICA_HOSTS, *CLIENT_HOSTS.values()):
        (root / host / "cluster.toml").write_bytes(cluster_file.read_bytes())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("netns")
    with HostNetwork([*REPLICA_HOSTS, *CLIENT_HOSTS.values()]) as network:
        build_folders(network, root)
        running = NamespacedCluster(network, root)
        running.start_replicas(REPLICA_HOSTS)
        yield running


def test_verdicts_across_namespaces_carry_certificates_bft_verify_accepts(cluster):
    assert cluster.verdict("client-a", BENIGN, "low")["status"] == "ALLOW"
    assert cluster.verdict("client-b", DANGEROUS, "high")["status"] == "DENY"


def test_each_host_folder_holds_only_its_own_private_key(cluster):
    keys = {host: next(cluster.folder(host).glob("*.key")).read_text().strip()
            for host in (*REPLICA_HOSTS, *CLIENT_HOSTS.values())}
    for host in keys:
        files = [path for path in cluster.folder(host).rglob("*") if path.is_file()]
        assert len([path for path in files if path.suffix == ".key"]) == 1
        text = b"".join(path.read_bytes() for path in files)
        assert [other for other, seed in keys.items() if other != host and seed.encode() in text] == []


def test_a_client_cut_off_with_one_replica_is_refused_while_the_majority_goes_on(cluster):
    minority, majority = ["replica-3", "laptop-b"], ["replica-0", "replica-1", "replica-2", "laptop-a"]
    cluster.network.partition(minority, majority)
    try:
        cluster.assert_refused("client-b")
        assert cluster.verdict("client-a", BENIGN, "low")["status"] == "ALLOW"
    finally:
        cluster.network.heal()
    assert cluster.verdict("client-b", BENIGN, "low")["status"] == "ALLOW"


def test_with_no_quorum_on_either_side_every_request_is_refused_until_the_partition_heals(cluster):
    side, other_side = ["replica-0", "replica-1", "laptop-a"], ["replica-2", "replica-3", "laptop-b"]
    cluster.network.partition(side, other_side)
    try:
        cluster.assert_refused("client-a")
        cluster.assert_refused("client-b")
    finally:
        cluster.network.heal()
    assert cluster.verdict("client-a", BENIGN, "low")["status"] == "ALLOW"


def test_verdicts_continue_when_the_primarys_host_is_lost(cluster):
    lost = "replica-0"  # The primary of view 0, and of any view the others may still be in after a partition.
    process = cluster.processes[lost]
    process.kill()
    process.wait(10)
    cluster.network.unplug(lost)
    try:
        assert cluster.verdict("client-a", BENIGN, "low")["status"] == "ALLOW"
        assert cluster.verdict("client-b", DANGEROUS, "high")["status"] == "DENY"
    finally:  # The host comes back (from its database), so a test after this one finds four replicas.
        cluster.network.plug(lost)
        cluster.start_replicas([lost])
