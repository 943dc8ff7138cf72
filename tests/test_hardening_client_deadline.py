"""Proves a client never overruns its deadline, whatever the network does: against fake replicas on 127.0.0.1 that accept TCP and never answer, that stall in the middle of the handshake, or whose connects hang (a full accept backlog), `bft submit` and the library (BlockingClient, Client) return REFUSED within the deadline plus the documented margin, also when every submission slot is busy; a request counter locked by another process is a prompt one-sentence error, not a hang (a correctness bound, checked with a generous 1.5 s margin; not a speed measurement)."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import socket
import threading
import time
from pathlib import Path

import pytest
import trio

from bft import BlockingClient, Client, ConfigFileError
from bft.cluster import create_cluster_directory, load_cluster_file
from bft.cli import EXIT_REFUSED, EXIT_USAGE, main

pytestmark = pytest.mark.slow  # clients waiting out real deadlines: make test runs it, make test-fast does not

DEADLINE_MS = 400
MARGIN_S = 1.5  # Generous on a shared 2-core machine; the documented margin is far smaller.
ACTION = {"tool": "read_file", "path": "/workspace/README.md"}
BEHAVIOURS = ("silent", "mid-handshake", "full-backlog")


class FakeReplicas:
    """Servers on the replicas' configured ports that misbehave in one way, each in a plain thread.

    silent: accept every connection and never send or read a byte.  mid-handshake: read the
    client's first bytes, then send the start of a frame (a length header promising more) and
    stall.  full-backlog: listen without ever accepting, with the backlog filled, so a new
    connect is never completed by the kernel.
    """

    def __init__(self, ports: list[int], behaviour: str) -> None:
        assert behaviour in BEHAVIOURS
        self.behaviour = behaviour
        self.listeners = []
        self.held: list[socket.socket] = []
        self.stopped = threading.Event()
        for port in ports:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(0 if behaviour == "full-backlog" else 64)
            listener.settimeout(0.05)
            self.listeners.append(listener)
        if behaviour == "full-backlog":
            self._fill_backlogs(ports)
        self.threads = [threading.Thread(target=self._serve, args=(listener,), daemon=True)
                        for listener in self.listeners if behaviour != "full-backlog"]
        for thread in self.threads:
            thread.start()

    def _fill_backlogs(self, ports: list[int]) -> None:
        for port in ports:
            for _ in range(8):  # Until a connect no longer completes at once: the queue is full.
                filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                filler.setblocking(False)
                self.held.append(filler)
                if filler.connect_ex(("127.0.0.1", port)) not in (0,):
                    break

    def _serve(self, listener: socket.socket) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            self.held.append(connection)
            if self.behaviour == "mid-handshake":
                connection.settimeout(1.0)
                with contextlib.suppress(OSError):
                    connection.recv(4096)
                    connection.sendall((200).to_bytes(4, "big") + b"\x93\x01")  # 200 bytes promised, 2 sent.

    def close(self) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(2)
        for item in [*self.held, *self.listeners]:
            item.close()


@pytest.fixture(scope="module")
def cluster_path(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("deadline") / "cluster"
    return create_cluster_directory(directory, 4, 2).path


@pytest.fixture(params=BEHAVIOURS)
def fake_replicas(request, cluster_path):
    ports = [entry.address[1] for entry in load_cluster_file(cluster_path).replicas]
    fakes = FakeReplicas(ports, request.param)
    yield fakes
    fakes.close()


def test_bft_submit_returns_refused_by_its_deadline(fake_replicas, cluster_path):
    printed = io.StringIO()
    started_s = time.monotonic()
    with contextlib.redirect_stdout(printed):
        code = main(["submit", "--config", str(cluster_path), "--client", "client-0", "--risk", "low",
                     "--action", json.dumps(ACTION), "--timeout-ms", str(DEADLINE_MS)])
    elapsed_s = time.monotonic() - started_s
    assert code == EXIT_REFUSED and json.loads(printed.getvalue())["status"] == "REFUSED"
    assert elapsed_s <= DEADLINE_MS / 1000 + MARGIN_S, f"{fake_replicas.behaviour}: {elapsed_s:.2f} s"


def test_the_blocking_client_returns_refused_by_its_deadline_open_and_close_included(fake_replicas, cluster_path):
    started_s = time.monotonic()
    with BlockingClient(cluster_path, "client-1", timeout_ms=DEADLINE_MS) as client:
        outcomes = [client.submit(ACTION, "low") for _ in range(2)]
    elapsed_s = time.monotonic() - started_s
    assert [outcome.status for outcome in outcomes] == ["REFUSED"] * 2
    assert elapsed_s <= 2 * DEADLINE_MS / 1000 + MARGIN_S, f"{fake_replicas.behaviour}: {elapsed_s:.2f} s"


def test_the_async_client_returns_refused_by_its_deadline(fake_replicas, cluster_path):
    async def submit_once() -> tuple[str, float]:
        started_s = trio.current_time()
        async with Client.open(cluster_path, "client-1") as client:
            outcome = await client.submit(ACTION, "low", timeout_ms=DEADLINE_MS)
        return outcome.status, trio.current_time() - started_s

    status, elapsed_s = trio.run(submit_once)
    assert status == "REFUSED"
    assert elapsed_s <= DEADLINE_MS / 1000 + MARGIN_S, f"{fake_replicas.behaviour}: {elapsed_s:.2f} s"


def test_a_submission_waiting_for_a_free_slot_still_returns_by_its_own_deadline(cluster_path):
    """Four submissions at once through one slot: the deadline runs from each call, not from when a slot frees."""
    ports = [entry.address[1] for entry in load_cluster_file(cluster_path).replicas]
    fakes = FakeReplicas(ports, "silent")

    async def submit_four() -> list[tuple[str, float]]:
        results: list[tuple[str, float]] = []
        async with Client.open(cluster_path, "client-1", max_outstanding=1) as client:
            async def submit_one() -> None:
                started_s = trio.current_time()
                outcome = await client.submit(ACTION, "low", timeout_ms=DEADLINE_MS)
                results.append((outcome.status, trio.current_time() - started_s))
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(submit_one)
        return results

    try:
        results = trio.run(submit_four)
    finally:
        fakes.close()
    assert [status for status, _ in results] == ["REFUSED"] * 4
    assert max(elapsed_s for _, elapsed_s in results) <= DEADLINE_MS / 1000 + MARGIN_S, results


def test_a_request_counter_locked_by_another_process_is_one_sentence_not_a_hang(cluster_path, capsys):
    """A second process using the same client id (stopped, say) holds the counter's lock: refuse, do not wait."""
    key_file = load_cluster_file(cluster_path).client("client-0").key_file
    with open(key_file.with_name("client-0.next-request"), "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        started_s = time.monotonic()
        with pytest.raises(ConfigFileError, match="locked by another process"):
            BlockingClient(cluster_path, "client-0", timeout_ms=DEADLINE_MS)
        code = main(["submit", "--config", str(cluster_path), "--client", "client-0", "--risk", "low",
                     "--action", json.dumps(ACTION), "--timeout-ms", str(DEADLINE_MS)])
        elapsed_s = time.monotonic() - started_s
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and err.count("\n") == 1 and "locked by another process" in err, err
    assert elapsed_s <= 2 * (DEADLINE_MS / 1000 + MARGIN_S), elapsed_s
