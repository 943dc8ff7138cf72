"""Issue 4's done-when, with real OS processes on loopback: `bft init` + `bft up` start four replica processes; verdicts come from the CLI and the library; after SIGKILL of the primary, verdicts continue in a later view; after SIGKILL of a second replica every request is REFUSED (never ALLOW) within its deadline; after both restart, service resumes, every replica's verdict log passes `bft audit verify`, every earlier certified verdict is in the logs, and `bft down` stops every process with SIGTERM."""

from __future__ import annotations

import contextlib
import functools
import dataclasses
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from _bft_command import bft_process

from bft import BlockingClient, Outcome
from bft.cluster import (LocalProcessCluster, ReplicaProcessError, cluster_status, create_cluster_directory,
                         load_cluster_file)
from bft.audit import LOG_COLUMNS, log_entry_from_row, read_only_uri
from bft.cli import main
from bft.core import primary_of

pytestmark = pytest.mark.slow  # real replica processes: make test runs it, make test-fast does not

BENIGN = {"tool": "read_file", "path": "/workspace/README.md"}
DANGEROUS = {"tool": "shell", "command": "rm -rf / --no-preserve-root"}
COMMAND_TIMEOUT_S = 60
RETRIES_MAX = 100
RETRY_PAUSE_S = 0.2
# Short timers, so a view change and its backoff take a fraction of a second; a checkpoint after every
# batch, so a restarted replica's old slots are soon covered by a certified checkpoint.
TEST_LIMITS = {"view_change_timeout_ticks": 30, "view_change_timeout_ticks_max": 120, "checkpoint_interval": 1,
               "log_window": 16, "max_in_flight_batches": 4}


bft = functools.partial(bft_process, timeout_s=COMMAND_TIMEOUT_S)


def bft_here(*arguments: object) -> tuple[int, str]:
    """``bft`` run in this process (for the offline commands, which need no process of their own)."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = main([str(argument) for argument in arguments])
    return code, output.getvalue()


def submit_with_cli(config: Path, risk: str, action: dict, timeout_ms: int, expected_exit: int) -> dict:
    completed = bft("submit", "--config", config, "--client", "client-0", "--risk", risk, "--action",
                    json.dumps(action), "--timeout-ms", timeout_ms, check_exit=expected_exit)
    return json.loads(completed.stdout)


def current_view(config: Path, live: list[int]) -> int:
    statuses = cluster_status(load_cluster_file(config), timeout_s=1.0)
    views = [statuses[replica_id].view for replica_id in live if statuses[replica_id].view is not None]
    assert views, "no live replica reported its view"
    return max(views)


def submit_until_allowed(client: BlockingClient, within_s: float, timeout_ms: int) -> list[Outcome]:
    """Retry a benign request while the cluster recovers (links reconnect, a view change settles), bounded in
    attempts and in time; a prompt refusal ("no quorum") is followed by a short pause."""
    outcomes: list[Outcome] = []
    give_up_s = time.monotonic() + within_s
    for _ in range(RETRIES_MAX):
        outcomes.append(client.submit(BENIGN, "low", timeout_ms=timeout_ms))
        if outcomes[-1].status == "ALLOW" or time.monotonic() >= give_up_s:
            break
        time.sleep(RETRY_PAUSE_S)
    return outcomes


def verdict_logs(directory: Path) -> list[list]:
    logs = []
    for replica_id in range(4):
        connection = sqlite3.connect(read_only_uri(directory / "data" / f"replica-{replica_id}.db"), uri=True)
        try:
            rows = connection.execute(f"SELECT {', '.join(LOG_COLUMNS)} FROM verdict_log ORDER BY position")
            logs.append([log_entry_from_row(row) for row in rows])
        finally:
            connection.close()
    return logs


@pytest.fixture()
def stop_everything_afterwards():
    """Stop, whatever a test's outcome, every replica of the clusters it registers."""
    cluster_files: list[Path] = []
    yield cluster_files.append
    for cluster_file in cluster_files:
        LocalProcessCluster(cluster_file).stop_all(timeout_s=5)


@pytest.fixture()
def cluster_directory(tmp_path) -> Path:
    directory = tmp_path / "cluster"
    # No rate policy: the retries below would look like a burst to it, and a DENY would hide what is tested.
    bft("init", directory, "--replicas", "4", "--clients", "2", "--policies", "deny-list,context-rules,pattern-matcher")
    config = directory / "cluster.toml"
    document = tomllib.loads(config.read_text())
    document["limits"] = TEST_LIMITS
    config.write_text(tomli_w.dumps(document))
    yield directory
    LocalProcessCluster(config).stop_all(timeout_s=5)  # Whatever the test left running.


def test_four_replica_processes_survive_a_crashed_primary_refuse_without_quorum_and_resume(cluster_directory,
                                                                                           tmp_path):
    config = cluster_directory / "cluster.toml"
    up = bft("up", cluster_directory)
    assert up.stdout.count(": started, pid ") == 4
    processes = LocalProcessCluster(config)
    assert sorted(processes.running()) == [0, 1, 2, 3]
    certified: list[tuple[str, int, str]] = []  # (client id, request number, verdict) of every certified verdict

    def record(outcome: Outcome) -> None:
        assert outcome.certificate is not None
        certified.append((outcome.request.client_id, outcome.request_number, outcome.status))

    def record_cli(result: dict) -> None:
        certificate_path = tmp_path / f"certificate-{len(certified)}.json"
        certificate_path.write_text(json.dumps(result))
        code, output = bft_here("verify", certificate_path, "--config", config)
        assert code == 0 and output.startswith(f"valid: {result['status']}"), output
        certified.append((result["client_id"], result["request_number"], result["status"]))

    with BlockingClient(config, "client-1", timeout_ms=5000) as client:
        # Verdicts from the CLI and from the library.
        record_cli(submit_with_cli(config, "low", BENIGN, 5000, expected_exit=0))
        record_cli(submit_with_cli(config, "critical", DANGEROUS, 5000, expected_exit=3))
        outcome = client.submit(BENIGN, "medium")
        assert outcome.status == "ALLOW", outcome.reason
        record(outcome)

        # The primary of view 0 crashes; the others change view and go on.
        assert processes.kill(primary_of(0, 4)).outcome == "killed"
        outcomes = submit_until_allowed(client, within_s=15, timeout_ms=4000)
        assert outcomes[-1].status == "ALLOW", [o.reason for o in outcomes]
        assert all(o.status == "REFUSED" for o in outcomes[:-1])
        record(outcomes[-1])
        view = current_view(config, [1, 2, 3])
        assert view >= 1
        record_cli(submit_with_cli(config, "low", BENIGN, 5000, expected_exit=0))

        # A second replica crashes: two of four cannot form a quorum of three, so nothing is certified.
        second = primary_of(view, 4)
        assert second != 0
        assert processes.kill(second).outcome == "killed"
        for _ in range(3):
            refused = client.submit(BENIGN, "low", timeout_ms=800)
            assert refused.status == "REFUSED" and refused.certificate is None, refused.reason
        refused_by_cli = submit_with_cli(config, "low", BENIGN, 800, expected_exit=4)
        assert refused_by_cli["status"] == "REFUSED" and refused_by_cli["certificate"] is None

        # Both come back from their databases; service resumes.
        for replica_id in (0, second):
            assert not processes.start(replica_id).already_running
        processes.wait_listening(timeout_s=30)
        outcomes = submit_until_allowed(client, within_s=20, timeout_ms=3000)
        assert outcomes[-1].status == "ALLOW", [o.reason for o in outcomes]
        assert all(o.status == "REFUSED" for o in outcomes[:-1])
        record(outcomes[-1])

    for replica_id in range(4):
        code, output = bft_here("audit", "verify", "--db", cluster_directory / "data" / f"replica-{replica_id}.db")
        assert code == 0 and output.startswith("OK: "), output
    logs = verdict_logs(cluster_directory)
    longest = max(logs, key=len)
    for log in logs:  # Every log is a prefix of the longest: no replica finalized anything different.
        assert [entry.entry_hash for entry in log] == [entry.entry_hash for entry in longest[:len(log)]]
    finalized = {(entry.client_id, entry.request_number): entry.decision.value for entry in longest}
    for client_id, request_number, verdict in certified:
        assert finalized.get((client_id, request_number)) == verdict

    down = bft("down", cluster_directory)
    assert down.stdout.count("stopped (pid") == 4, down.stdout
    assert processes.running() == {}
    assert [processes.exit_code(replica_id) for replica_id in (0, second)] == [0, 0]  # SIGTERM is a clean exit.


# ---------------------------------------------------------------------------- process management

def process_state(pid: int) -> str:
    """The kernel's one-letter state of a process (R, S, T for stopped, Z, ...)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2:].split()[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_local_process_cluster_starts_pauses_resumes_restarts_and_stops_idempotently(tmp_path,
                                                                                      stop_everything_afterwards):
    directory = tmp_path / "single"
    create_cluster_directory(directory, 1, 1)
    stop_everything_afterwards(directory / "cluster.toml")
    processes = LocalProcessCluster(directory / "cluster.toml")
    assert processes.stop(0).outcome == "not-running"
    first = processes.start(0)
    assert not first.already_running and processes.start(0) == dataclasses.replace(first, already_running=True)
    processes.wait_listening(timeout_s=30)
    assert processes.pid_path(0).read_text().split()[0] == str(first.pid)

    assert processes.pause(0) == first.pid
    assert process_state(first.pid) == "T"
    assert processes.resume(0) == first.pid
    assert process_state(first.pid) != "T"

    restarted = processes.restart(0)
    assert restarted.pid != first.pid and processes.exit_code(0) is None
    processes.wait_listening(timeout_s=30)
    processes.pause(0)  # A paused replica still stops cleanly: stop resumes it after SIGTERM.
    stopped = processes.stop(0, timeout_s=10)
    assert (stopped.outcome, stopped.pid, stopped.exit_code) == ("terminated", restarted.pid, 0)
    assert not processes.pid_path(0).exists() and processes.stop(0).outcome == "not-running"
    with pytest.raises(ReplicaProcessError, match="replica 0 is not running"):
        processes.pause(0)

    again = processes.start(0)
    processes.wait_listening(timeout_s=30)
    killed = processes.kill(0)
    assert (killed.outcome, killed.pid, killed.exit_code) == ("killed", again.pid, -signal.SIGKILL)
    log = processes.log_path(0).read_text()
    assert log.count("starting replica 0") == 3 and "received SIGTERM; shutting down" in log


def test_a_pid_file_naming_another_process_is_stale_and_never_signalled(tmp_path):
    directory = tmp_path / "stale"
    create_cluster_directory(directory, 1, 0)
    processes = LocalProcessCluster(directory / "cluster.toml")
    processes.run_directory.mkdir()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # The pid is alive, but its start time is not the recorded one: the kernel reused the pid.
        processes.pid_path(0).write_text(f"{bystander.pid} 1\n")
        assert processes.pid(0) is None and not processes.pid_path(0).exists()
        processes.pid_path(0).write_text("garbage\n")
        assert processes.stop(0).outcome == "not-running" and processes.kill(0).outcome == "not-running"
        assert bystander.poll() is None  # Untouched.
    finally:
        bystander.kill()
        bystander.wait()


def test_up_names_the_replica_that_did_not_come_up_and_stops_the_ones_it_started(tmp_path,
                                                                              stop_everything_afterwards):
    directory = tmp_path / "broken"
    create_cluster_directory(directory, 4, 1)
    stop_everything_afterwards(directory / "cluster.toml")
    (directory / "data" / "replica-1.db").write_bytes(b"not a database" * 100)  # Found only when opened.
    up = bft("up", directory, check_exit=1)
    assert "replica 1 exited with code 1" in up.stderr and "cannot open the replica database" in up.stderr
    assert "replica-1.log" in up.stderr and "stopped the replicas it had started (0, 2, 3)" in up.stderr
    assert LocalProcessCluster(directory / "cluster.toml").running() == {}
    down = bft("down", directory)
    assert down.stdout.count("was not running") == 4


def test_up_checks_everything_first_and_starts_nothing_when_anything_is_wrong(tmp_path, stop_everything_afterwards):
    directory = tmp_path / "unchecked"
    cluster = create_cluster_directory(directory, 4, 1)
    stop_everything_afterwards(directory / "cluster.toml")
    (directory / "keys" / "replica-2.key").rename(directory / "keys" / "elsewhere.key")
    up = bft("up", directory, check_exit=2)
    assert up.stderr.count("\n") == 1 and "replica-2.key: the key file does not exist" in up.stderr, up.stderr
    assert LocalProcessCluster(directory / "cluster.toml").running() == {}
    (directory / "keys" / "elsewhere.key").rename(directory / "keys" / "replica-2.key")

    for address in (cluster.replica(1).address, cluster.replica(3).metrics_address):
        with socket.create_server(address) as squatter:  # Someone else listens on a port the cluster needs.
            up = bft("up", directory, check_exit=2)
            assert up.stderr.count("\n") == 1, up.stderr
            assert f"port {address[1]} on {address[0]} is already in use" in up.stderr, up.stderr
            assert f"by pid {os.getpid()}" in up.stderr, up.stderr  # Its owner, found through /proc.
            assert LocalProcessCluster(directory / "cluster.toml").running() == {}
            replica = bft("replica", "--config", directory, "--id", 1 if address == cluster.replica(1).address else 3,
                          check_exit=2)
            assert f"port {address[1]} on {address[0]} is already in use" in replica.stderr, replica.stderr
            assert replica.stderr.count("\n") == 1, replica.stderr
            squatter.close()


def test_two_clusters_that_collide_on_a_port_get_a_clear_error_naming_it(tmp_path, stop_everything_afterwards):
    first = create_cluster_directory(tmp_path / "first", 1, 1)
    second = create_cluster_directory(tmp_path / "second", 1, 1)
    for cluster in (first, second):
        stop_everything_afterwards(cluster.path)
    document = tomllib.loads(second.path.read_text())
    document["replicas"][0]["metrics"] = f"127.0.0.1:{first.replica(0).metrics_address[1]}"  # As if chosen twice.
    second.path.write_text(tomli_w.dumps(document))
    bft("up", tmp_path / "first")
    owner = LocalProcessCluster(first.path).pid(0)
    up = bft("up", tmp_path / "second", check_exit=2)
    assert f"port {first.replica(0).metrics_address[1]} on 127.0.0.1 is already in use by pid {owner}" in up.stderr
    assert LocalProcessCluster(second.path).running() == {}
    third = create_cluster_directory(tmp_path / "third", 1, 1)  # Init keeps clear of its siblings' ports.
    taken = {port for cluster in (first, second) for entry in cluster.replicas
             for port in (entry.address[1], entry.metrics_address[1])}
    assert not taken & {third.replica(0).address[1], third.replica(0).metrics_address[1]}
