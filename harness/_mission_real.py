"""``python -m harness scenario mission --real``: the mission's episodes against replica processes and fault proxies.

Each episode gets a fresh cluster directory (as ``bft init`` writes it) whose
replicas run the mission's policies (same names and options as in simulation),
started as OS processes by ``bft.cluster.LocalProcessCluster``.  Every
replica-to-replica link (``--peer``) and every client link runs through a
``FaultProxy``, and the simulation's fault plan becomes real faults: a crash
is SIGKILL, then a restart from the replica's SQLite database; isolation
blackholes every link of the replica; a slow replica gets 500 ms of latency on
every link, both ways.  The same agents submit the same action stream in real
time, through ``bft.client.Client``.

What differs from simulation, and why: the honest majority's opinion comes
from a shadow evaluation of the honest policies in the harness, in invocation
order (each replica's real vote is inside its process); a stateful policy
(``rate``) may differ from its replica in order, but one policy cannot flip an
honest majority.  The invariants S1-S5 are checked over every honest
replica's SQLite log once the processes have stopped.  After the episodes, on
a cluster of its own, the operator quarantines the approve-everything replica
and replaces it through a configuration change under load (the check
``replacement``, ``_mission_replacement``).  A failover counts as
recovered at the first verdict certified after the fault.  Wall-clock latency
on a loaded machine is what it is: a busy CI box can miss a bound that the
protocol meets, and the report says which.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import trio

from bft.cluster import (ConfigFileError, LocalProcessCluster, PolicySpec, ReplicaProcessError, cluster_status,
                         create_cluster_directory, load_cluster_file, write_cluster_file)
from bft.client import Client
from bft.core import Request, VerdictCertificate
from bft.policy import context_for
from bft.storage import SqliteStore
from specs.invariants import check_all

from ._history import build_history
from ._host_cpu import HostCpu, HostCpuMonitor
from ._linearizability import Validity, check_keys, check_real_time_order
from ._mission_replacement import replacement_check
from ._mission_plan import (DEADLINES_MS, DEFAULT_ARRIVALS, REPLICA_COUNTS, SLOW_LINK_MS, WARM_UP_MS, ArrivalGaps,
                            EpisodeSpec, compromised_replica, plan_episodes)
from ._mission_results import (EXIT_USAGE, ConfigurationResult, EpisodeResult, MissionResult, check_detection,
                               check_latency_bounds, describe_mission, mission_checks, report_and_exit_status)
from ._mission_workload import AGENTS, ActionStream, MissionAction, mission_policies, mission_policy_specs
from ._nemesis import FaultEvent
from ._proxy import LinkProxies, Toxics
from ._report import vote_statistics
from ._run_checks import CheckOutcome, check_certificates, outcome_of

HEALED_MS = 1_000
REPLACEMENT = "replacement"  # The step after the episodes: the quarantined replica replaced (_mission_replacement).
WARM_UP_REQUESTS = 6
WARM_UP_TIMEOUT_S = 10.0
HEALED_TIMEOUT_MS = 10_000  # Requests after the heal must finalize within this (the real-time liveness bound).
CONNECT_TIMEOUT_S = 20.0
RECONNECT_TIMEOUT_S = 10.0
RECONNECT_POLL_S = 0.05


@dataclass
class _Observed:
    """One client operation as ``build_history`` reads it (the shape of the simulator's ``ClientRecord``)."""

    request: Request
    invoked_ms: int
    certificate: VerdictCertificate | None
    completed_ms: int | None
    refused: bool


@dataclass(frozen=True)
class _ConfigHolder:
    config: object  # ``check_certificates`` reads only ``.config``.


def write_real_cluster(directory: Path, replica_count: int, compromised: int):
    """A ``bft init`` cluster directory whose replicas run the mission's policies, options included."""
    specs = mission_policy_specs(replica_count, compromised)
    created = create_cluster_directory(directory, replica_count, client_count=len(AGENTS),
                                       policies=[name for name, _ in specs])
    replicas = tuple(dataclasses.replace(entry, policy=PolicySpec(name, options))
                     for entry, (name, options) in zip(created.replicas, specs))
    created.path.unlink()
    write_cluster_file(dataclasses.replace(created, replicas=replicas))
    return load_cluster_file(created.path)


class _RealEpisode:
    def __init__(self, spec: EpisodeSpec, seed: int, compromised: int, directory: Path, gaps: ArrivalGaps) -> None:
        self.spec = spec
        self.gaps = gaps
        self.compromised = compromised
        self.cluster_file = write_real_cluster(directory, spec.replica_count, compromised)
        self.proxies = LinkProxies(self.cluster_file.addresses, seed=seed)
        self.stream = ActionStream(random.Random(f"mission-actions/{seed}/{spec.name}"))
        self.arrivals = random.Random(f"mission-arrivals/{seed}/{spec.name}")
        self.observed: list[_Observed] = []
        self.actions: dict[tuple[str, int], MissionAction] = {}
        self.events: list[FaultEvent] = []
        self.origin_s = 0.0
        self.host_cpu = HostCpuMonitor()
        self.host_cpu_used: HostCpu | None = None

    def now_ms(self) -> int:
        return int((trio.current_time() - self.origin_s) * 1000)

    async def run(self) -> EpisodeResult:
        started = time.perf_counter()
        ids = range(self.spec.replica_count)
        async with trio.open_nursery() as services:
            await self.proxies.start(services)
            services.start_soon(self.host_cpu.run)
            peers = {i: {j: address for j, address in self.proxies.addresses_for(i).items() if j != i} for i in ids}
            processes = LocalProcessCluster(self.cluster_file.path, peer_addresses=peers)
            await trio.to_thread.run_sync(processes.start_all)
            try:
                await trio.to_thread.run_sync(processes.wait_listening)
                times = await self._exercise(processes)
            finally:
                await trio.to_thread.run_sync(processes.stop_all)
                services.cancel_scope.cancel()
        return self._result(times, time.perf_counter() - started)

    async def _exercise(self, processes: LocalProcessCluster) -> tuple[int, int, int]:
        async with AsyncExitStack() as stack:
            clients = {agent: await stack.enter_async_context(Client.open(
                self.cluster_file, f"client-{index}", addresses=self.proxies.client_addresses()))
                for index, agent in enumerate(AGENTS)}
            with trio.fail_after(CONNECT_TIMEOUT_S):
                for client in clients.values():
                    await client.wait_connected(timeout_s=CONNECT_TIMEOUT_S)
            self.origin_s = trio.current_time()
            async with trio.open_nursery() as requests:
                await self._warm_up(clients)
                window_start_ms = self.now_ms()
                self.host_cpu.start()
                await self._start_faults(processes, window_start_ms)
                await self._drive(requests, clients, window_start_ms + self.spec.window_ms, None)
                heal_ms = await self._heal(processes)
                # The healed requests run for HEALED_MS from when the cluster is back, not from heal_ms.
                await self._drive(requests, clients, self.now_ms() + HEALED_MS, HEALED_TIMEOUT_MS)
            self.host_cpu_used = self.host_cpu.summary()  # Before the replicas shut down.
            return window_start_ms, heal_ms, self.now_ms()

    async def _warm_up(self, clients: dict[str, Client]) -> None:
        """WARM_UP_REQUESTS requests, one at a time, before the faults: fresh processes answer their
        first requests cold.  They are in the history and under every check but the latency bounds
        (their regime is ``warm-up``); a warm-up slower than WARM_UP_TIMEOUT_S just ends there."""
        with trio.move_on_after(WARM_UP_TIMEOUT_S):
            for _ in range(WARM_UP_REQUESTS):
                action = self.stream.next()
                await self._submit(clients[action.agent], action, DEADLINES_MS[action.risk])
        await trio.sleep(WARM_UP_MS / 1000)

    async def _drive(self, nursery: trio.Nursery, clients: dict[str, Client], end_ms: int,
                     timeout_ms: int | None) -> None:
        while self.now_ms() < end_ms:
            action = self.stream.next()
            nursery.start_soon(self._submit, clients[action.agent], action,
                               timeout_ms or DEADLINES_MS[action.risk])
            await trio.sleep(self.gaps.draw(self.arrivals) / 1000)

    async def _submit(self, client: Client, action: MissionAction, timeout_ms: int) -> None:
        invoked_ms = self.now_ms()
        outcome = await client.submit(action.action, action.risk, timeout_ms=timeout_ms)
        self.actions[outcome.request.key] = action
        self.observed.append(_Observed(outcome.request, invoked_ms, outcome.certificate, self.now_ms(),
                                       outcome.status == "REFUSED"))

    async def _start_faults(self, processes: LocalProcessCluster, elapsed_ms: int) -> None:
        for victim, kind in self.spec.down:
            if kind == "crash":
                await trio.to_thread.run_sync(processes.kill, victim)
            else:
                self.proxies.isolate(victim)
            self.events.append(FaultEvent("crash" if kind == "crash" else "partition-isolated-node", elapsed_ms, None,
                                          (victim,), applied_start_ms=elapsed_ms))
        slow = Toxics(latency_ms=SLOW_LINK_MS)
        for victim in self.spec.slow:
            for other in (r for r in range(self.spec.replica_count) if r != victim):
                self.proxies.set_link(victim, other, slow)
                self.proxies.set_link(other, victim, slow)
            self.proxies.clients[victim].set_toxics(both=slow)
            self.events.append(FaultEvent("network-slow-links", elapsed_ms, None, (victim,),
                                          {"delay_ms": SLOW_LINK_MS}, applied_start_ms=elapsed_ms))

    async def _heal(self, processes: LocalProcessCluster) -> int:
        """Lift every fault and return when that began: from then on a quorum may legitimately form
        (a restarted replica rejoins within moments), so the faulty window ends there.  The requests
        that must finalize start only once every replica is connected to a quorum of peers again."""
        healed_ms = self.now_ms()
        self.proxies.heal()
        crashed = [victim for victim, kind in self.spec.down if kind == "crash"]
        for victim in crashed:
            await trio.to_thread.run_sync(processes.start, victim)
        await trio.to_thread.run_sync(processes.wait_listening, crashed)
        await self._wait_reconnected()
        for event in self.events:
            event.end_ms = event.applied_end_ms = healed_ms
        return healed_ms

    async def _wait_reconnected(self) -> None:
        """Until every replica reports a quorum of peers connected (bounded: past the bound the
        liveness check, not this wait, reports a cluster that does not come back)."""
        deadline_s = trio.current_time() + RECONNECT_TIMEOUT_S
        while trio.current_time() < deadline_s:
            statuses = await trio.to_thread.run_sync(cluster_status, self.cluster_file)
            if all(status.health == "ok" for status in statuses):
                return
            await trio.sleep(RECONNECT_POLL_S)

    def _result(self, times: tuple[int, int, int], wall_seconds: float) -> EpisodeResult:
        window_start_ms, heal_ms, end_ms = times
        history = build_history([(record.request.client_id, record) for record in self.observed],
                                max([end_ms] + [r.completed_ms for r in self.observed]))
        self.events.insert(0, FaultEvent("byzantine", 0, None, (self.compromised,),
                                         {"strategy": "approve-everything"}, applied_start_ms=0))
        recovered = None
        if self.spec.failover:
            recovered = min((r.completed_ms for r in self.observed
                             if r.certificate is not None and r.invoked_ms >= window_start_ms), default=None)
        result = EpisodeResult(self.spec, self.compromised, history, self.events, {}, dict(self.actions), 0,
                               window_start_ms, heal_ms, end_ms, recovered, wall_seconds, self.host_cpu_used)
        result.checks = self._checks(result)
        return result

    def _checks(self, result: EpisodeResult) -> dict[str, CheckOutcome]:
        config = self.cluster_file.config
        certificates = [record.certificate for record in self.observed if record.certificate is not None]
        honest = [r for r in range(self.spec.replica_count) if r != self.compromised]
        logs = {}
        for replica_id in honest:
            with SqliteStore(self.cluster_file.replica(replica_id).database) as store:
                logs[replica_id] = tuple(store.load().log)
        violations = check_all(logs, config, certificates)
        checks = {"invariants": CheckOutcome(Validity.INVALID, f"{len(violations)} invariant violations",
                                             [str(v) for v in violations[:20]]) if violations else
                  CheckOutcome(Validity.VALID, f"S1-S5 hold over {len(logs)} honest replicas' SQLite logs")}
        per_key = check_keys(result.history)
        checks["linearizability"] = outcome_of(per_key, f"{per_key.partitions} request keys checked independently")
        order = check_real_time_order(result.history)
        checks["real_time_order"] = outcome_of(order, "a key certified before another was first sent has a lower seq")
        checks["certified_verdicts"] = check_certificates(result.history, _ConfigHolder(config))
        checks.update(mission_checks(result, self._shadow_policies(), HEALED_TIMEOUT_MS))
        return checks

    def _shadow_policies(self):
        """The mission's policies evaluated in the harness, in invocation order, on what was submitted."""
        shadow = mission_policies(self.spec.replica_count, self.compromised)
        for record in sorted(self.observed, key=lambda r: r.invoked_ms):
            action = json.loads(record.request.action)
            for replica_id, policy in shadow.items():
                policy.evaluate(action, context_for(record.request, replica_id))
        return shadow


async def run_real_configuration(seed: int, replica_count: int, directory: Path,
                                 episode_names: tuple[str, ...] | None = None,
                                 gaps: ArrivalGaps = DEFAULT_ARRIVALS) -> ConfigurationResult:
    compromised = compromised_replica(seed, replica_count)
    specs = [spec for spec in plan_episodes(seed, replica_count, compromised)
             if episode_names is None or spec.name in episode_names]
    episodes = [await _RealEpisode(spec, seed, compromised, directory / f"n{replica_count}-{spec.name}", gaps).run()
                for spec in specs]
    votes = vote_statistics([episode.history for episode in episodes], replica_count)
    checks = {"latency_bounds": check_latency_bounds(episodes), "detection": check_detection(votes, compromised)}
    if episode_names is None or REPLACEMENT in episode_names:
        cluster_file = write_real_cluster(directory / f"n{replica_count}-{REPLACEMENT}", replica_count, compromised)
        checks[REPLACEMENT] = await replacement_check(seed, cluster_file, compromised, gaps)
    names = [name for name, _ in mission_policy_specs(replica_count, compromised)]
    return ConfigurationResult(replica_count, compromised, names, episodes, votes, checks)


def run_real_mission(seed: int, replica_counts: tuple[int, ...], directory: Path,
                     episode_names: tuple[str, ...] | None = None,
                     gaps: ArrivalGaps = DEFAULT_ARRIVALS) -> MissionResult:
    started = time.perf_counter()

    directory.mkdir(parents=True, exist_ok=True)
    clusters = Path(tempfile.mkdtemp(prefix="clusters-", dir=directory))  # Kept: the replicas' logs and databases.

    async def main() -> list[ConfigurationResult]:
        return [await run_real_configuration(seed, count, clusters, episode_names, gaps) for count in replica_counts]

    return MissionResult(seed, trio.run(main), time.perf_counter() - started, real=True, gaps=gaps)


def main_real(arguments, out: TextIO) -> int:
    counts = (arguments.replicas,) if arguments.replicas else REPLICA_COUNTS
    try:
        result = run_real_mission(arguments.seed, counts, arguments.out, gaps=arguments.gaps)
    except (ReplicaProcessError, ConfigFileError, OSError) as error:
        print(f"error: the real-process mission could not run: {error}", file=sys.stderr)
        return EXIT_USAGE
    describe_mission(result, out)
    return report_and_exit_status(result, arguments.out, out)
