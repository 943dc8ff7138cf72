"""The mission's isolation episode: the cluster's own detector finds the approve-everything replica.

The vote statistics of ``_report`` are the harness looking from outside.  This
episode asks the cluster itself: with the deployer's automatic rule enabled
(``auto_quarantine_suspects``), every honest replica must flag and quarantine
the compromised replica from the agreed vote history, at the same log position,
while verdicts stay right before and after.  No faults run here; the other
episodes cover them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import TextIO

from bft.core import AccountabilityOptions

from ._history import history_from_cluster
from ._linearizability import Validity
from ._mission_plan import REPLICA_COUNTS, compromised_replica
from ._mission_results import check_honest_majority
from ._mission_workload import AGENTS, ActionStream, mission_policies
from ._run_checks import CheckOutcome, InvariantMonitor, check_run
from ._swarm import HarnessCluster

REQUESTS_MAX = 400
REQUESTS_AFTER_QUARANTINE = 20
REQUEST_TIME_MAX_MS = 20_000
# The product's detection defaults, with the deployer's automatic rule switched on.
OPTIONS = AccountabilityOptions(auto_quarantine_suspects=True)


@dataclass(frozen=True, slots=True)
class IsolationResult:
    validity: Validity
    summary: str
    quarantine_position: int | None
    requests: int


def quarantines(cluster: HarnessCluster, replica_id: int) -> list[tuple[int, dict]]:
    """(log position, event) of every quarantine the replica's verdict log records."""
    return [(entry.position, event) for entry in cluster.finalized[replica_id] if entry.events
            for event in json.loads(entry.events) if event["event"] == "quarantined"]


def run_isolation(seed: int, replica_count: int, compromised: int) -> IsolationResult:
    """Submit the mission's action stream until every honest replica quarantined someone (bounded)."""
    policies = mission_policies(replica_count, compromised)
    cluster = HarnessCluster(replica_count, seed=random.Random(f"mission-isolation/{seed}").randrange(2**32),
                             policies=policies, client_ids=AGENTS, config_options={"accountability": OPTIONS})
    honest = [replica_id for replica_id in range(replica_count) if replica_id != compromised]
    stream = ActionStream(random.Random(f"mission-isolation-actions/{seed}"))
    monitor = InvariantMonitor(cluster)
    requests = 0
    while requests < REQUESTS_MAX and not all(quarantines(cluster, r) for r in honest):
        action = stream.next()
        cluster.submit(action.agent, action.action, action.risk)
        requests += 1
        cluster.run_until(cluster.all_done, REQUEST_TIME_MAX_MS)
    for _ in range(REQUESTS_AFTER_QUARANTINE):  # Verdicts after the isolation must be right too.
        action = stream.next()
        cluster.submit(action.agent, action.action, action.risk)
        cluster.run_until(cluster.all_done, REQUEST_TIME_MAX_MS)
    monitor.check({compromised})
    history = history_from_cluster(cluster)
    checks = check_run(history, cluster, {compromised}, monitor)
    checks["honest_majority"] = check_honest_majority(history, policies, compromised)
    broken = [f"{name}: {outcome.summary}" for name, outcome in checks.items()
              if outcome.validity is Validity.INVALID]
    if broken:
        return IsolationResult(Validity.INVALID, "; ".join(broken), None, requests)

    return _judge(cluster, honest, compromised, requests)


def _judge(cluster: HarnessCluster, honest: list[int], compromised: int, requests: int) -> IsolationResult:
    found = {replica_id: quarantines(cluster, replica_id) for replica_id in honest}
    if not all(found.values()):
        missing = [r for r, events in found.items() if not events]
        return IsolationResult(Validity.INVALID, f"after {requests} requests replicas {missing} have not "
                                                 "quarantined anyone", None, requests)
    first = found[honest[0]]
    if any(events != first for events in found.values()):
        return IsolationResult(Validity.INVALID, "honest replicas logged different quarantines", None, requests)
    quarantined = sorted({event["replica"] for _, event in first})
    if quarantined != [compromised]:
        return IsolationResult(Validity.INVALID, f"the cluster quarantined {quarantined}, the approve-everything "
                                                 f"replica is {compromised}", None, requests)
    position = first[0][0]
    return IsolationResult(Validity.VALID, f"every honest replica quarantined replica {compromised} at log "
                                           f"position {position} ({first[0][1]['detail']}), after {requests} "
                                           "requests; verdicts checked before and after", position, requests)


def isolation_check(seed: int, replica_count: int, compromised: int) -> CheckOutcome:
    """The episode as one of the mission's checks."""
    result = run_isolation(seed, replica_count, compromised)
    return CheckOutcome(result.validity, result.summary)


def main_isolation(arguments, out: TextIO) -> int:
    """``python -m harness scenario isolation [--replicas 5|7] [--seed S]``; non-zero unless every size is valid."""
    results = []
    for replica_count in (arguments.replicas,) if arguments.replicas else REPLICA_COUNTS:
        result = run_isolation(arguments.seed, replica_count, compromised_replica(arguments.seed, replica_count))
        print(f"n={replica_count}: {result.validity.value}: {result.summary}", file=out)
        results.append(result)
    if all(result.validity is Validity.VALID for result in results):
        return 0
    print(f"reproduce: python -m harness scenario isolation --seed {arguments.seed}", file=out)
    return 1
