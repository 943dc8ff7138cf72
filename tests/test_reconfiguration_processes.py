"""With four real replica processes on loopback under a light load, one replica is replaced through a configuration
change: `bft operator reconfigure` orders it, the replaced process retires and exits by itself, the joiner started
by `bft up` on the next epoch's cluster file catches up by state transfer and takes part (verdicts continue with
another member stopped) and restarts from its own store, the load client follows the epoch, certificates of both epochs verify with `bft verify
--chain` (one the joiner voted in does not verify under the genesis keys alone), and the invariants of
specs/ (S1-S11, judged per epoch) hold over every correct replica's SQLite store."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

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


def bft(*arguments: object, check_exit: int | None = 0) -> subprocess.CompletedProcess:
    completed = subprocess.run([sys.executable, "-m", "bft", *map(str, arguments)], capture_output=True, text=True,
                               timeout=COMMAND_TIMEOUT_S, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert "Traceback" not in completed.stderr, completed.stderr
    if check_exit is not None:
        assert completed.returncode == check_exit, (arguments, completed.returncode, completed.stdout,
                                                    completed.stderr)
    return completed


def bft_here(*arguments: object) -> tuple[int, str, str]:
    """``bft`` run in this process (offline commands): (exit code, stdout, stderr)."""
    output, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(errors):
        code = bft_main([str(argument) for argument in arguments])
    return code, output.getvalue(), errors.getvalue()


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


def wait_until(condition, what: str, timeout_s: float = WAIT_S) -> None:
    give_up_s = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up_s, f"{what} did not happen within {timeout_s} s"
        time.sleep(POLL_S)


def write_next_epoch_file(directory: Path) -> Path:
    """The next epoch's cluster file: replica 2 replaced by a fresh key at a fresh address and database."""
    document = tomllib.loads((directory / "cluster.toml").read_text())
    joiner_key = create_key_file(directory / "keys" / "replica-2-epoch-1.key")
    port, metrics_port = free_loopback_ports(2)
    table = document["replicas"][REPLACED]
    assert table["id"] == REPLACED
    table.update(public_key=joiner_key.public_key.hex(), port=port, metrics=f"127.0.0.1:{metrics_port}",
                 key_file="keys/replica-2-epoch-1.key", database="data/replica-2-epoch-1.db")
    document.update(genesis="genesis.toml", chain="chain.json")
    path = directory / "next.toml"
    path.write_text(tomli_w.dumps(document))
    return path


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
    for cluster_file in (directory / "cluster.toml", directory / "genesis.toml"):
        if cluster_file.exists():
            LocalProcessCluster(cluster_file).stop_all(timeout_s=5)  # Whatever the test left running.


def test_a_replica_is_replaced_under_load_and_both_epochs_verify(cluster_directory, tmp_path):
    directory = cluster_directory
    config = directory / "cluster.toml"
    assert bft("up", directory).stdout.count(": started, pid ") == 4
    genesis_processes = LocalProcessCluster(config)
    shutil.copy(config, directory / "genesis.toml")  # The genesis file the next epoch's file names.
    next_file = write_next_epoch_file(directory)

    with BlockingClient(config, "client-0", timeout_ms=LOAD_TIMEOUT_MS) as client, Load(client) as load:
        wait_until(lambda: sum(o.status == "ALLOW" for _, o in load.outcomes) >= 5, "verdicts in the genesis epoch")
        switch_started_s = time.monotonic()
        changed = bft("operator", "reconfigure", "--config", config, "--next", next_file,
                      "--operator", "operator-0")
        result = json.loads(changed.stdout)
        assert result["status"] == "ALLOW" and result["epoch"]["number"] == 1, result
        activation = result["epoch"]["starts_after_seq"]

        # The replaced replica retires by itself once the new epoch is active, and says so.
        wait_until(lambda: not genesis_processes.is_running(REPLACED), "the replaced replica retiring")
        assert "retired in epoch 1" in genesis_processes.log_path(REPLACED).read_text()

        # The next epoch's file becomes the cluster file; `bft up` starts only the joiner.
        os.replace(next_file, config)
        up = bft("up", directory)
        assert up.stdout.count("already running") == 3 and f"replica {REPLACED}: started" in up.stdout, up.stdout
        assert client.follow(config) == 1
        wait_until(lambda: (cluster_status(load_cluster_file(config), timeout_s=1.0)[REPLACED].last_executed_seq
                            or 0) > activation, "the joiner catching up past the activation seq")
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
        def joiner_executed() -> int:
            return cluster_status(load_cluster_file(config), timeout_s=1.0)[REPLACED].last_executed_seq or 0
        before_restart = joiner_executed()
        assert processes.stop(REPLACED).outcome == "terminated"
        assert processes.start(REPLACED).already_running is False
        processes.wait_listening([REPLACED], timeout_s=30)
        wait_until(lambda: joiner_executed() > before_restart, "the restarted joiner executing again")
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
