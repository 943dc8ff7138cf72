"""A reconfiguration across hosts for real: four replicas, each in its own Linux network namespace, an operator on a console host and a client on a laptop host; the replica on one host is replaced by a fresh replica on a new host with its own address and a key made there (`bft keygen`), through `bft cluster next-epoch` / `set-replica` and `bft operator reconfigure`.  The replaced process retires and exits by itself, the new one started with `bft replica` on the next epoch's file catches up and votes, verdicts continue, certificates of both epochs verify with `bft verify --chain` (the one the new replica signed does not verify under the genesis keys alone), every host's folder holds only its own key, and the invariants of specs/ hold over every replica's store, each seq judged under its own epoch.

Skipped, with the reason, where namespaces cannot be made (not Linux, not root, no iproute2).  Every wait is
bounded; the namespaces are deleted and the processes stopped whatever happens.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from _netns import HostNetwork, namespaces_problem, wait_for_line
from bft.cli import EXIT_OK, main
from bft.cluster import load_cluster_file
from bft.cluster._epochs import cluster_epochs
from bft.core import VerdictCertificate, primary_of
from bft.storage import SqliteStore
from specs.invariants import check_all_epochs

PROBLEM = namespaces_problem()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(PROBLEM is not None, reason=f"no network namespaces here: {PROBLEM}")]

REPLICA_HOSTS = ("replica-0", "replica-1", "replica-2", "replica-3")
NEW_HOST = "replica-4"  # Where replica 2 moves: a host that was never part of the cluster.
REPLACED = 2
LAPTOP, CONSOLE = "laptop", "console"  # The client's host, the operator's host.
HOSTS = (*REPLICA_HOSTS, NEW_HOST, LAPTOP, CONSOLE)
PORT, METRICS_PORT = 7000, 9100
BENIGN = {"tool": "read_file", "path": "/workspace/README.md"}
DANGEROUS = {"tool": "shell", "command": "rm -rf / --no-preserve-root"}
# A small window, so the activation seq (a whole window above the change) comes soon; short view-change timers.
TEST_LIMITS = {"view_change_timeout_ticks": 30, "view_change_timeout_ticks_max": 120, "checkpoint_interval": 2,
               "log_window": 8, "max_in_flight_batches": 4}
COMMAND_TIMEOUT_S = 60.0
START_TIMEOUT_S = 20.0
RETIRE_TIMEOUT_S = 60.0
VERDICT_TIMEOUT_MS = 5000
ATTEMPTS_MAX = 6  # A verdict may need retries while links reconnect or a view changes; never more than this.
WAIT_S, POLL_S = 60.0, 0.5


class Hosts:
    """The hosts' folders and the commands run on them."""

    def __init__(self, network: HostNetwork, root: Path) -> None:
        self.network = network
        self.root = root
        self.replicas: dict[str, object] = {}
        self.outcomes: list[dict] = []

    def folder(self, host: str) -> Path:
        return self.root / host

    def bft(self, host: str, *arguments: object, expect: int | None = EXIT_OK):
        """``bft ARGUMENTS`` run on ``host`` in its folder; the completed process."""
        result = self.network.run(host, [sys.executable, "-m", "bft", *map(str, arguments)], cwd=self.folder(host),
                                  timeout_s=COMMAND_TIMEOUT_S)
        assert "Traceback" not in result.stderr, result.stderr
        if expect is not None:
            assert result.returncode == expect, (host, arguments, result.returncode, result.stdout, result.stderr)
        return result

    def keygen(self, host: str, key_file: str) -> str:
        return self.bft(host, "keygen", "--out", key_file).stdout.strip()

    def copy(self, source_host: str, name: str, *target_hosts: str) -> None:
        """What scp would do: only public files travel (cluster files, the chain)."""
        assert not name.endswith(".key")
        for host in target_hosts:
            shutil.copy(self.folder(source_host) / name, self.folder(host) / name)

    def start_replica(self, host: str, cluster_file: str) -> None:
        log = self.folder(host) / f"replica-{cluster_file}.log"
        self.replicas[host] = self.network.start(
            host, [sys.executable, "-m", "bft", "replica", "--config", cluster_file, "--key-file", "replica.key"],
            log=log, cwd=self.folder(host))
        wait_for_line(log, "is serving on", self.replicas[host], START_TIMEOUT_S)

    def verdict(self, cluster_file: str, action: dict, risk: str) -> dict:
        """A verdict on the laptop (retried a bounded number of times while the cluster recovers)."""
        for _ in range(ATTEMPTS_MAX):
            result = self.bft(LAPTOP, "submit", "--config", cluster_file, "--client", "laptop", "--key-file",
                              "client.key", "--risk", risk, "--action", json.dumps(action), "--timeout-ms",
                              VERDICT_TIMEOUT_MS, expect=None)
            outcome = json.loads(result.stdout)
            if outcome["status"] != "REFUSED":
                break
        assert outcome["status"] in ("ALLOW", "DENY"), outcome
        self.outcomes.append(outcome)
        return outcome

    def statuses(self, cluster_file: str) -> dict[int, dict]:
        """Each replica's status, as ``bft status --json`` shows it on the console host."""
        result = self.bft(CONSOLE, "status", "--config", cluster_file, "--json", "--timeout-ms", 1000, expect=None)
        return {status["replica"]: status for status in json.loads(result.stdout)}


def verify(outcome: dict, folder: Path, *chain: object) -> tuple[int, str, str]:
    """``bft verify`` (offline, so run here) on the laptop's files: (exit code, stdout, stderr)."""
    path = folder / f"verdict-seq-{outcome['certificate']['seq']}.json"
    path.write_text(json.dumps(outcome))
    output, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(errors):
        code = main(["verify", str(path), "--config", str(folder / "cluster.toml"), *map(str, chain)])
    return code, output.getvalue(), errors.getvalue()


def wait_until(condition, what: str, describe=lambda: "") -> None:
    give_up_s = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < give_up_s, f"{what} did not happen within {WAIT_S} s {describe()}"
        time.sleep(POLL_S)


def assemble_genesis(hosts: Hosts) -> None:
    """Keys made on each host; the operator assembles the cluster file on the console from public keys only."""
    network = hosts.network
    replica_keys = [hosts.keygen(host, "replica.key") for host in REPLICA_HOSTS]
    client_key, operator_key = hosts.keygen(LAPTOP, "client.key"), hosts.keygen(CONSOLE, "operator.key")
    hosts.bft(CONSOLE, "cluster", "new", "cluster.toml", "--id", "namespaces")
    for host, key in zip(REPLICA_HOSTS, replica_keys):
        hosts.bft(CONSOLE, "cluster", "add-replica", "cluster.toml", "--public-key", key, "--address",
                  f"{network.address(host)}:{PORT}", "--metrics", f"{network.address(host)}:{METRICS_PORT}")
    hosts.bft(CONSOLE, "cluster", "add-client", "cluster.toml", "--id", "laptop", "--public-key", client_key)
    hosts.bft(CONSOLE, "cluster", "add-operator", "cluster.toml", "--id", "console", "--public-key", operator_key)
    path = hosts.folder(CONSOLE) / "cluster.toml"  # Test-sized limits: no command sets them (an editor would).
    document = tomllib.loads(path.read_text())
    document["limits"] = TEST_LIMITS
    path.write_text(tomli_w.dumps(document))
    hosts.copy(CONSOLE, "cluster.toml", *REPLICA_HOSTS, NEW_HOST, LAPTOP)


def test_a_replica_is_replaced_by_one_on_a_new_host_through_consensus(tmp_path):
    with HostNetwork(HOSTS) as network:
        for host in HOSTS:
            (tmp_path / host).mkdir()
        hosts = Hosts(network, tmp_path)
        assemble_genesis(hosts)
        for host in REPLICA_HOSTS:
            hosts.start_replica(host, "cluster.toml")
        first = hosts.verdict("cluster.toml", BENIGN, "low")
        assert first["status"] == "ALLOW"

        # The new host makes its own key; only the public key reaches the console.
        new_key = hosts.keygen(NEW_HOST, "replica.key")
        new_address = network.address(NEW_HOST)
        hosts.bft(CONSOLE, "cluster", "next-epoch", "cluster.toml", "epoch-1.toml")
        hosts.bft(CONSOLE, "cluster", "set-replica", "epoch-1.toml", "--id", REPLACED, "--public-key", new_key,
                  "--address", f"{new_address}:{PORT}", "--metrics", f"{new_address}:{METRICS_PORT}")
        change = json.loads(hosts.bft(CONSOLE, "operator", "reconfigure", "--config", "cluster.toml", "--next",
                                      "epoch-1.toml", "--operator", "console", "--key-file", "operator.key").stdout)
        assert change["status"] == "ALLOW" and change["epoch"]["number"] == 1, change
        activation = change["epoch"]["starts_after_seq"]
        assert change["command"]["addresses"][REPLACED] == f"{new_address}:{PORT}", change["command"]
        for name in ("epoch-1.toml", "chain.json"):
            hosts.copy(CONSOLE, name, NEW_HOST, LAPTOP)

        # The replaced process retires by itself at the switch, exits 0 and says so.
        replaced = hosts.replicas[REPLICA_HOSTS[REPLACED]]
        replaced.wait(RETIRE_TIMEOUT_S)
        replaced_log = hosts.folder(REPLICA_HOSTS[REPLACED]) / "replica-cluster.toml.log"
        assert replaced.returncode == 0 and "retired in epoch 1" in replaced_log.read_text(), replaced_log.read_text()

        hosts.start_replica(NEW_HOST, "epoch-1.toml")
        assert hosts.verdict("epoch-1.toml", BENIGN, "low")["status"] == "ALLOW"

        # The new replica takes part: with another member's host unplugged, verdicts need its votes (the view
        # change this causes is also what lets a joiner vote; specs/RECONFIGURATION.md section 8).
        views = [status["view"] for status in hosts.statuses("epoch-1.toml").values() if status["view"] is not None]
        unplugged = REPLICA_HOSTS[next(r for r in (3, 1, 0) if r != primary_of(max(views), 4))]
        network.unplug(unplugged)
        try:
            with_new_vote = [hosts.verdict("epoch-1.toml", {**BENIGN, "n": n}, "low") for n in range(3)]
            assert hosts.verdict("epoch-1.toml", DANGEROUS, "high")["status"] == "DENY"
        finally:
            network.plug(unplugged)
        assert [outcome["status"] for outcome in with_new_vote] == ["ALLOW"] * 3
        assert hosts.verdict("epoch-1.toml", BENIGN, "low")["status"] == "ALLOW"
        statuses: list = []
        wait_until(lambda: statuses.append(hosts.statuses("epoch-1.toml")) or
                   (statuses[-1][REPLACED]["last_executed_seq"] or 0) > activation,
                   "the new replica executing past the activation seq", describe=lambda: statuses[-1])
        for host in (REPLICA_HOSTS[0], REPLICA_HOSTS[1], REPLICA_HOSTS[3], NEW_HOST):
            assert hosts.replicas[host].poll() is None, f"the replica on {host} exited"

    # Certificates of both epochs verify offline against the chain; the new replica's key is not in the genesis.
    laptop = tmp_path / LAPTOP
    signed_by_new = [o for o in hosts.outcomes if o["certificate"]["seq"] > activation
                     and any(vote["replica"] == REPLACED for vote in o["certificate"]["votes"])]
    assert signed_by_new, "the new replica voted in no certified verdict"
    for outcome, epoch in ((first, 0), (signed_by_new[-1], 1)):
        code, output, errors = verify(outcome, laptop, "--chain", laptop / "chain.json")
        assert code == 0 and output.endswith(f"epoch {epoch}\n"), (output, errors)
    code, _, errors = verify(signed_by_new[-1], laptop)
    assert code == 1 and "signature does not verify" in errors, errors

    assert_each_folder_holds_only_its_own_key(tmp_path)
    assert_invariants_hold(tmp_path, [VerdictCertificate.from_document(o["certificate"]) for o in hosts.outcomes])


def assert_each_folder_holds_only_its_own_key(root: Path) -> None:
    seeds = {host: next((root / host).glob("*.key")).read_text().strip() for host in HOSTS}
    for host in HOSTS:
        files = [path for path in (root / host).rglob("*") if path.is_file()]
        assert len([path for path in files if path.suffix == ".key"]) == 1, files
        text = b"".join(path.read_bytes() for path in files)
        assert [other for other, seed in seeds.items() if other != host and seed.encode() in text] == []


def assert_invariants_hold(root: Path, certificates: list[VerdictCertificate]) -> None:
    """S1-S11 over the stores: the three replicas that stayed with the replaced one, then with its successor."""
    def stored(host: str, replica_id: int):
        with SqliteStore(root / host / "data" / f"replica-{replica_id}.db") as store:
            return store.load()
    epochs = cluster_epochs(load_cluster_file(root / LAPTOP / "epoch-1.toml"))
    chain = [(0, epochs.genesis), *epochs.later]
    stayed = {replica_id: stored(REPLICA_HOSTS[replica_id], replica_id) for replica_id in (0, 1, 3)}
    for replica_2_host in (REPLICA_HOSTS[REPLACED], NEW_HOST):
        members = {**stayed, REPLACED: stored(replica_2_host, REPLACED)}
        violations = check_all_epochs({r: tuple(s.log) for r, s in members.items()}, chain, certificates,
                                      signed={r: list(s.signed) for r, s in members.items()})
        assert not violations, [str(v) for v in violations[:5]]
