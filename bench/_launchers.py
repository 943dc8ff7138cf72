"""Launchers: one way to ask for "a running cluster of n replicas", whatever runs the replicas.

A ``Launcher`` opens a ``RunningCluster`` for a ``ClusterSpec`` and tears it
down afterwards.  The benchmarks only use what every launcher provides: the
replica count, a description, and ``open_client``.

- ``InProcessLauncher``: ``bft.runtime.open_local_cluster``; every replica is a
  task in this process, so they all share one interpreter (one core).
- ``ProcessLauncher``: one OS process per replica, started from a cluster
  file written by ``bft init``'s code and run by ``bft.cluster.LocalProcessCluster``; the client
  stays in this process.  Its replicas always use SQLite: for "volatile"
  storage the cluster folder goes on a RAM file system (``/dev/shm``), where
  fsync costs nothing, so only durability differs, not the code path.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
import time
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncContextManager, AsyncIterator, Callable, Protocol

import trio

from bft.runtime import AsyncClient, RuntimeClock, open_client, open_local_cluster
from bft.storage import MemoryStore, SqliteStore

from ._workload import BENCH_POLICY_NAMES, bench_policies

STORAGE_KINDS = ("volatile", "durable")
RAM_DIRECTORY = Path("/dev/shm")
CONNECT_TIMEOUT_S = 20.0
PROCESS_MODULES = ("bft.cluster._file", "bft.cluster._create", "bft.cluster._processes")


class LaunchError(Exception):
    """The cluster could not be started; the message is one sentence."""


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    replica_count: int
    storage: str  # One of STORAGE_KINDS.
    client_count: int
    scratch_directory: Path  # Where durable databases and cluster files go (a disk, not tmpfs).

    def __post_init__(self) -> None:
        assert self.replica_count >= 4 and self.client_count >= 1
        assert self.storage in STORAGE_KINDS, self.storage

    @property
    def client_ids(self) -> tuple[str, ...]:
        return tuple(f"client-{i}" for i in range(self.client_count))


class RunningCluster(Protocol):
    replica_count: int
    description: str

    def open_client(self, client_id: str, **options: Any) -> AsyncContextManager[AsyncClient]:
        """A running client connected to every replica; options go to ``AsyncClient``."""

    def cpu_seconds(self) -> float:
        """CPU time used so far by the replicas and by this process (its clients), user plus system."""

    def replica_cpu_snapshot(self) -> "CpuSnapshot":
        """The replicas' CPU so far (alone where they are processes, else this whole process), finely."""


class Launcher(Protocol):
    name: str

    def open(self, spec: ClusterSpec) -> AsyncContextManager[RunningCluster]:
        """Start the replicas, wait until they serve, yield; stop them on exit."""


@dataclass
class _Running:
    replica_count: int
    description: str
    client_opener: Callable[..., AsyncContextManager[AsyncClient]]
    replica_pids: Callable[[], list[int]] = list  # Replicas in other processes; none for in-process ones.

    def open_client(self, client_id: str, **options: Any) -> AsyncContextManager[AsyncClient]:
        return self.client_opener(client_id, **options)

    def cpu_seconds(self) -> float:
        return time.process_time() + sum(process_cpu_seconds(pid) for pid in self.replica_pids())

    def replica_cpu_snapshot(self) -> "CpuSnapshot":
        pids = self.replica_pids()
        if pids:
            return CpuSnapshot("replica processes", {key: seconds for pid in pids
                                                     for key, seconds in thread_cpu_seconds(pid).items()})
        return CpuSnapshot("this process (replicas in-process, with the client)", {(0, 0): time.process_time()})


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """CPU seconds per (process, thread) at one moment, and what they cover."""
    scope: str
    by_thread: dict[tuple[int, int], float]

    def seconds_until(self, later: "CpuSnapshot") -> float:
        """CPU used between the two snapshots.  A thread born in between counts whole; one that ended in
        between is left out (its last moments are lost: an idle worker thread that timed out uses next to
        nothing), rather than subtracting its whole life."""
        assert later.scope == self.scope
        return sum(seconds - self.by_thread.get(key, 0.0) for key, seconds in later.by_thread.items())


def thread_cpu_seconds(pid: int) -> dict[tuple[int, int], float]:
    """On-CPU seconds of each thread of ``pid``, in nanoseconds from /proc/PID/task/TID/schedstat where the
    kernel keeps it (clock ticks of 10 ms are too coarse for an idle replica), else the process's ticks."""
    try:
        tids = [int(name) for name in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return {}
    by_thread = {}
    for tid in tids:
        try:
            by_thread[(pid, tid)] = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue  # The thread ended since the listing (or the kernel keeps no schedstat: see below).
    if (pid, pid) not in by_thread:  # The main thread lives as long as the process: no schedstat here.
        return {(pid, 0): process_cpu_seconds(pid)}
    return by_thread


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU of process ``pid`` from /proc (0 where /proc or the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields_after_name = stat[stat.rindex(")") + 2:].split()
    user_ticks, system_ticks = int(fields_after_name[11]), int(fields_after_name[12])
    return (user_ticks + system_ticks) / os.sysconf("SC_CLK_TCK")


class InProcessLauncher:
    name = "in-process"

    @asynccontextmanager
    async def open(self, spec: ClusterSpec) -> AsyncIterator[RunningCluster]:
        with tempfile.TemporaryDirectory(dir=spec.scratch_directory, prefix="bench-in-process-") as scratch:
            stores = [SqliteStore(Path(scratch) / f"replica-{i}.db") if spec.storage == "durable" else MemoryStore()
                      for i in range(spec.replica_count)]
            try:
                async with open_local_cluster(bench_policies(spec.replica_count), client_ids=spec.client_ids,
                                              stores=stores) as cluster:
                    if not await cluster.wait_connected(CONNECT_TIMEOUT_S):
                        raise LaunchError(f"the {spec.replica_count} in-process replicas did not connect "
                                          f"within {CONNECT_TIMEOUT_S:g} s")
                    storage = "SQLite (WAL, synchronous=FULL)" if spec.storage == "durable" else "MemoryStore"
                    yield _Running(spec.replica_count, f"{spec.replica_count} replicas in this process, {storage}",
                                   cluster.open_client)
            finally:
                for store in stores:
                    store.close()


def process_launcher_problem() -> str | None:
    """Why real replica processes cannot be launched from this checkout, or None if they can."""
    for module in PROCESS_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as error:
            return f"{module} is not available ({error})"
    return None


class ProcessLauncher:
    name = "processes"

    @asynccontextmanager
    async def open(self, spec: ClusterSpec) -> AsyncIterator[RunningCluster]:
        from bft.cluster import ConfigFileError, LocalProcessCluster, ReplicaProcessError, create_cluster_directory

        base = RAM_DIRECTORY if spec.storage == "volatile" and RAM_DIRECTORY.is_dir() else spec.scratch_directory
        directory = Path(tempfile.mkdtemp(dir=base, prefix="bench-processes-"))
        keep_for_diagnosis = False
        try:
            try:
                cluster_file = create_cluster_directory(directory / "cluster", spec.replica_count, spec.client_count,
                                                        policies=BENCH_POLICY_NAMES, cluster_id="bench")
            except ConfigFileError as error:
                raise LaunchError(str(error)) from None
            processes = LocalProcessCluster(cluster_file.path)
            try:
                await trio.to_thread.run_sync(processes.start_all)
                await trio.to_thread.run_sync(processes.wait_listening)
            except ReplicaProcessError as error:
                await trio.to_thread.run_sync(processes.stop_all)
                keep_for_diagnosis = True  # The error names a replica's log in this folder.
                raise LaunchError(str(error)) from None
            try:
                clock = RuntimeClock()

                def client_opener(client_id: str, **options: Any) -> AsyncContextManager[AsyncClient]:
                    options.setdefault("clock", clock)
                    return open_client(cluster_file.config, client_id, cluster_file.client_seed(client_id),
                                       cluster_file.addresses, **options)

                where = "on disk" if base == spec.scratch_directory else f"on {base} (RAM, fsync is free)"
                yield _Running(spec.replica_count, f"{spec.replica_count} replica processes, SQLite {where}",
                               client_opener, lambda: list(processes.running().values()))
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(processes.stop_all)
        finally:
            if not keep_for_diagnosis:
                shutil.rmtree(directory, ignore_errors=True)


class FallbackLauncher:
    """The preferred launcher until it fails to start a cluster once; from then on the fallback.

    ``fallback_reason`` says why it switched (None while it has not), so a run
    reports which launcher really measured it.
    """

    def __init__(self, preferred: Launcher, fallback: Launcher | None, fallback_reason: str | None = None) -> None:
        assert fallback is not None or fallback_reason is None
        self.preferred = preferred
        self.fallback = fallback
        self.fallback_reason = fallback_reason

    @property
    def name(self) -> str:
        return self.fallback.name if self.fallback is not None and self.fallback_reason else self.preferred.name

    @asynccontextmanager
    async def open(self, spec: ClusterSpec) -> AsyncIterator[RunningCluster]:
        async with AsyncExitStack() as stack:
            cluster = None
            if self.fallback_reason is None:
                try:
                    cluster = await stack.enter_async_context(self.preferred.open(spec))
                except LaunchError as error:
                    if self.fallback is None:
                        raise
                    self.fallback_reason = str(error)
            if cluster is None:
                cluster = await stack.enter_async_context(self.fallback.open(spec))
            yield cluster


LAUNCHER_NAMES = ("auto", "in-process", "processes")


def choose_launcher(name: str) -> FallbackLauncher:
    """"auto" prefers real processes and falls back to in-process; the others never fall back."""
    assert name in LAUNCHER_NAMES, name
    problem = process_launcher_problem()
    if name == "in-process":
        return FallbackLauncher(InProcessLauncher(), None)
    if name == "processes":
        if problem is not None:
            raise LaunchError(problem)
        return FallbackLauncher(ProcessLauncher(), None)
    return FallbackLauncher(ProcessLauncher(), InProcessLauncher(), problem)


async def open_connected_client(cluster: RunningCluster, stack: AsyncExitStack, client_id: str,
                                **options: Any) -> AsyncClient:
    """Open a client inside ``stack`` and wait until it reaches every replica."""
    client = await stack.enter_async_context(cluster.open_client(client_id, **options))
    if not await client.wait_connected(timeout_s=CONNECT_TIMEOUT_S):
        raise LaunchError(f"{client_id} reached only {client.replicas_connected} of {cluster.replica_count} "
                          f"replicas within {CONNECT_TIMEOUT_S:g} s")
    return client


def default_scratch_directory() -> Path:
    """A disk-backed temporary folder: fsync there means what it means in production."""
    return Path(os.environ.get("BENCH_SCRATCH", tempfile.gettempdir()))
