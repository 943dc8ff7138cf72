"""With real OS processes on loopback, an equivocating replica is quarantined automatically from its evidence.

Three honest `bft replica` processes and one `python -m harness byzantine-replica --strategy
equivocating-prepares` process (which sends every PREPARE twice, the second re-signed for a batch nobody
proposed) serve a four-replica cluster.  The test proves that every honest replica's SQLite verdict log, read
through `bft status --db`, records the quarantine of the equivocator for cause "evidence" at the same log
position with the same entry; that every verdict before and after it carries a valid certificate and is the
one the honest policies give; and that `bft audit verify` passes on every honest database.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import time
from pathlib import Path

import pytest

from bft import BlockingClient, Outcome
from bft.cluster import LocalProcessCluster, create_cluster_directory
from bft.audit import LOG_COLUMNS, log_entry_from_row, read_only_uri
from bft.cli import main as bft_main

pytestmark = pytest.mark.slow  # real processes: make test runs it, make test-fast does not

BYZANTINE = 3  # A backup in view 0 (whose primary is replica 0), so it sends PREPAREs.
HONEST = (0, 1, 2)
BENIGN = {"tool": "read_file", "path": "/workspace/README.md"}
DANGEROUS = {"tool": "shell", "command": "rm -rf / --no-preserve-root"}
WORKLOAD = [(BENIGN, "low", "ALLOW"), (DANGEROUS, "critical", "DENY")]
LISTEN_TIMEOUT_S = 15
QUARANTINE_TIMEOUT_S = 15
POLL_INTERVAL_S = 0.1
SUBMIT_TIMEOUT_MS = 5000
STOP_TIMEOUT_S = 5


def bft(*arguments: object) -> tuple[int, str]:
    """An offline ``bft`` command run in this process: (exit code, stdout)."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = bft_main([str(argument) for argument in arguments])
    return code, output.getvalue()


def database(directory: Path, replica_id: int) -> Path:
    return directory / "data" / f"replica-{replica_id}.db"


def quarantines(directory: Path, replica_id: int) -> list[dict]:
    """The quarantine events ``bft status --db`` lists for one replica's verdict log (with their positions)."""
    if not database(directory, replica_id).is_file():
        return []
    code, output = bft("status", "--db", database(directory, replica_id), "--json")
    assert code == 0, output
    events = [json.loads(line) for line in output.splitlines() if line.strip()]
    return [event for event in events if event["event"] == "quarantined"]


def wait_for_quarantine_everywhere(directory: Path) -> dict[int, list[dict]]:
    deadline_s = time.monotonic() + QUARANTINE_TIMEOUT_S
    while True:
        found = {replica_id: quarantines(directory, replica_id) for replica_id in HONEST}
        if all(found.values()) or time.monotonic() >= deadline_s:
            return found
        time.sleep(POLL_INTERVAL_S)


def verdict_log(directory: Path, replica_id: int) -> list:
    connection = sqlite3.connect(read_only_uri(database(directory, replica_id)), uri=True)
    try:
        rows = connection.execute(f"SELECT {', '.join(LOG_COLUMNS)} FROM verdict_log ORDER BY position")
        return [log_entry_from_row(row) for row in rows]
    finally:
        connection.close()


def submit_workload(client: BlockingClient, config, count: int) -> list[tuple[Outcome, str]]:
    """Submit ``count`` actions of the workload; each must get a verdict with a valid certificate."""
    results = []
    for number in range(count):
        action, risk, expected = WORKLOAD[number % len(WORKLOAD)]
        outcome = client.submit(action, risk)
        assert outcome.status == expected, (outcome.status, outcome.reason)
        outcome.certificate.verify(config)  # Raises if the certificate does not prove the verdict.
        results.append((outcome, expected))
    return results


def test_an_equivocating_replica_process_is_quarantined_from_its_evidence_at_one_position(tmp_path) -> None:
    directory = tmp_path / "cluster"
    cluster = create_cluster_directory(directory, 4, 1, policies=("deny-list", "context-rules", "pattern-matcher"))
    processes = LocalProcessCluster(cluster.path, replica_programs={BYZANTINE: [
        "-m", "harness", "byzantine-replica", "--strategy", "equivocating-prepares"]})
    assert processes.command(BYZANTINE)[1:4] == ["-m", "harness", "byzantine-replica"]
    assert all(processes.command(replica_id)[1:4] == ["-m", "bft", "replica"] for replica_id in HONEST)
    try:
        processes.start_all()
        processes.wait_listening(timeout_s=LISTEN_TIMEOUT_S)
        with BlockingClient(cluster.path, "client-0", timeout_ms=SUBMIT_TIMEOUT_MS) as client:
            # The first verdict precedes the quarantine (its PREPAREs are the evidence); the later ones follow it.
            early = submit_workload(client, cluster.config, 2)
            found = wait_for_quarantine_everywhere(directory)
            later = submit_workload(client, cluster.config, 4)
        assert processes.is_running(BYZANTINE), "the equivocator keeps running; only its votes stop counting"
    finally:
        stopped = processes.stop_all(timeout_s=STOP_TIMEOUT_S)
    assert all(result.outcome in ("terminated", "not-running") for result in stopped), stopped

    # The same quarantine, for the same cause, at the same position, on every honest replica.
    assert all(found.values()), f"not every honest replica quarantined the equivocator: {found}"
    assert all(events == found[HONEST[0]] for events in found.values()), found
    [quarantine] = found[HONEST[0]]
    assert (quarantine["replica"], quarantine["cause"]) == (BYZANTINE, "evidence"), quarantine
    position = quarantine["position"]
    logs = {replica_id: verdict_log(directory, replica_id) for replica_id in HONEST}
    assert len({logs[replica_id][position - 1].entry_hash for replica_id in HONEST}) == 1
    assert "Byzantine strategy equivocating-prepares" in processes.log_path(BYZANTINE).read_text()

    # Every verdict, before and after the quarantine, is in every honest log as the honest policies gave it.
    positions = {}
    for replica_id, log in logs.items():
        finalized = {(entry.client_id, entry.request_number): (entry.position, entry.decision.value) for entry in log}
        for outcome, expected in early + later:
            key = (outcome.request.client_id, outcome.request_number)
            assert finalized[key][1] == expected, (replica_id, key, finalized[key])
            positions[key] = finalized[key][0]
    assert min(positions.values()) < position < max(positions.values()), (sorted(positions.values()), position)

    for replica_id in HONEST:
        code, output = bft("audit", "verify", "--db", database(directory, replica_id))
        assert code == 0 and output.startswith("OK: "), output


def test_the_byzantine_switch_exists_only_in_the_harness_and_reports_mistakes_in_one_sentence(tmp_path,
                                                                                               capsys) -> None:
    from harness.__main__ import main as harness_main
    code, output = bft("replica", "--help")
    assert code == 0 and "--config" in output and "strategy" not in output.lower()
    missing = tmp_path / "missing.toml"
    assert harness_main(["byzantine-replica", "--config", str(missing), "--id", "3",
                         "--strategy", "equivocating-prepares"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "does not exist" in error and "Traceback" not in error
