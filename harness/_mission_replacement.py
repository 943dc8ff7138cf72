"""The real-process mission's replacement step (issue 20, item 4): the operator quarantines the approve-everything
replica, then replaces it with a fresh replica through a configuration change, under the mission's load.

One more cluster of the mission's replicas (their policies, the compromised one approving everything) runs as OS
processes, with the three agents submitting the mission's action stream at the mission's rate throughout.  The
operator, as a person would with ``bft operator quarantine`` and ``bft operator reconfigure``:

1. quarantines the compromised replica (the mission's detection check finds it from the vote statistics; the
   operator acts on that);
2. writes the next epoch's cluster file (the compromised replica's id gets a fresh key, address, database and an
   honest policy), orders the change signed with the operator key at CRITICAL risk, and appends its certificate
   to the chain file;
3. waits for the replaced process to retire by itself, starts the fresh replica from the next epoch's file (it
   catches up by state transfer) and tells the agents' clients the new epoch.

The check (``replacement``) says what happened, epoch change included, and is INVALID unless: both commands are
ALLOW; the replaced process retired by itself; the fresh replica executed past the activation seq and voted in a
certified verdict of the new epoch; every invariant of specs/ (S1-S11, each seq under its own epoch) holds over
the honest replicas' SQLite stores, the fresh one included, with every certificate the agents accepted; every
certified verdict is in the honest logs (none lost); and no request submitted outside the switch was refused.
Refusals inside the switch (from the change's submission until the fresh replica caught up, plus a deadline)
are counted in the summary.
"""

from __future__ import annotations

import random
import shutil
import tomllib
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import tomli_w
import trio

from bft.client import Client
from bft.cluster import (ClusterFile, LocalProcessCluster, cluster_status, create_key_file, free_loopback_ports,
                         load_cluster_file)
from bft.cluster._epochs import ClusterEpochs, append_epoch_certificate, change_for_next_file
from bft.core import Request, Risk, VerdictCertificate, operator_document, operator_signer_id
from bft.storage import SqliteStore
from specs.invariants import check_all_epochs

from ._linearizability import Validity
from ._mission_plan import DEADLINES_MS, ArrivalGaps
from ._mission_workload import AGENTS, HONEST_POLICY_SPECS, ActionStream
from ._run_checks import CheckOutcome

OPERATOR = "operator-0"
WARM_UP_S = 1.0
AFTER_SWITCH_S = 2.0
COMMAND_TIMEOUT_MS = 10_000
CONNECT_TIMEOUT_S = 20.0
RETIRE_TIMEOUT_S = 30.0
CATCH_UP_TIMEOUT_S = 30.0
POLL_S = 0.1
SUBMISSIONS_MAX = 5_000  # A bound on the load loop; at the mission's rate it is never reached.


class ReplacementFailed(Exception):
    """A step of the operator's procedure did not happen; the message says which."""


@dataclass
class _Operation:
    request: Request
    submitted_s: float
    certificate: VerdictCertificate | None


class _Replacement:
    def __init__(self, seed: int, cluster_file: ClusterFile, compromised: int, gaps: ArrivalGaps) -> None:
        self.replica_count = cluster_file.config.replica_count
        self.compromised = compromised
        self.gaps = gaps
        self.cluster_file = cluster_file
        self.stream = ActionStream(random.Random(f"mission-replacement-actions/{seed}"))
        self.arrivals = random.Random(f"mission-replacement-arrivals/{seed}")
        self.operations: list[_Operation] = []
        self.switch_s: tuple[float, float] | None = None
        self.story: list[str] = []

    async def run(self) -> CheckOutcome:
        processes = LocalProcessCluster(self.cluster_file.path)
        await trio.to_thread.run_sync(processes.start_all)
        next_processes = None
        try:
            await trio.to_thread.run_sync(processes.wait_listening)
            next_processes, epochs = await self._under_load()
        except ReplacementFailed as failure:
            return CheckOutcome(Validity.INVALID, f"the replacement did not happen: {failure}", self.story)
        finally:
            for cluster in filter(None, (next_processes, processes)):
                await trio.to_thread.run_sync(cluster.stop_all)
        return self._judge(epochs)

    async def _under_load(self) -> tuple[LocalProcessCluster, ClusterEpochs]:
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(Client.open(self.cluster_file, f"client-{index}"))
                       for index in range(len(AGENTS))]
            operator = await stack.enter_async_context(Client.open(self.cluster_file, operator_signer_id(OPERATOR)))
            with trio.fail_after(CONNECT_TIMEOUT_S):
                for client in (*clients, operator):
                    await client.wait_connected(timeout_s=CONNECT_TIMEOUT_S)
            async with trio.open_nursery() as load:
                stop = trio.Event()
                load.start_soon(self._load, load, clients, stop)
                await trio.sleep(WARM_UP_S)
                next_processes, epochs = await self._replace(operator, clients)
                await trio.sleep(AFTER_SWITCH_S)
                stop.set()
            return next_processes, epochs

    async def _load(self, nursery: trio.Nursery, clients: list[Client], stop: trio.Event) -> None:
        for _ in range(SUBMISSIONS_MAX):
            if stop.is_set():
                return
            action = self.stream.next()
            nursery.start_soon(self._submit, clients[AGENTS.index(action.agent)], action)
            await trio.sleep(self.gaps.draw(self.arrivals) / 1000)

    async def _submit(self, client: Client, action) -> None:
        submitted_s = trio.current_time()
        outcome = await client.submit(action.action, action.risk, timeout_ms=DEADLINES_MS[action.risk])
        self.operations.append(_Operation(outcome.request, submitted_s, outcome.certificate))

    async def _replace(self, operator: Client, clients: list[Client]) -> tuple[LocalProcessCluster, ClusterEpochs]:
        quarantine = await operator.submit(operator_document("quarantine", self.compromised, "approves everything"),
                                           Risk.LOW, timeout_ms=COMMAND_TIMEOUT_MS)
        if quarantine.certificate is None or not quarantine.allowed:
            raise ReplacementFailed(f"the quarantine was {quarantine.status}: {quarantine.reason}")
        self.story.append(f"replica {self.compromised} quarantined at seq {quarantine.certificate.seq}")
        next_file = await trio.to_thread.run_sync(self._write_next_file)
        seed = self.cluster_file.client_seed(operator_signer_id(OPERATOR))
        document = change_for_next_file(self.cluster_file, next_file, {OPERATOR: seed})
        switch_started_s = trio.current_time()
        change = await operator.submit(document, Risk.CRITICAL, timeout_ms=COMMAND_TIMEOUT_MS)
        if change.certificate is None or not change.allowed:
            raise ReplacementFailed(f"the configuration change was {change.status}: {change.reason}")
        epochs = append_epoch_certificate(next_file, change.certificate)
        activation = epochs.later[-1][0]
        self.story.append(f"epoch 0 -> 1: the change executed at seq {change.certificate.seq}, activation seq "
                          f"{activation}")
        await self._wait_retired()
        next_processes = LocalProcessCluster(next_file.path)
        if next_processes.start(self.compromised).already_running:
            raise ReplacementFailed(f"replica {self.compromised}'s old process is still running")
        await trio.to_thread.run_sync(next_processes.wait_listening, [self.compromised])
        for client in clients:
            client.follow(next_file)
        await self._wait_caught_up(next_file, activation)
        self.switch_s = (switch_started_s, trio.current_time())
        return next_processes, epochs

    def _write_next_file(self):
        """The next epoch's cluster file: the compromised id with a fresh key, address, database, honest policy."""
        directory = self.cluster_file.path.parent
        shutil.copy(self.cluster_file.path, directory / "genesis.toml")
        document = tomllib.loads(self.cluster_file.path.read_text())
        key = create_key_file(directory / "keys" / "replacement.key")
        port, metrics_port = free_loopback_ports(2)
        policy, options = HONEST_POLICY_SPECS[0]
        table = document["replicas"][self.compromised]
        assert table["id"] == self.compromised
        table.update(public_key=key.public_key.hex(), port=port, metrics=f"127.0.0.1:{metrics_port}",
                     key_file="keys/replacement.key", database="data/replacement.db", policy=policy)
        table.pop("policy_options", None)
        if options:
            table["policy_options"] = options
        document.update(genesis="genesis.toml", chain="chain.json")
        path = directory / "next.toml"
        path.write_text(tomli_w.dumps(document))
        return load_cluster_file(path)

    async def _wait_retired(self) -> None:
        genesis_processes = LocalProcessCluster(self.cluster_file.path)
        with trio.move_on_after(RETIRE_TIMEOUT_S):
            while genesis_processes.is_running(self.compromised):
                await trio.sleep(POLL_S)
        if genesis_processes.is_running(self.compromised):
            raise ReplacementFailed(f"replica {self.compromised} did not retire within {RETIRE_TIMEOUT_S:g} s")
        retired = "retired in epoch 1" in genesis_processes.log_path(self.compromised).read_text(errors="replace")
        if not retired:
            raise ReplacementFailed(f"replica {self.compromised}'s process ended without retiring")
        self.story.append(f"replica {self.compromised}'s process retired by itself")

    async def _wait_caught_up(self, next_file, activation: int) -> None:
        executed = 0
        with trio.move_on_after(CATCH_UP_TIMEOUT_S):
            while executed <= activation:
                statuses = await trio.to_thread.run_sync(cluster_status, next_file, 1.0)
                executed = statuses[self.compromised].last_executed_seq or 0
                await trio.sleep(POLL_S)
        if executed <= activation:
            raise ReplacementFailed(f"the fresh replica executed up to seq {executed}, not past the activation seq "
                                    f"{activation}, within {CATCH_UP_TIMEOUT_S:g} s")
        self.story.append(f"the fresh replica {self.compromised} caught up past seq {activation}")

    # ------------------------------------------------------------- judging

    def _judge(self, epochs: ClusterEpochs) -> CheckOutcome:
        chain = [(0, epochs.genesis), *epochs.later]
        activation = epochs.later[-1][0]
        certificates = [operation.certificate for operation in self.operations if operation.certificate]
        directory = self.cluster_file.path.parent
        honest = [r for r in range(self.replica_count) if r != self.compromised]
        stores = {r: self._stored(self.cluster_file.replica(r).database) for r in honest}
        stores[self.compromised] = self._stored(directory / "data" / "replacement.db")
        problems = [str(v) for v in check_all_epochs({r: tuple(s.log) for r, s in stores.items()}, chain,
                                                      certificates, signed={r: list(s.signed)
                                                                            for r, s in stores.items()})]
        longest = max((tuple(s.log) for s in stores.values()), key=len)
        finalized = {(entry.client_id, entry.request_number): entry.decision for entry in longest}
        problems += [f"certified verdict of {c.request.client_id} #{c.request.request_number} is not in the honest "
                     f"logs" for c in certificates if finalized.get(c.request.key) is not c.decision]
        new_epoch = [c for c in certificates if c.seq > activation]
        if not any(vote.replica_id == self.compromised for c in new_epoch for vote in c.votes):
            problems.append(f"no certified verdict of epoch 1 carries a vote of the fresh replica {self.compromised}")
        started_s, ended_s = self.switch_s
        refused = [o for o in self.operations if o.certificate is None]
        inside = [o for o in refused if started_s - max(DEADLINES_MS.values()) / 1000 <= o.submitted_s <= ended_s]
        problems += [f"request {o.request.client_id} #{o.request.request_number} refused outside the switch"
                     for o in refused if o not in inside]
        summary = (f"{'; '.join(self.story)}; {len(certificates)} verdicts certified ({len(new_epoch)} in epoch 1), "
                   f"{len(inside)} refused during the switch, {len(refused) - len(inside)} outside it; "
                   f"S1-S11 per epoch over {len(stores)} honest SQLite logs")
        if problems:
            return CheckOutcome(Validity.INVALID, summary, self.story + problems[:20])
        return CheckOutcome(Validity.VALID, summary, self.story)

    @staticmethod
    def _stored(database: Path):
        with SqliteStore(database) as store:
            return store.load()


async def replacement_check(seed: int, cluster_file: ClusterFile, compromised: int,
                            gaps: ArrivalGaps) -> CheckOutcome:
    """The replacement step as one of the real mission's checks, on a fresh cluster of its own (the mission's
    replicas and policies, as ``_mission_real.write_real_cluster`` writes them)."""
    return await _Replacement(seed, cluster_file, compromised, gaps).run()
