"""Reconfiguration in the simulator: a cluster goes from n=4 to 7 and back to 4, replaces one replica and rotates
one replica's and one client's key, every change ordered as a ``config-change`` command, under a steady load.

``run_reconfiguration(seed)`` returns findings, as the mutant hunt's scenarios do: invariant violations of
``specs.invariants`` (judged per epoch, with S11), verdicts that did not finalize, changes that did not execute or
activate.  Nothing in it looks for a particular bug; the unmutated core passes it (``tests/test_reconfiguration_sim.py``).

What the simulation does around the core, as an operator would: it signs each change with the operator key,
starts each joining replica with the chain of configurations after the genesis (the epoch certificates it would
be given), gives the rotated replica its next key before the change (``Replica.stage_next_key``) and tells the
clients each new epoch (``ClientCore.learn_epoch``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from bft.core import ClusterConfig, Decision, Limits, Replica, Risk
from bft.core._reconfiguration import change_document, sign_document
from bft.testing import NetworkFaults, SimCluster
from bft.testing._sim import keypair_for_test
from specs.invariants import SimMonitor

OPERATOR = "operator:alice"
CLIENT = "client-0"
# A small window so that an activation seq (a whole window above the change) comes soon.
LIMITS = Limits(max_batch_requests=4, max_in_flight_batches=4, log_window=8, checkpoint_interval=4,
                state_transfer_chunk_entries=16, state_transfer_wait_ticks=3, state_transfer_retry_ticks=10)
PHASE_MS_MAX = 30_000
LOAD_EVERY_MS = 20
LOAD_BURST = 2  # Requests per burst: enough to keep batches in flight across every activation.
LOAD_DEADLINE_MS = 5_000
CHANGE_ATTEMPTS = 3
LOAD_AFTER_SWITCH_MS = 300
PROBES_MAX = 3


def _key(name: str):
    return keypair_for_test(0, name)


@dataclass
class Reconfiguration:
    """One simulated cluster, its chain of configurations and what went wrong so far."""

    seed: int
    faults: NetworkFaults | None = None
    cluster: SimCluster = field(init=False)
    monitor: SimMonitor = field(init=False)
    chain: list[tuple[int, ClusterConfig]] = field(init=False)
    findings: list[str] = field(default_factory=list)
    load_submitted: int = 0
    # (from, to) in simulated ms: from a change's submission to the end of its activation.  Refusals are
    # expected only for requests submitted within one (the issue: "refusals only during the epoch switch").
    switch_windows: list[tuple[int, int]] = field(default_factory=list)
    _switch_started_ms: int | None = None

    def __post_init__(self) -> None:
        self.cluster = SimCluster(4, seed=self.seed, limits=LIMITS, client_ids=(CLIENT, OPERATOR), faults=self.faults,
                                  config_options={"operator_keys": {"alice": _key(OPERATOR).public_key}})
        self.monitor = SimMonitor(self.cluster, correct=set(range(4)))
        self.chain = [(0, self.cluster.config)]

    @property
    def config(self) -> ClusterConfig:
        return self.chain[-1][1]

    # ------------------------------------------------------------- running under load

    def run_until(self, condition: Callable[[], bool], what: str, load: bool = True) -> bool:
        """Run, submitting ``LOAD_BURST`` requests every ``LOAD_EVERY_MS`` (with ``load``), until ``condition``
        or the phase limit."""
        cluster = self.cluster
        end = cluster.now_ms + PHASE_MS_MAX
        while not condition():
            if cluster.now_ms >= end:
                self.findings.append(f"progress: {what} did not happen within {PHASE_MS_MAX} ms")
                return False
            for _ in range(LOAD_BURST if load else 0):
                cluster.submit(CLIENT, {"tool": "read", "n": self.load_submitted}, Risk.LOW,
                               deadline_ms=cluster.now_ms + LOAD_DEADLINE_MS)
                self.load_submitted += 1
            cluster.run(LOAD_EVERY_MS)
        return True

    def check(self, context: str) -> None:
        self.findings += [f"{v.invariant}: {context}: {v.message}" for v in self.monitor.check()]

    def settle(self, context: str) -> None:
        """Some more load in the epoch now active, then let it finish: every request must end with a
        certificate or a refusal (refusals are counted)."""
        if self._switch_started_ms is not None:
            # The switch ends once the new epoch orders again: a request submitted now is certified (a probe
            # refused on a lossy network, as the simulated client never retries, is followed by another).
            cluster = self.cluster
            for _ in range(PROBES_MAX):
                probe = cluster.operations[cluster.submit(CLIENT, {"tool": "probe"}, Risk.LOW,
                                                          deadline_ms=cluster.now_ms + LOAD_DEADLINE_MS).key]
                self.run_until(lambda: probe.certificate is not None or probe.refused,
                               f"{context}: the new epoch ordering")
                if probe.certificate is not None:
                    break
            self.switch_windows.append((self._switch_started_ms, cluster.now_ms))
            self._switch_started_ms = None
        loaded_until = self.cluster.now_ms + LOAD_AFTER_SWITCH_MS
        self.run_until(lambda: self.cluster.now_ms >= loaded_until, f"{context}: load")
        self.run_until(lambda: all(r.certificate or r.refused for r in self.cluster.operations.values()),
                       f"{context}: every request finishing", load=False)
        self.check(context)

    # ------------------------------------------------------------- changes

    def change(self, replica_keys: tuple[bytes, ...], client_keys: dict[str, bytes] | None = None) -> int:
        """Order a change to ``replica_keys`` (and clients); return its activation seq (0 if it failed).

        A change needs every replica's ALLOW (CRITICAL risk); on a lossy network one vote may miss the batch,
        and the operator then submits it again, at most ``CHANGE_ATTEMPTS`` times."""
        current, cluster = self.config, self.cluster
        clients = client_keys or {c: current.client_keys[c] for c in current.ordinary_client_ids}
        new = ClusterConfig.create(current.cluster_id, replica_keys, {**clients, OPERATOR: _key(OPERATOR).public_key},
                                   limits=current.limits, operator_keys=dict(current.operator_keys))
        document = sign_document(current.cluster_id, change_document(new, len(self.chain), current),
                                 {"alice": _key(OPERATOR).seed})
        self._switch_started_ms = cluster.now_ms
        for attempt in range(1, CHANGE_ATTEMPTS + 1):
            request = cluster.submit(OPERATOR, document, Risk.CRITICAL)
            if not self.run_until(lambda: cluster.operations[request.key].certificate is not None,
                                  f"epoch {len(self.chain)}'s change executing"):
                return 0
            reason = cluster.operations[request.key].certificate.reason
            if cluster.verdict(request) is Decision.ALLOW:
                break
            if attempt == CHANGE_ATTEMPTS or not reason.startswith("insufficient approvals"):
                self.findings.append(f"epoch {len(self.chain)}'s change was denied: {reason}")
                return 0
        members = [r for r in self.monitor.correct if r < len(cluster.replicas)]
        epochs = max((cluster.replicas[r].execution.accountability.epochs.epochs for r in members), key=len)
        activation = epochs[len(self.chain)].starts_after
        self.chain.append((activation, new))
        for client in cluster.clients.values():
            client.learn_epoch(activation, new)
        return activation

    def join(self, replica_id: int, name: str) -> None:
        """Start a replica of the newest epoch from the chain; it fetches the state by state transfer."""
        key = _key(name)
        replica = Replica(self.chain[0][1], replica_id, key.seed, later_epochs=tuple(self.chain[1:]))
        self.cluster.put_replica(replica, key.seed)
        self.monitor.replica_joined(replica_id)

    def activated(self, members) -> bool:
        """Every member of the newest epoch works in it.  (A removed replica retires when it reaches the
        activation seq; one that lagged behind it may never get there, as the new epoch no longer answers it,
        and stays harmless: nobody counts what it signs, S11.)"""
        replicas, epoch = self.cluster.replicas, len(self.chain) - 1
        return all(replicas[r].epochs.number == epoch and replicas[r].last_executed >= self.chain[-1][0]
                   for r in members)


def run_reconfiguration(seed: int = 0, faults: NetworkFaults | None = None) -> list[str]:
    """n=4 -> 7 -> 4, a replacement, a replica and a client key rotation; the findings (none when correct)."""
    run = Reconfiguration(seed, faults)
    reconfigure_all(run)
    return run.findings


def reconfigure_all(run: Reconfiguration) -> None:
    """The four changes of ``run_reconfiguration`` on ``run``, each followed by load that must finish."""
    genesis_keys = run.config.replica_keys
    run.settle("genesis")
    grown = genesis_keys + tuple(_key(f"joiner-{i}").public_key for i in (4, 5, 6))
    if run.change(grown):
        for replica_id in (4, 5, 6):
            run.join(replica_id, f"joiner-{replica_id}")
        run.run_until(lambda: run.activated(range(7)), "growing to n=7")
        run.settle("n=7")
    if run.change(grown[:4]):
        run.run_until(lambda: run.activated(range(4)), "shrinking to n=4")
        run.settle("back to n=4")
    replaced = grown[:2] + (_key("replacement-2").public_key,) + grown[3:4]
    if run.change(replaced):
        run.run_until(lambda: run.activated((0, 1, 3)), "replicas 0, 1 and 3 activating")
        run.join(2, "replacement-2")
        run.run_until(lambda: run.activated(range(4)), "the replacement of replica 2 catching up")
        run.settle("replica 2 replaced")
    rotated = replaced[:1] + (_key("rotated-1").public_key,) + replaced[2:]
    run.cluster.replicas[1].stage_next_key(_key("rotated-1").seed)
    new_client = _key("client-0-rotated")
    if run.change(rotated, {CLIENT: new_client.public_key}):
        run.run_until(lambda: run.activated(range(4)), "rotating replica 1's and client-0's keys")
        run.cluster.clients[CLIENT].rotate_key(new_client.seed)  # Old-key requests still pending are refused.
        run.settle("keys rotated")
