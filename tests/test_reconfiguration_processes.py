"""With real replica processes on loopback under a light load, configuration changes ordered by `bft operator
reconfigure` take effect: (1) replacing one of four replicas, the replaced process retires and exits by itself, the
joiner started by `bft up` on the next epoch's cluster file catches up by state transfer, votes, and restarts from
its own store, the load client follows the epoch, refusals come only during the switch, certificates of both epochs
verify with `bft verify --chain` (one the joiner signed does not verify under the genesis keys alone); (2) growing to
five and shrinking back, the added replica becomes part of every quorum and retires when removed; (3) rotating a
replica's key, its old-key process retires and restarts from its store under the new key; (4) growing from four to
seven and shrinking back to four, the three joiners vote in epoch 1 and retire when removed.  In each, the invariants
of specs/ (S1-S11, each seq judged under its own epoch) hold over every correct replica's SQLite store."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import shutil
import threading
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from _bft_command import bft_process

from bft import BlockingClient, Outcome
from bft.cli import main as bft_main
from bft.cluster import LocalProcessCluster, cluster_status, create_key_file, free_loopback_ports, load_cluster_file
from bft.cluster._epochs import cluster_epochs
from bft.core import primary_of
from bft.storage import SqliteStore
from specs.invariants import check_all_epochs

pytestmark = pytest.mark.slow  # real replica processes: make test runs it, make test-fast does not

REPLACED = 2
BENIGN = {"tool": "read_file", "path": "/workspace/README.md"}
COMMAND_TIMEOUT_S = 90
# A small window, so the activation seq (a whole window above the change) comes soon; short view-change timers,
# so the joiner learns the new epoch's view quickly.
TEST_LIMITS = {"view_change_timeout_ticks": 30, "view_change_timeout_ticks_max": 120, "checkpoint_interval": 2,
               "log_window": 8, "max_in_flight_batches": 4}
LOAD_PAUSE_S = 0.05
LOAD_REQUESTS_MAX = 2_000
LOAD_TIMEOUT_MS = 3000
WAIT_S = 60
POLL_S = 0.2


bft = functools.partial(bft_process, timeout_s=COMMAND_TIMEOUT_S)


def bft_here(*arguments: object) -> tuple[int, str, str]:
    """``bft`` run in this process (offline commands): (exit code, stdout, stderr)."""
    output, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(errors):
        code = bft_main([str(argument) for argument in arguments])
    return code, output.getvalue(), errors.getvalue()


def verify_a_certificate_of_each_epoch(tmp_path: Path, directory: Path, load: "Load", first_activation: int,
                                       second_activation: int) -> dict[int, list]:
    """The load's certificates by the epoch of their seq (a cluster that changed twice); the last of each epoch
    verifies offline against the genesis file and the chain, naming its epoch."""
    certified = [o.certificate for _, o in load.outcomes if o.certificate is not None]
    by_epoch = {0: [c for c in certified if c.seq <= first_activation],
                1: [c for c in certified if first_activation < c.seq <= second_activation],
                2: [c for c in certified if c.seq > second_activation]}
    for epoch, certificates in by_epoch.items():
        assert certificates, f"no verdict certified in epoch {epoch}"
        path = tmp_path / f"epoch-{epoch}.json"
        path.write_text(certificates[-1].to_json())
        code, output, errors = bft_here("verify", path, "--config", directory / "genesis.toml",
                                        "--chain", directory / "chain.json")
        assert code == 0 and output.endswith(f"epoch {epoch}\n"), (output, errors)
    return by_epoch


def assert_invariants_per_epoch(directory: Path, config: Path, load: "Load", joiners) -> None:
    """S1-S11, each seq judged under its own epoch, over the genesis members' and the joiners' stores."""
    certified = [o.certificate for _, o in load.outcomes if o.certificate is not None]
    epochs = cluster_epochs(load_cluster_file(config))
    members = {r: stored(directory / "data" / f"replica-{r}.db") for r in range(4)}
    members.update({r: stored(directory / "data" / f"r{r}.db") for r in joiners})
    violations = check_all_epochs({r: tuple(s.log) for r, s in members.items()}, [(0, epochs.genesis), *epochs.later],
                                  certified, signed={r: list(s.signed) for r, s in members.items()})
    assert not violations, [str(v) for v in violations[:5]]


class Load:
    """A light load from one client in a background thread: one benign request, a short pause, again."""

    def __init__(self, client: BlockingClient) -> None:
        self.client = client
        self.outcomes: list[tuple[float, Outcome]] = []  # (when it was submitted, on time.monotonic, outcome)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exception_info) -> None:
        self._stop.set()
        self._thread.join(LOAD_TIMEOUT_MS / 1000 + 5)

    def _run(self) -> None:
        for number in range(LOAD_REQUESTS_MAX):
            if self._stop.is_set():
                return
            submitted_s = time.monotonic()
            self.outcomes.append((submitted_s, self.client.submit({**BENIGN, "n": number}, "low",
                                                                  timeout_ms=LOAD_TIMEOUT_MS)))
            time.sleep(LOAD_PAUSE_S)


def wait_until(condition, what: str, timeout_s: float = WAIT_S, describe=lambda: "") -> None:
    give_up_s = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up_s, f"{what} did not happen within {timeout_s} s {describe()}"
        time.sleep(POLL_S)


def fresh_replica(directory: Path, replica_id: int, name: str) -> dict:
    """A replica table with a fresh key, address, metrics port and database (as its own host would give)."""
    key = create_key_file(directory / "keys" / f"{name}.key")
    port, metrics_port = free_loopback_ports(2)
    return {"id": replica_id, "host": "127.0.0.1", "port": port, "public_key": key.public_key.hex(),
            "key_file": f"keys/{name}.key", "database": f"data/{name}.db", "metrics": f"127.0.0.1:{metrics_port}",
            "policy": "deny-list"}


def write_epoch_file(directory: Path, name: str, replicas: list[dict]) -> Path:
    """A later epoch's cluster file: the genesis file's settings, clients and operators, with ``replicas``."""
    document = tomllib.loads((directory / "genesis.toml").read_text())
    document.update(replicas=replicas, genesis="genesis.toml", chain="chain.json")
    path = directory / f"{name}.toml"
    path.write_text(tomli_w.dumps(document))
    return path


def genesis_replicas(directory: Path) -> list[dict]:
    return tomllib.loads((directory / "genesis.toml").read_text())["replicas"]


def reconfigure(config: Path, next_file: Path, epoch: int) -> int:
    """Order the change to ``next_file`` with the operator's tool; its activation seq."""
    result = json.loads(bft("operator", "reconfigure", "--config", config, "--next", next_file,
                            "--operator", "operator-0").stdout)
    assert result["status"] == "ALLOW" and result["epoch"]["number"] == epoch, result
    return result["epoch"]["starts_after_seq"]


def executed(config: Path, replica_id: int) -> int:
    return cluster_status(load_cluster_file(config), timeout_s=1.0)[replica_id].last_executed_seq or 0


def stored(database: Path):
    with SqliteStore(database) as store:
        return store.load()


@pytest.fixture()
def cluster_directory(tmp_path) -> Path:
    directory = tmp_path / "cluster"
    bft("init", directory, "--replicas", "4", "--clients", "2", "--policies",
        "deny-list,context-rules,pattern-matcher")
    config = directory / "cluster.toml"
    document = tomllib.loads(config.read_text())
    document["limits"] = TEST_LIMITS
    config.write_text(tomli_w.dumps(document))
    yield directory
    for cluster_file in sorted(directory.glob("*.toml")):  # Every epoch's file: whatever the test left running.
        LocalProcessCluster(cluster_file).stop_all(timeout_s=5)


def test_a_replica_is_replaced_under_load_and_both_epochs_verify(cluster_directory, tmp_path):
    directory = cluster_directory
    config = directory / "cluster.toml"
    assert bft("up", directory).stdout.count(": started, pid ") == 4
    genesis_processes = LocalProcessCluster(config)
    shutil.copy(config, directory / "genesis.toml")  # The genesis file the next epoch's file names.
    next_file = write_epoch_file(directory, "epoch-1", [table if table["id"] != REPLACED else
                                                        fresh_replica(directory, REPLACED, "replica-2-epoch-1")
                                                        for table in genesis_replicas(directory)])

    with BlockingClient(config, "client-0", timeout_ms=LOAD_TIMEOUT_MS) as client, Load(client) as load:
        wait_until(lambda: sum(o.status == "ALLOW" for _, o in load.outcomes) >= 5, "verdicts in the genesis epoch")
        switch_started_s = time.monotonic()
        activation = reconfigure(config, next_file, 1)

        # The replaced replica retires by itself once the new epoch is active, and says so.
        wait_until(lambda: not genesis_processes.is_running(REPLACED), "the replaced replica retiring")
        assert "retired in epoch 1" in genesis_processes.log_path(REPLACED).read_text()

        # The next epoch's file becomes the cluster file; `bft up` starts only the joiner.
        shutil.copy(next_file, config)
        up = bft("up", directory)
        assert up.stdout.count("already running") == 3 and f"replica {REPLACED}: started" in up.stdout, up.stdout
        assert client.follow(config) == 1
        wait_until(lambda: executed(config, REPLACED) > activation, "the joiner catching up past the activation seq")
        switch_ended_s = time.monotonic()

        # The joiner takes part: with another member stopped, verdicts need its votes.
        statuses = cluster_status(load_cluster_file(config), timeout_s=1.0)
        view = max(status.view for status in statuses if status.view is not None)
        stopped = next(r for r in (3, 1, 0) if r != primary_of(view, 4))
        processes = LocalProcessCluster(config)
        assert processes.stop(stopped).outcome == "terminated"
        load_count = len(load.outcomes)
        wait_until(lambda: sum(o.status == "ALLOW" for _, o in load.outcomes[load_count:]) >= 5,
                   "verdicts with the joiner and two other members")
        assert processes.start(stopped).already_running is False
        processes.wait_listening([stopped], timeout_s=30)

        # The joiner restarts from its own store: it joined in epoch 1, so it is given the chain again.
        before_restart = executed(config, REPLACED)
        assert processes.stop(REPLACED).outcome == "terminated"
        assert processes.start(REPLACED).already_running is False
        processes.wait_listening([REPLACED], timeout_s=30)
        wait_until(lambda: executed(config, REPLACED) > before_restart, "the restarted joiner executing again")
    outcomes = [outcome for _, outcome in load.outcomes]
    refused_outside_switch = [o.reason for submitted_s, o in load.outcomes if o.status == "REFUSED"
                              and not switch_started_s - LOAD_TIMEOUT_MS / 1000 <= submitted_s <= switch_ended_s]
    assert not any(o.status == "DENY" for o in outcomes)
    assert not refused_outside_switch, refused_outside_switch  # Refusals only during the switch.
    certified = [o.certificate for o in outcomes if o.certificate is not None]
    assert any(c.seq <= activation for c in certified) and any(c.seq > activation for c in certified)
    assert bft("down", directory).stdout.count("stopped (pid") == 4

    # Certificates of both epochs verify offline against the chain.  One the joiner voted in (it takes part) needs
    # the chain: the genesis keys alone refuse its new key.
    epochs = cluster_epochs(load_cluster_file(config))
    genesis_file, chain_file = directory / "genesis.toml", directory / "chain.json"
    joiner_voted = [c for c in certified if c.seq > activation and any(v.replica_id == REPLACED for v in c.votes)]
    assert joiner_voted, "the joiner voted in no certified verdict"
    for certificate, epoch in ((min(certified, key=lambda c: c.seq), 0), (joiner_voted[-1], 1)):
        path = tmp_path / f"epoch-{epoch}.json"
        path.write_text(certificate.to_json())
        code, output, errors = bft_here("verify", path, "--config", genesis_file, "--chain", chain_file)
        assert code == 0 and output.endswith(f"epoch {epoch}\n"), (output, errors)
    code, _, errors = bft_here("verify", tmp_path / "epoch-1.json", "--config", genesis_file)
    assert code == 1 and errors.startswith("invalid:") and "signature does not verify" in errors, errors

    # Every invariant, each seq judged under its own epoch, over the stores of the correct replicas: the three
    # that stayed with the replaced one, then with its successor (both are replica 2, under different keys).
    stores = {replica_id: stored(directory / "data" / f"replica-{replica_id}.db") for replica_id in (0, 1, 3)}
    chain = [(0, epochs.genesis), *epochs.later]
    for replica_2_database in ("replica-2.db", "replica-2-epoch-1.db"):
        members = {**stores, REPLACED: stored(directory / "data" / replica_2_database)}
        violations = check_all_epochs({r: tuple(s.log) for r, s in members.items()}, chain, certified,
                                      signed={r: list(s.signed) for r, s in members.items()})
        assert not violations, [str(v) for v in violations[:5]]
    joiner_log = stored(directory / "data" / "replica-2-epoch-1.db").log
    assert joiner_log and max(entry.seq for entry in joiner_log) > activation


def test_a_cluster_grows_to_five_and_shrinks_back_with_the_added_replica_retiring(cluster_directory, tmp_path):
    """n=4 -> 5 -> 4 under load: the running replicas open a link to the new id at the address the change
    carries, the CP-mode watch and the quorum follow n, the added replica votes in epoch 1 and, after a view
    change, is part of every quorum; the change that removes it makes its process retire; certificates of the
    three epochs verify against the chain."""
    directory = cluster_directory
    config = directory / "cluster.toml"
    assert bft("up", directory).stdout.count(": started, pid ") == 4
    shutil.copy(config, directory / "genesis.toml")
    grown = write_epoch_file(directory, "epoch-1", genesis_replicas(directory) + [fresh_replica(directory, 4, "r4")])
    with BlockingClient(config, "client-0", timeout_ms=LOAD_TIMEOUT_MS) as client, Load(client) as load:
        wait_until(lambda: sum(o.status == "ALLOW" for _, o in load.outcomes) >= 3, "verdicts in the genesis epoch")
        first_activation = reconfigure(config, grown, 1)
        shutil.copy(grown, config)
        up = bft("up", directory)
        assert up.stdout.count("already running") == 4 and "replica 4: started" in up.stdout, up.stdout
        assert client.follow(config) == 1 and client.config.replica_count == 5
        wait_until(lambda: executed(config, 4) > first_activation, "replica 4 catching up")
        # A joiner takes part in the phases only from the next view change on (RECONFIGURATION.md section 7),
        # and a replica removed while it lags never sees the switch (nobody answers it any more).  So the
        # primary is stopped: the view change that follows makes replica 4 a full member, needed for every
        # quorum of four while the primary is away.
        statuses: list = []
        view = max(status.view for status in cluster_status(load_cluster_file(config), timeout_s=1.0)
                   if status.view is not None)
        at_five = LocalProcessCluster(config)
        primary = next(r for r in (primary_of(view, 5), primary_of(view + 1, 5)) if r != 4)
        assert at_five.stop(primary).outcome == "terminated"
        wait_until(lambda: statuses.append(cluster_status(load_cluster_file(config), timeout_s=1.0)) or
                   statuses[-1][4].health == "ok", "replica 4 voting in a new view", describe=lambda: statuses[-1])
        assert at_five.start(primary).already_running is False
        at_five.wait_listening([primary], timeout_s=30)
        count = len(load.outcomes)
        wait_until(lambda: sum(o.status == "ALLOW" for _, o in load.outcomes[count:]) >= 3, "verdicts at n=5")

        shrunk = write_epoch_file(directory, "epoch-2", genesis_replicas(directory))
        second_activation = reconfigure(config, shrunk, 2)
        wait_until(lambda: not at_five.is_running(4), "the removed replica retiring")
        assert "retired in epoch 2" in at_five.log_path(4).read_text()
        shutil.copy(shrunk, config)
        assert client.follow(config) == 1 and client.config.replica_count == 4
        count = len(load.outcomes)
        wait_until(lambda: sum(o.status == "ALLOW" for _, o in load.outcomes[count:]) >= 3, "verdicts back at n=4")
    assert not any(o.status == "DENY" for _, o in load.outcomes)
    assert bft("down", directory).stdout.count("stopped (pid") == 4

    by_epoch = verify_a_certificate_of_each_epoch(tmp_path, directory, load, first_activation, second_activation)
    assert any(v.replica_id == 4 for c in by_epoch[1] for v in c.votes), "replica 4 voted in no verdict of epoch 1"
    assert_invariants_per_epoch(directory, config, load, joiners=(4,))


def test_a_replicas_key_is_rotated_by_retiring_it_and_restarting_it_on_its_store_with_the_new_key(
        cluster_directory, tmp_path):
    """Key rotation as an operator does it with processes: the change lists replica 1 with a key made on its
    host; at the switch the running process, whose key the new epoch no longer lists, retires; `bft up` on the
    next epoch's file restarts it from the same database with the new key, and it signs in epoch 1 with it."""
    directory = cluster_directory
    config = directory / "cluster.toml"
    assert bft("up", directory).stdout.count(": started, pid ") == 4
    shutil.copy(config, directory / "genesis.toml")
    new_key = create_key_file(directory / "keys" / "replica-1-rotated.key")
    replicas = genesis_replicas(directory)
    replicas[1].update(public_key=new_key.public_key.hex(), key_file="keys/replica-1-rotated.key")
    rotated = write_epoch_file(directory, "epoch-1", replicas)
    with BlockingClient(config, "client-0", timeout_ms=LOAD_TIMEOUT_MS) as client, Load(client) as load:
        wait_until(lambda: sum(o.status == "ALLOW" for _, o in load.outcomes) >= 3, "verdicts in the genesis epoch")
        activation = reconfigure(config, rotated, 1)
        genesis_processes = LocalProcessCluster(config)
        wait_until(lambda: not genesis_processes.is_running(1), "replica 1's old-key process retiring")
        shutil.copy(rotated, config)
        up = bft("up", directory)
        assert up.stdout.count("already running") == 3 and "replica 1: started" in up.stdout, up.stdout
        assert client.follow(config) == 1
        wait_until(lambda: executed(config, 1) > activation, "replica 1 working again under its new key")
        count = len(load.outcomes)
        wait_until(lambda: any(o.certificate is not None and any(v.replica_id == 1 for v in o.certificate.votes)
                               for _, o in load.outcomes[count:]), "a verdict with replica 1's new-key vote")
    assert bft("down", directory).stdout.count("stopped (pid") == 4
    certified = [o.certificate for _, o in load.outcomes if o.certificate is not None]
    signed_by_new_key = [c for c in certified if c.seq > activation and any(v.replica_id == 1 for v in c.votes)]
    path = tmp_path / "rotated.json"
    path.write_text(signed_by_new_key[-1].to_json())
    code, output, errors = bft_here("verify", path, "--config", directory / "genesis.toml",
                                    "--chain", directory / "chain.json")
    assert code == 0 and output.endswith("epoch 1\n"), (output, errors)
    code, _, errors = bft_here("verify", path, "--config", directory / "genesis.toml")
    assert code == 1 and "signature does not verify" in errors, errors
    epochs = cluster_epochs(load_cluster_file(config))
    members = {r: stored(directory / "data" / f"replica-{r}.db") for r in range(4)}
    violations = check_all_epochs({r: tuple(s.log) for r, s in members.items()}, [(0, epochs.genesis), *epochs.later],
                                  certified, signed={r: list(s.signed) for r, s in members.items()})
    assert not violations, [str(v) for v in violations[:5]]


def test_a_cluster_grows_from_four_to_seven_and_shrinks_back_to_four_under_load(cluster_directory, tmp_path):
    """n=4 -> 7 -> 4 under a light load (issue 20's done-when): three joiners started by `bft up` catch up; the new
    epoch's quorum of five needs at least one of them, so it waits for the view change in which they take part
    (specs/RECONFIGURATION.md sections 7 and 8), then all seven are ok and every one votes; the change back to the
    four genesis replicas makes the three retire.  Refusals come only during the two switches; certificates of the
    three epochs verify against the chain; the invariants hold over the seven stores, each seq under its epoch."""
    directory = cluster_directory
    config = directory / "cluster.toml"
    assert bft("up", directory).stdout.count(": started, pid ") == 4
    shutil.copy(config, directory / "genesis.toml")
    joiners = (4, 5, 6)
    grown = write_epoch_file(directory, "epoch-1", genesis_replicas(directory) +
                             [fresh_replica(directory, replica_id, f"r{replica_id}") for replica_id in joiners])
    switches: list[tuple[float, float]] = []  # (started, ended) on time.monotonic, for each switch
    statuses: list = []
    with BlockingClient(config, "client-0", timeout_ms=LOAD_TIMEOUT_MS) as client, Load(client) as load:
        wait_until(lambda: sum(o.status == "ALLOW" for _, o in load.outcomes) >= 3, "verdicts in the genesis epoch")
        started_s = time.monotonic()
        first_activation = reconfigure(config, grown, 1)
        shutil.copy(grown, config)
        up = bft("up", directory)
        assert up.stdout.count("already running") == 4 and up.stdout.count(": started, pid ") == 3, up.stdout
        assert client.follow(config) == 1 and client.config.replica_count == 7
        wait_until(lambda: statuses.append(cluster_status(load_cluster_file(config), timeout_s=1.0)) or
                   all(status.health == "ok" for status in statuses[-1]), "all seven replicas ok (voting)",
                   timeout_s=2 * WAIT_S, describe=lambda: [(s.replica_id, s.health, s.view, s.last_executed_seq)
                                                          for s in statuses[-1]])
        assert all(executed(config, replica_id) > first_activation for replica_id in joiners)
        count = len(load.outcomes)
        wait_until(lambda: sum(o.status == "ALLOW" for _, o in load.outcomes[count:]) >= 3, "verdicts at n=7")
        switches.append((started_s, time.monotonic()))

        started_s = time.monotonic()
        at_seven = LocalProcessCluster(config)
        shrunk = write_epoch_file(directory, "epoch-2", genesis_replicas(directory))
        second_activation = reconfigure(config, shrunk, 2)
        for replica_id in joiners:
            wait_until(lambda: not at_seven.is_running(replica_id), f"replica {replica_id} retiring")
            assert "retired in epoch 2" in at_seven.log_path(replica_id).read_text()
        shutil.copy(shrunk, config)
        assert client.follow(config) == 1 and client.config.replica_count == 4
        count = len(load.outcomes)
        wait_until(lambda: sum(o.status == "ALLOW" for _, o in load.outcomes[count:]) >= 3, "verdicts back at n=4")
        switches.append((started_s, time.monotonic()))
    assert not any(o.status == "DENY" for _, o in load.outcomes)
    during_a_switch = [any(start - LOAD_TIMEOUT_MS / 1000 <= submitted_s <= end for start, end in switches)
                       for submitted_s, _ in load.outcomes]
    refused_outside = [o.reason for (_, o), during in zip(load.outcomes, during_a_switch)
                       if o.status == "REFUSED" and not during]
    assert not refused_outside, refused_outside
    assert bft("down", directory).stdout.count("stopped (pid") == 4

    by_epoch = verify_a_certificate_of_each_epoch(tmp_path, directory, load, first_activation, second_activation)
    voters_in_seven = {v.replica_id for c in by_epoch[1] for v in c.votes}
    assert set(joiners) <= voters_in_seven, f"joiners that voted in no verdict of epoch 1: {voters_in_seven}"
    assert_invariants_per_epoch(directory, config, load, joiners=joiners)
