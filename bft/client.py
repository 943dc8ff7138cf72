"""The client library: ask a running cluster for verdicts, from trio code (``Client``) or plain code (``BlockingClient``).

Both are built from the cluster file and a client id; the private key comes
from the key file the cluster file names for that client (or ``key_file``)::

    async with bft.Client.open("cluster/cluster.toml", "client-0") as client:
        outcome = await client.submit({"tool": "shell", "command": "ls"}, "low")

    with bft.BlockingClient("cluster/cluster.toml", "client-0") as client:
        outcome = client.submit({"tool": "shell", "command": "ls"}, "low")

``outcome.status`` is "ALLOW" or "DENY" only together with a
``VerdictCertificate`` that was verified against the cluster's keys; when no
verified certificate arrives before the deadline it is "REFUSED" with a
reason, which callers must treat as DENY.  ``submit`` returns by its deadline
(counted from the call) plus ``reply_grace_ms`` (200 ms), whatever the network
does: connects that hang, handshakes that never finish, replicas that accept
and never answer, or every submission slot busy.

**Request numbers.**  Replicas remember each client's request numbers
(exactly-once) and refuse an old number carrying a new action, so a client
that restarts must continue where it stopped.  The next free number is kept
in a small counter file next to the client's key file (``client-0.key`` ->
``client-0.next-request``), updated under an exclusive ``flock``.  A client
reserves numbers in blocks and hands unused ones back on a clean close, so
consecutive runs (``bft submit`` once per process, say) use consecutive
numbers; a crash skips at most one block.  One client id should be used by
one process at a time (a replica keeps a single connection per identity); a
second process that reserves numbers meanwhile is detected, and the first one
then raises ``ClientInUseError`` rather than reuse numbers.  A counter whose lock is held
for more than half a second (by a stopped or stuck process) is reported as a
``ConfigFileError`` rather than waited for.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import os
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

import trio

from .cluster import Address, ClusterFile, ConfigFileError, load_cluster_file
from .cluster._epochs import ClusterEpochs, cluster_epochs
from .core import ClusterConfig, Risk
from .runtime import AsyncClient, Outcome, open_client

DEFAULT_TIMEOUT_MS = 5000
RESERVE_BLOCK = 64
COUNTER_SUFFIX = ".next-request"
REQUEST_NUMBER_MAX = 2**63 - 1
COUNTER_LOCK_TIMEOUT_S = 0.5
COUNTER_LOCK_POLL_S = 0.01
START_TIMEOUT_S = 10.0
# Closing cancels the connections and hands unused request numbers back: milliseconds of work, so a
# close that takes longer (a stuck file lock) is not waited for; a skipped hand-back costs numbers only.
CLOSE_TIMEOUT_S = 1.0


class ClientInUseError(RuntimeError):
    """Another process reserved request numbers for this client id while this one was using it."""


def parse_risk(risk: Risk | str) -> Risk:
    """``Risk`` from a ``Risk`` or its name ("low", "medium", "high", "critical"); ``ValueError`` otherwise."""
    if isinstance(risk, Risk):
        return risk
    try:
        return Risk(str(risk).lower())
    except ValueError:
        raise ValueError(f"unknown risk {risk!r}; choose one of {', '.join(r.value for r in Risk)}") from None


class RequestCounter:
    """The counter file holding a client's next unreserved request number (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def reserve(self, count: int, expected_first: int | None = None) -> int:
        """Reserve ``count`` consecutive numbers and return the first.

        With ``expected_first``, the block must start there (it extends the caller's previous block);
        if someone else reserved in between, raise ``ClientInUseError`` and reserve nothing.
        """
        assert count >= 1
        with self._locked() as file:
            first = self._read(file)
            if expected_first is not None and first != expected_first:
                raise ClientInUseError(f"{self.path}: another process reserved request numbers for this client "
                                       f"(expected the next number to be {expected_first}, found {first})")
            self._write(file, first + count)
        return first

    def release(self, reserved_end: int, next_unused: int) -> bool:
        """Hand back ``[next_unused, reserved_end)`` if nobody reserved after us; True if it was handed back."""
        assert next_unused <= reserved_end
        with self._locked() as file:
            if self._read(file) != reserved_end:
                return False
            self._write(file, next_unused)
        return True

    def _locked(self):
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise ConfigFileError(self.path, f"cannot open the request counter ({error.strerror or error})") \
                from None
        file = os.fdopen(descriptor, "r+")
        # Held for microseconds by a healthy client; one that holds it longer is stopped or stuck, and
        # waiting for it would overrun every deadline (the wait blocks the client's event loop too).
        give_up_s = time.monotonic() + COUNTER_LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # Released when the file is closed.
                return file
            except BlockingIOError:
                if time.monotonic() >= give_up_s:
                    file.close()
                    raise ConfigFileError(self.path, "the request counter is locked by another process (is another "
                                                     "client with this id stopped or stuck?)") from None
                time.sleep(COUNTER_LOCK_POLL_S)

    def _read(self, file) -> int:
        file.seek(0)
        text = file.read(32).strip()
        if not text:
            return 1
        if not text.isdigit() or not 1 <= int(text) <= REQUEST_NUMBER_MAX:
            raise ConfigFileError(self.path, "the request counter must hold one positive whole number")
        return int(text)

    def _write(self, file, value: int) -> None:
        if value > REQUEST_NUMBER_MAX:
            raise ConfigFileError(self.path, "the client has used up its request numbers")
        file.seek(0)
        file.truncate()
        file.write(f"{value}\n")
        file.flush()
        os.fsync(file.fileno())


@dataclass(frozen=True, slots=True)
class ClientSetup:
    """Everything a client needs, loaded and checked before any connection is made."""

    cluster: ClusterFile
    client_id: str
    seed: bytes = field(repr=False)
    addresses: Mapping[int, Address]
    counter: RequestCounter
    epochs: ClusterEpochs  # The genesis and the epochs that lead to the cluster file's configuration.


def prepare_client(cluster: ClusterFile | str | os.PathLike, client_id: str, *,
                   key_file: str | os.PathLike | None = None, counter_file: str | os.PathLike | None = None,
                   addresses: Mapping[int, Address] | None = None) -> ClientSetup:
    """Load the cluster file and the client's key; ``ConfigFileError`` (one sentence) on any problem."""
    loaded = cluster if isinstance(cluster, ClusterFile) else load_cluster_file(cluster)
    entry = loaded.client(client_id)
    seed = loaded.client_seed(client_id, key_file)
    key_path = Path(key_file) if key_file is not None else entry.key_file
    assert key_path is not None  # client_seed raised otherwise.
    counter_path = Path(counter_file) if counter_file is not None else key_path.with_name(key_path.stem + COUNTER_SUFFIX)
    chosen = {**loaded.addresses, **(addresses or {})}
    return ClientSetup(loaded, client_id, seed, chosen, RequestCounter(counter_path), cluster_epochs(loaded))


class Client:
    """An async (trio) client of a running cluster; create it with ``Client.open``.

    ``submit`` may be called from many tasks at once (up to ``max_outstanding`` in flight).
    """

    def __init__(self, setup: ClientSetup, runtime_client: AsyncClient, first_request_number: int) -> None:
        self.setup = setup
        self._runtime_client = runtime_client
        self._first_number = first_request_number
        self._reserved_end = first_request_number + RESERVE_BLOCK
        # Submissions begun: each takes at most one number (one that fails validation takes none), in
        # whatever order the runtime client admits them, so this bounds the numbers used from above.
        self._submissions_started = 0

    @staticmethod
    @asynccontextmanager
    async def open(cluster: ClusterFile | str | os.PathLike, client_id: str, *,
                   key_file: str | os.PathLike | None = None, counter_file: str | os.PathLike | None = None,
                   addresses: Mapping[int, Address] | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS,
                   max_outstanding: int = 16) -> AsyncIterator["Client"]:
        """A connected-as-it-can client, closed (and its unused request numbers handed back) on exit.

        ``addresses`` overrides replica addresses ({replica id: (host, port)}), for example to go
        through a proxy.  Raises ``ConfigFileError`` for a bad cluster file, client id or key file.
        """
        setup = prepare_client(cluster, client_id, key_file=key_file, counter_file=counter_file, addresses=addresses)
        async with _open_client(setup, timeout_ms, max_outstanding) as client:
            yield client

    @property
    def config(self) -> ClusterConfig:
        """The configuration of the newest epoch this client knows."""
        return self._runtime_client.config

    def follow(self, cluster: ClusterFile | str | os.PathLike) -> int:
        """Learn the epochs of ``cluster`` (a later epoch's cluster file, whose chain leads from this client's
        genesis) that this client does not know yet; its links follow the newest one's members.  Returns how
        many epochs it learned.  ``ConfigFileError`` for a file or chain that does not hold or does not extend
        this client's."""
        loaded = cluster if isinstance(cluster, ClusterFile) else load_cluster_file(cluster)
        epochs = cluster_epochs(loaded)
        known = self.setup.epochs
        if epochs.genesis != known.genesis or epochs.later[:len(known.later)] != known.later:
            raise ConfigFileError(loaded.path, "its chain does not extend the chain this client follows")
        new = epochs.later[len(known.later):]
        for index, (starts_after, config) in enumerate(new):
            self._runtime_client.learn_epoch(starts_after, config, loaded.addresses if index == len(new) - 1 else None)
        self.setup = dataclasses.replace(self.setup, cluster=loaded, addresses=loaded.addresses, epochs=epochs)
        return len(new)

    @property
    def client_id(self) -> str:
        return self.setup.client_id

    @property
    def replicas_connected(self) -> int:
        return self._runtime_client.replicas_connected

    async def wait_connected(self, replica_count: int | None = None, timeout_s: float = 10.0) -> bool:
        """Wait until ``replica_count`` replicas (default: all) are connected; False on timeout."""
        return await self._runtime_client.wait_connected(replica_count, timeout_s)

    async def submit(self, action: Mapping[str, Any] | str, risk: Risk | str = Risk.LOW, *,
                     timeout_ms: int | None = None) -> Outcome:
        """The cluster's verdict on ``action`` (a JSON object, or its text) at ``risk``.

        REFUSED (with a reason) unless a verified certificate arrives within ``timeout_ms``;
        returns by then plus ``reply_grace_ms`` (200 ms) whatever the network does.  An action
        that is not a JSON object within the cluster's depth and size limits raises
        ``bft.core.ActionShapeError`` (a ``ValueError``) before anything is signed or sent; an
        unknown risk raises ``ValueError``.
        """
        chosen_risk = parse_risk(risk)
        if self._first_number + self._submissions_started >= self._reserved_end:
            self.setup.counter.reserve(RESERVE_BLOCK, expected_first=self._reserved_end)
            self._reserved_end += RESERVE_BLOCK
        self._submissions_started += 1
        outcome = await self._runtime_client.submit(action, chosen_risk, timeout_ms=timeout_ms)
        assert self._first_number <= outcome.request_number < self._reserved_end, "a number we did not reserve"
        assert outcome.status == "REFUSED" or outcome.certificate is not None
        return outcome

    def _release_unused(self) -> None:
        used_end = min(self._first_number + self._submissions_started, self._reserved_end)
        self.setup.counter.release(self._reserved_end, used_end)


@asynccontextmanager
async def _open_client(setup: ClientSetup, timeout_ms: int, max_outstanding: int) -> AsyncIterator[Client]:
    first = setup.counter.reserve(RESERVE_BLOCK)
    client: Client | None = None
    try:
        async with open_client(setup.epochs.genesis, setup.client_id, setup.seed, setup.addresses,
                               limits=setup.cluster.node_options.transport, timeout_ms=timeout_ms,
                               max_outstanding=max_outstanding, first_request_number=first,
                               later_epochs=setup.epochs.later) as runtime_client:
            client = Client(setup, runtime_client, first)
            yield client
    finally:
        if client is not None:
            client._release_unused()
        else:
            setup.counter.release(first + RESERVE_BLOCK, first)


class BlockingClient:
    """``Client`` for code that is not async: one background thread runs trio and keeps the connections.

    Use it as a context manager (or call ``close``).  ``submit`` blocks the calling thread until the
    verdict or the refusal; it may be called from several threads at once.
    """

    def __init__(self, cluster: ClusterFile | str | os.PathLike, client_id: str, *,
                 key_file: str | os.PathLike | None = None, counter_file: str | os.PathLike | None = None,
                 addresses: Mapping[int, Address] | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS,
                 max_outstanding: int = 16) -> None:
        # Load everything here, so that a bad file or id raises in the caller's thread.
        setup = prepare_client(cluster, client_id, key_file=key_file, counter_file=counter_file, addresses=addresses)
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._client: Client | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._run, args=(setup, timeout_ms, max_outstanding),
                                        name=f"bft-client-{client_id}", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError(f"the client thread did not start within {START_TIMEOUT_S:g} s")
        if self._failure is not None:
            raise self._failure

    def _run(self, setup: ClientSetup, timeout_ms: int, max_outstanding: int) -> None:
        try:
            trio.run(self._serve, setup, timeout_ms, max_outstanding)
        except BaseException as error:  # Handed to the constructor's caller, if it is still waiting.
            self._failure = error
        finally:
            self._ready.set()

    async def _serve(self, setup: ClientSetup, timeout_ms: int, max_outstanding: int) -> None:
        async with _open_client(setup, timeout_ms, max_outstanding) as client:
            self._client, self._token, self._stop = client, trio.lowlevel.current_trio_token(), trio.Event()
            self._ready.set()
            await self._stop.wait()

    @property
    def config(self) -> ClusterConfig:
        assert self._client is not None
        return self._client.config

    def submit(self, action: Mapping[str, Any] | str, risk: Risk | str = Risk.LOW, *,
               timeout_ms: int | None = None) -> Outcome:
        """Like ``Client.submit``, blocking."""
        if self._client is None or self._stop is None or self._stop.is_set():
            raise RuntimeError("this client is closed")
        call = functools.partial(self._client.submit, action, risk, timeout_ms=timeout_ms)
        return trio.from_thread.run(call, trio_token=self._token)

    def follow(self, cluster: ClusterFile | str | os.PathLike) -> int:
        """Like ``Client.follow``."""
        assert self._client is not None
        return trio.from_thread.run_sync(self._client.follow, cluster, trio_token=self._token)

    def wait_connected(self, replica_count: int | None = None, timeout_s: float = 10.0) -> bool:
        assert self._client is not None
        call = functools.partial(self._client.wait_connected, replica_count, timeout_s)
        return trio.from_thread.run(call, trio_token=self._token)

    def close(self) -> None:
        """Stop the background thread (hands unused request numbers back); safe to call twice."""
        if self._stop is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(CLOSE_TIMEOUT_S)

    def __enter__(self) -> "BlockingClient":
        return self

    def __exit__(self, *exception_info) -> None:
        self.close()
