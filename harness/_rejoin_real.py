"""``python -m harness scenario rejoin --real``: the rejoin episodes against replica processes on loopback.

A fresh ``bft init`` cluster (all replicas allow everything) runs as OS processes; every replica link goes through
a ``FaultProxy``.  One client offers a request every 80 ms.  Each replica in turn, primary included, is paused
(SIGSTOP, then SIGCONT), killed (SIGKILL, then a restart from its SQLite file) and isolated from its peers (the
proxies blackhole its links, then heal), for ``FAULT_S`` each; once with the load going on after the fault, once
with the cluster idle from just before the fault ends.  The episode measures, from the end of the fault,
the time until the replica is back: ``bft status`` calls it ok (reachable, connected, in the view most replicas
report, not catching up) and it executed at least as far as the least advanced other replica.  It also records
the longest stretch with requests outstanding and no verdict.  Then the stranded-replica sequence of issue 17.
Wall-clock figures on a loaded machine are what they are: the report says how many episodes missed the bound.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from typing import TextIO

import trio

from bft.cluster import (ConfigFileError, LocalProcessCluster, ReplicaProcessError, ReplicaStatus, cluster_status,
                         create_cluster_directory)
from bft.client import Client

from ._proxy import LinkProxies
from ._rejoin import FAULT_KINDS, LOAD_GAP_MS, REJOIN_BOUND_IDLE_MS, REJOIN_BOUND_LOADED_MS, VERDICT_GAP_BOUND_MS

FAULT_S = 2.5
IDLE_SETTLE_S = 1.0
POLL_S = 0.05
CONNECT_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_MS = 5_000
EXIT_USAGE = 2


class RealRejoin:
    def __init__(self, directory: Path, replica_count: int, seed: int) -> None:
        self.cluster_file = create_cluster_directory(directory, replica_count)
        self.proxies = LinkProxies(self.cluster_file.addresses, seed=seed)
        self.replica_count = replica_count
        self.verdicts_s: list[float] = []  # When each verdict came back.
        self.number = 0
        self.loaded = True  # Off while an idle episode waits for the rejoin.
        self.lines: list[str] = []
        self.problems: list[str] = []
        self.rejoin_ms: list[int] = []

    async def run(self) -> None:
        ids = range(self.replica_count)
        async with trio.open_nursery() as services:
            await self.proxies.start(services)
            peers = {i: {j: address for j, address in self.proxies.addresses_for(i).items() if j != i} for i in ids}
            processes = LocalProcessCluster(self.cluster_file.path, peer_addresses=peers)
            await trio.to_thread.run_sync(processes.start_all)
            try:
                await trio.to_thread.run_sync(processes.wait_listening)
                await self._exercise(processes)
            finally:
                await trio.to_thread.run_sync(processes.stop_all)  # SIGCONTs a paused replica first.
                services.cancel_scope.cancel()

    async def _exercise(self, processes: LocalProcessCluster) -> None:
        async with Client.open(self.cluster_file, "client-0", addresses=self.proxies.client_addresses()) as client:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                await client.wait_connected(timeout_s=CONNECT_TIMEOUT_S)
            async with trio.open_nursery() as load:
                load.start_soon(self._load, client)
                await trio.sleep(1.0)
                for loaded in (True, False):
                    for kind in FAULT_KINDS:
                        for replica_id in range(self.replica_count):
                            await self._episode(processes, kind, replica_id, loaded)
                await self._stranded(processes)
                load.cancel_scope.cancel()

    async def _load(self, client: Client) -> None:
        async with trio.open_nursery() as requests:
            while True:
                if self.loaded:
                    self.number += 1
                    requests.start_soon(self._submit, client, self.number)
                await trio.sleep(LOAD_GAP_MS / 1000)

    async def _submit(self, client: Client, number: int) -> None:
        outcome = await client.submit({"tool": "read", "n": number}, "low", timeout_ms=REQUEST_TIMEOUT_MS)
        if outcome.certificate is not None:
            self.verdicts_s.append(trio.current_time())

    async def _episode(self, processes: LocalProcessCluster, kind: str, replica_id: int, loaded: bool) -> None:
        """Under load during the fault; afterwards still loaded, or idle (then 2 s instead of 5 s to rejoin)."""
        started_s = trio.current_time()
        await self._apply(processes, kind, replica_id, start=True)
        await trio.sleep(FAULT_S)
        gap_ms = self._verdict_gap_ms(started_s)
        self.loaded = loaded
        await trio.sleep(0 if loaded else IDLE_SETTLE_S)  # Idle: the last requests end before the fault does.
        await self._apply(processes, kind, replica_id, start=False)
        bound_ms = REJOIN_BOUND_LOADED_MS if loaded else REJOIN_BOUND_IDLE_MS
        took_ms = await self._wait_rejoined(replica_id, bound_ms)
        await trio.sleep(0.5)
        gap_ms = max(gap_ms, self._verdict_gap_ms(started_s)) if loaded else gap_ms
        self.loaded = True
        rejoined = f"rejoined in {took_ms} ms" if took_ms is not None else "NOT rejoined"
        line = f"{kind:8} replica {replica_id} ({'load' if loaded else 'idle'}): {rejoined}, " \
               f"longest verdict gap {gap_ms} ms"
        self.lines.append(line)
        if took_ms is None:
            self.problems.append(f"{line} (bound {bound_ms} ms)")
        else:
            self.rejoin_ms.append(took_ms)
        if gap_ms > VERDICT_GAP_BOUND_MS * 2:  # Wall clock on a shared host: twice the simulated bound.
            self.problems.append(f"{line}: verdicts stopped for longer than one view change")

    async def _apply(self, processes: LocalProcessCluster, kind: str, replica_id: int, start: bool) -> None:
        if kind == "pause":
            await trio.to_thread.run_sync(processes.pause if start else processes.resume, replica_id)
        elif kind == "kill" and start:
            await trio.to_thread.run_sync(processes.kill, replica_id)
        elif kind == "kill":
            await trio.to_thread.run_sync(processes.start, replica_id)
            await trio.to_thread.run_sync(processes.wait_listening, [replica_id])
        elif start:
            self.proxies.isolate(replica_id)
        else:
            self.proxies.heal()

    async def _wait_rejoined(self, replica_id: int, bound_ms: int) -> int | None:
        start_s = trio.current_time()
        with trio.move_on_after(bound_ms / 1000):
            while True:
                statuses = await trio.to_thread.run_sync(cluster_status, self.cluster_file, 0.5)
                if is_rejoined(statuses, replica_id):
                    return int((trio.current_time() - start_s) * 1000)
                await trio.sleep(POLL_S)
        return None

    def _verdict_gap_ms(self, since_s: float) -> int:
        marks = [since_s, *(t for t in self.verdicts_s if t >= since_s), trio.current_time()]
        return int(max(later - earlier for earlier, later in zip(marks, marks[1:])) * 1000)

    async def _stranded(self, processes: LocalProcessCluster) -> None:
        """Pause the primary, let the others change view, resume it, then stop another backup: the three
        running replicas must still serve."""
        statuses = await trio.to_thread.run_sync(cluster_status, self.cluster_file, 0.5)
        view = max((s.view for s in statuses if s.view is not None), default=0)
        primary = view % self.replica_count
        await trio.to_thread.run_sync(processes.pause, primary)
        await trio.sleep(FAULT_S)
        await trio.to_thread.run_sync(processes.resume, primary)
        if await self._wait_rejoined(primary, REJOIN_BOUND_LOADED_MS) is None:
            self.problems.append(f"stranded sequence: the resumed primary {primary} did not rejoin")
        victim = (primary + 2) % self.replica_count
        await trio.to_thread.run_sync(processes.pause, victim)
        before = len(self.verdicts_s)
        await trio.sleep(8.0)
        served = len(self.verdicts_s) - before
        await trio.to_thread.run_sync(processes.resume, victim)
        self.lines.append(f"stranded sequence: {served} verdicts in 8 s with replica {victim} stopped "
                          f"after replica {primary} was paused and resumed")
        if served < 10:
            self.problems.append(f"stranded sequence: only {served} verdicts with 3 of 4 replicas running")


def is_rejoined(statuses: list[ReplicaStatus], replica_id: int) -> bool:
    """``bft status`` says ok for it, and it executed at least as far as the least advanced other replica."""
    mine = statuses[replica_id]
    others = [s.last_executed_seq for s in statuses if s.replica_id != replica_id and s.last_executed_seq is not None]
    return mine.health == "ok" and bool(others) and mine.last_executed_seq >= min(others)


def main_rejoin_real(arguments, out: TextIO) -> int:
    directory = Path(tempfile.mkdtemp(prefix="rejoin-real-"))
    scenario = RealRejoin(directory / "cluster", arguments.replicas or 4, arguments.seed)
    try:
        trio.run(scenario.run)
    except (ReplicaProcessError, ConfigFileError, OSError) as error:
        print(f"error: the real-process rejoin scenario could not run: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"rejoin scenario, real processes on loopback (logs and databases in {directory})", file=out)
    for line in scenario.lines:
        print(line, file=out)
    if scenario.rejoin_ms:
        print(f"time to rejoin over {len(scenario.rejoin_ms)} episodes: p50 {statistics.median(scenario.rejoin_ms):.0f} "
              f"ms, max {max(scenario.rejoin_ms)} ms (wall clock, episodes under load and idle)", file=out)
    for problem in scenario.problems:
        print(f"problem: {problem}", file=out)
    return 1 if scenario.problems else 0
