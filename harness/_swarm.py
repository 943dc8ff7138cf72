"""One simulated run from a seed, and swarms of them, VOPR-style.

A run is reproduced exactly by its seed: the seed picks the cluster size (unless
given), the fault kinds (swarm testing: each run enables a random subset, so
faults that mask each other are also tried apart), the fault schedule, the
replicas' policies and the client workload, and seeds the simulator.

Phases:

1. Safety: the nemesis injects faults while clients submit requests (and
   sometimes re-send old ones, recorded as separate operations on the same key).
2. Liveness: every fault is healed except Byzantine replicas that are not the
   primary, so at most f faulty replicas remain.  New requests must then all
   finalize within ``liveness_bound_ms``; stalls are reported apart from safety.
3. Quiescence: the run continues until every request is answered or past its
   deadline, then the checkers run.

Checks: the specification's invariants (``specs.invariants``), per-key
linearizability and the cross-key real-time order of the verdict log,
durability of certified verdicts, and that every verdict a client accepted
carries a certificate that verifies.
"""

from __future__ import annotations

import random
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from bft.core import RemoteProtocolError, Reply, Request, Risk, VerdictCertificate, Verifier
from bft.policy import PolicyDecision
from bft.testing import SimCluster

from ._history import History, history_from_cluster
from ._linearizability import Validity, combine
from ._nemesis import FAULT_KINDS, FaultEvent, Nemesis, plan_faults
from ._run_checks import MESSAGES_SHOWN_MAX, CheckOutcome, InvariantMonitor, check_run

REPLICA_COUNTS = (4, 5, 7, 10)
CLIENT_IDS = ("client-0", "client-1", "client-2")
# Tools and how often clients ask for them.  Correct replicas deny the last two or three often
# enough (about 40% of requests) that a replica approving everything stands out in the vote statistics.
TOOL_WEIGHTS = (("read_file", 3), ("search_web", 2), ("send_email", 2), ("transfer_funds", 1), ("run_shell", 2),
                ("delete_repository", 3), ("exfiltrate_secrets", 3))
RISK_WEIGHTS = ((Risk.LOW, 4), (Risk.MEDIUM, 3), (Risk.HIGH, 2), (Risk.CRITICAL, 1))
LIVENESS_POLICY = ("the liveness phase heals every fault except Byzantine replicas that are not the primary "
                   "(at most f faulty remain), then requires every new request to finalize within the bound")


@dataclass(frozen=True)
class RunSettings:
    seed: int
    replica_count: int
    request_count: int
    liveness_request_count: int
    fault_kinds: tuple[str, ...]
    safety_phase_ms: int = 3_000
    liveness_bound_ms: int | None = None  # None: derived from the cluster's view-change timeouts.
    client_retry_ms: int = 1_000
    retry_probability: float = 0.15
    command_options: tuple[str, ...] = ()

    def reproduce_command(self) -> str:
        return " ".join(("python -m harness sim --seed", str(self.seed)) + self.command_options)

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "replica_count": self.replica_count, "request_count": self.request_count,
                "liveness_request_count": self.liveness_request_count, "fault_kinds": list(self.fault_kinds),
                "safety_phase_ms": self.safety_phase_ms, "liveness_bound_ms": self.liveness_bound_ms}


def settings_for_seed(seed: int, replica_count: int | None = None, request_count: int | None = None) -> RunSettings:
    """Everything a run depends on, drawn from ``seed`` except what the caller fixes."""
    chooser = random.Random(f"harness-settings/{seed}")
    chosen_count = replica_count or chooser.choice(REPLICA_COUNTS)
    kinds = tuple(kind for kind in FAULT_KINDS if chooser.random() < 0.5)
    requests = request_count if request_count is not None else chooser.randint(10, 30)
    options = ((f"--replicas {replica_count}",) if replica_count else ()) + \
              ((f"--requests {request_count}",) if request_count is not None else ())
    assert chosen_count >= 1 and requests >= 0
    return RunSettings(seed, chosen_count, requests, max(3, requests // 4), kinds,
                       command_options=tuple(" ".join(options).split()))


# ----------------------------------------------------------------- cluster, policies and retries


class ToolPolicy:
    """Denies a fixed set of tools.  Replicas get different sets, so votes disagree at times."""

    def __init__(self, denied_tools: frozenset[str]) -> None:
        self.denied_tools = denied_tools
        self.name = "deny:" + ",".join(sorted(denied_tools))

    def evaluate(self, action, context) -> PolicyDecision:
        tool = action.get("tool")
        if tool in self.denied_tools:
            return PolicyDecision.deny(f"{tool} is not allowed")
        return PolicyDecision.allow(f"{tool} is allowed")


def policies_for(chooser: random.Random, replica_count: int) -> dict[int, ToolPolicy]:
    policies = {}
    for replica_id in range(replica_count):
        denied = {"exfiltrate_secrets"}
        denied |= {"delete_repository"} if chooser.random() < 0.5 else set()
        denied |= {"run_shell"} if chooser.random() < 0.25 else set()
        policies[replica_id] = ToolPolicy(frozenset(denied))
    return policies


@dataclass
class RetryRecord:
    """A client re-sending an old request, observed as an operation of its own (``ObservedOperation``)."""

    request: Request
    invoked_ms: int
    certificate: VerdictCertificate | None = None
    completed_ms: int | None = None
    refused: bool = False
    replies: dict[int, Reply] = field(default_factory=dict)


class HarnessCluster(SimCluster):
    """``SimCluster`` plus retry operations: each collects its own f+1 matching verified replies."""

    def __init__(self, *arguments, **options) -> None:
        super().__init__(*arguments, **options)
        self.retries: list[RetryRecord] = []
        self._open_retries: dict[tuple[str, int], list[RetryRecord]] = {}
        self._reply_verifier = Verifier(self.config.cluster_id, self.config.replica_keys, dict(self.config.client_keys))

    def retry(self, request: Request) -> RetryRecord:
        record = RetryRecord(request, self.now_ms)
        self.retries.append(record)
        self._open_retries.setdefault(request.key, []).append(record)
        self.resend(request)
        return record

    def _deliver_to_client(self, client_id: str, message) -> None:
        super()._deliver_to_client(client_id, message)
        if isinstance(message, Reply):
            for record in self._open_retries.get((client_id, message.request_number), ()):
                self._observe_retry_reply(record, message)
            still_open = {key: [r for r in records if r.certificate is None]
                          for key, records in self._open_retries.items()}
            self._open_retries = {key: records for key, records in still_open.items() if records}

    def _observe_retry_reply(self, record: RetryRecord, reply: Reply) -> None:
        if record.certificate is not None or reply.replica_id in record.replies:
            return
        try:
            self._reply_verifier.verify(reply)
        except RemoteProtocolError:
            return  # A forged reply is what a client must ignore.
        record.replies[reply.replica_id] = reply
        matching = tuple(r for _, r in sorted(record.replies.items()) if r.outcome() == reply.outcome())
        if len(matching) < self.config.reply_quorum:
            return
        certificate = VerdictCertificate(record.request, matching)
        if certificate.is_valid(self.config):
            record.certificate, record.completed_ms = certificate, self.now_ms

    def observed_operations(self) -> list[tuple[str, Any]]:
        originals = [(record.request.client_id, record) for record in self.operations.values()]
        return originals + [(f"{record.request.client_id}/retry", record) for record in self.retries]


# ----------------------------------------------------------------- results


@dataclass
class LivenessOutcome:
    status: str  # "ok" or "stalled"
    submitted: int
    finalized: int
    bound_ms: int
    stalled: list[str] = field(default_factory=list)
    diagnosis: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "submitted": self.submitted, "finalized": self.finalized,
                "bound_ms": self.bound_ms, "stalled": self.stalled, "diagnosis": self.diagnosis, "notes": self.notes}


@dataclass
class RunResult:
    settings: RunSettings
    history: History
    faults: list[FaultEvent]
    checks: dict[str, CheckOutcome]
    liveness: LivenessOutcome
    byzantine: set[int]
    start_ms: int
    end_ms: int
    wall_seconds: float
    cluster: SimCluster | None = None  # Kept for reports and tests; not serialized.
    liveness_start_ms: int = 0

    @property
    def validity(self) -> Validity:
        return combine(check.validity for check in self.checks.values())

    def to_json(self) -> dict[str, Any]:
        return {"validity": self.validity.value, "liveness": self.liveness.to_json(),
                "settings": self.settings.to_json(), "reproduce": self.settings.reproduce_command(),
                "checks": {name: check.to_json() for name, check in self.checks.items()},
                "faults": [event.to_json() for event in self.faults], "byzantine_replicas": sorted(self.byzantine),
                "start_ms": self.start_ms, "liveness_start_ms": self.liveness_start_ms, "end_ms": self.end_ms,
                "operations": len(self.history.operations()), "wall_seconds": round(self.wall_seconds, 3)}


# ----------------------------------------------------------------- the run


class _Workload:
    """Client requests drawn from the seed: tool, risk, deadline, and occasional retries."""

    def __init__(self, chooser: random.Random, cluster: HarnessCluster, retry_probability: float) -> None:
        self.chooser = chooser
        self.cluster = cluster
        self.retry_probability = retry_probability
        self.submitted: list[Request] = []

    def submit(self, deadline_ms: int | None = None) -> Request:
        chooser = self.chooser
        risks, weights = zip(*RISK_WEIGHTS)
        risk = chooser.choices(risks, weights)[0]
        tools, tool_weights = zip(*TOOL_WEIGHTS)
        action = {"tool": chooser.choices(tools, tool_weights)[0], "target": f"t{chooser.randrange(100)}",
                  "n": len(self.submitted)}
        if deadline_ms is None:
            tight = chooser.random() < 0.15  # Some deadlines are tight, to exercise expiry.
            deadline_ms = self.cluster.now_ms + (chooser.randint(30, 300) if tight else chooser.randint(1_500, 4_000))
        request = self.cluster.submit(chooser.choice(CLIENT_IDS), action, risk, deadline_ms)
        self.submitted.append(request)
        return request

    def maybe_retry(self) -> None:
        if self.submitted and self.chooser.random() < self.retry_probability:
            self.cluster.retry(self.chooser.choice(self.submitted))


def run_simulation(settings: RunSettings) -> RunResult:
    """Run one seed through the three phases and check it.

    An exception inside the run (a core assertion, say) is itself a finding:
    it becomes an invalid result carrying the traceback, so a swarm goes on.
    """
    started = time.perf_counter()
    chooser = random.Random(f"harness-run/{settings.seed}")
    policies = policies_for(chooser, settings.replica_count)
    cluster = HarnessCluster(settings.replica_count, seed=chooser.randrange(2**32), policies=policies,
                             client_ids=CLIENT_IDS)
    faults = plan_faults(chooser, settings.replica_count, cluster.config.faulty_max, frozenset(settings.fault_kinds),
                         settings.safety_phase_ms, hasattr(cluster, "restart"))
    nemesis = Nemesis(cluster, faults, chooser.randrange(2**32), policies)
    start_ms = cluster.now_ms
    phases = _Phases(settings, cluster, nemesis, _Workload(chooser, cluster, settings.retry_probability), start_ms)
    try:
        liveness, history, checks = phases.run()
    except Exception as error:  # Reported as the run's failure, with the traceback; never swallowed silently.
        liveness = LivenessOutcome("not-run", 0, 0, liveness_bound_ms(settings, cluster),
                                   notes=["the run raised before or during the liveness phase"])
        checks = {"run": CheckOutcome(Validity.INVALID, f"the run raised {type(error).__name__}: {error}",
                                      traceback.format_exc().splitlines()[-MESSAGES_SHOWN_MAX:])}
        history = history_from_cluster(cluster)
    return RunResult(settings, history, faults, checks, liveness, nemesis.byzantine_replicas, start_ms,
                     cluster.now_ms, time.perf_counter() - started, cluster, phases.liveness_start_ms or cluster.now_ms)


@dataclass
class _Phases:
    settings: RunSettings
    cluster: HarnessCluster
    nemesis: Nemesis
    workload: _Workload
    start_ms: int
    liveness_start_ms: int | None = None

    def run(self) -> tuple[LivenessOutcome, History, dict[str, CheckOutcome]]:
        settings, cluster, nemesis = self.settings, self.cluster, self.nemesis
        monitor = InvariantMonitor(cluster)
        _safety_phase(settings, cluster, nemesis, self.workload, self.start_ms)
        assert len(nemesis.faulty_replicas) <= cluster.config.faulty_max, nemesis.faulty_replicas
        monitor.check(nemesis.byzantine_replicas)
        self.liveness_start_ms = cluster.now_ms
        liveness = _liveness_phase(settings, cluster, nemesis, self.workload, self.start_ms)
        monitor.check(nemesis.byzantine_replicas)
        _quiesce(cluster)
        monitor.check(nemesis.byzantine_replicas)
        history = history_from_cluster(cluster)
        return liveness, history, check_run(history, cluster, nemesis.byzantine_replicas, monitor)


def _safety_phase(settings: RunSettings, cluster: HarnessCluster, nemesis: Nemesis, workload: _Workload,
                  start_ms: int) -> None:
    chooser = workload.chooser
    # Submission times fall on ticks, where the loop below looks for them.
    due = sorted(chooser.randrange(0, settings.safety_phase_ms, cluster.tick_ms) for _ in range(settings.request_count))
    while cluster.now_ms - start_ms < settings.safety_phase_ms:
        elapsed = cluster.now_ms - start_ms
        nemesis.advance(elapsed)
        while due and due[0] <= elapsed:
            due.pop(0)
            workload.submit()
            workload.maybe_retry()
        cluster.run(cluster.tick_ms)
    assert not due, "every safety-phase request is submitted within the phase"


def liveness_bound_ms(settings: RunSettings, cluster: SimCluster) -> int:
    """How long healed requests may take: f+2 of the longest view-change timeouts.

    After healing, up to f views in a row may have a faulty primary (a
    Byzantine backup's turn comes too), each costing at most one maximal
    timeout; one more covers the timer already running, one the final view's work.
    """
    if settings.liveness_bound_ms is not None:
        return settings.liveness_bound_ms
    return default_liveness_bound_ms(cluster)


def default_liveness_bound_ms(cluster: SimCluster) -> int:
    """(f+2) maximal view-change timeouts; ``liveness_bound_ms`` explains the count."""
    limits = cluster.config.limits
    return (cluster.config.faulty_max + 2) * limits.view_change_timeout_ticks_max * cluster.tick_ms


def _liveness_phase(settings: RunSettings, cluster: HarnessCluster, nemesis: Nemesis, workload: _Workload,
                    start_ms: int) -> LivenessOutcome:
    """Heal, submit fresh requests, and require each to finalize within the bound."""
    notes = list(nemesis.heal_for_liveness(cluster.now_ms - start_ms))
    bound_ms = liveness_bound_ms(settings, cluster)
    deadline = cluster.now_ms + bound_ms + 2_000
    requests = []
    for _ in range(settings.liveness_request_count):
        requests.append(workload.submit(deadline_ms=deadline))
        cluster.run(50)
    records = [cluster.operations[request.key] for request in requests]
    bound_end = cluster.now_ms + bound_ms
    while cluster.now_ms < bound_end and not all(record.certificate for record in records):
        cluster.run_until(lambda: all(record.certificate for record in records),
                          max_ms=min(settings.client_retry_ms, bound_end - cluster.now_ms))
        for record in records:
            if record.certificate is None:
                cluster.resend(record.request)  # A client re-sends what is unanswered, as real clients do.
    stalled = [record for record in records if record.certificate is None]
    return LivenessOutcome("stalled" if stalled else "ok", len(records), len(records) - len(stalled),
                           bound_ms,
                           [f"{r.request.client_id}#{r.request.request_number}" for r in stalled],
                           _stall_diagnosis(cluster, nemesis) if stalled else [], notes)


def _stall_diagnosis(cluster: HarnessCluster, nemesis: Nemesis) -> list[str]:
    """Where each replica stands, plus the view spread, which is the usual story of a stall."""
    lines = [f"replica {r.replica_id}: view {r.view}"
             + ("" if getattr(r, "view_active", True) else " (changing view)")
             + f", last executed seq {r.last_executed}"
             + (" (crashed)" if r.replica_id in cluster.crashed else "")
             + (" (Byzantine)" if r.replica_id in nemesis.byzantine_replicas else "") for r in cluster.replicas]
    views: dict[int, int] = {}
    for replica in cluster.replicas:
        views[replica.view] = views.get(replica.view, 0) + 1
    spread = ", ".join(f"view {view}: {count}" for view, count in sorted(views.items()))
    active = sum(1 for r in cluster.replicas if getattr(r, "view_active", True))
    lines.append(f"replicas per view: {spread}; {active} in an active view; a view needs {cluster.config.quorum}")
    return lines


def _quiesce(cluster: HarnessCluster) -> None:
    """Run until every operation is answered or past its deadline (all deadlines are finite)."""
    latest_deadline = max((record.request.deadline_ms for record in cluster.operations.values()), default=0)
    limit_ms = max(0, latest_deadline - cluster.now_ms) + 2 * cluster.tick_ms + 500
    # A retry of a request that expired unordered never gets an answer; it ends as info at its deadline.
    cluster.run_until(lambda: cluster.all_done() and all(r.certificate or r.request.deadline_ms < cluster.now_ms
                                                         for r in cluster.retries), max_ms=limit_ms)
    cluster.run(500)  # Let the last replies and commits drain before reading the logs.


# ----------------------------------------------------------------- checks


# ----------------------------------------------------------------- swarms


@dataclass
class SwarmSummary:
    results: list[RunResult]
    wall_seconds: float

    def count(self, predicate: Callable[[RunResult], bool]) -> int:
        return sum(1 for result in self.results if predicate(result))

    def coverage(self) -> dict[str, int]:
        """How many runs really exercised each fault kind (started at least once)."""
        from ._nemesis import byzantine_strategy_names
        names = [kind for kind in FAULT_KINDS if kind != "byzantine"]
        names += [f"byzantine:{name}" for name in byzantine_strategy_names()]
        covered = {name: 0 for name in names}
        for result in self.results:
            for name in {event.coverage_name for event in result.faults if event.applied_start_ms is not None}:
                covered[name] = covered.get(name, 0) + 1
        return covered


def run_swarm(seeds: list[int], replica_count: int | None = None, request_count: int | None = None,
              on_result: Callable[[RunResult], None] | None = None, progress: bool = True) -> SwarmSummary:
    started = time.perf_counter()
    results = []
    iterator = seeds
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(seeds, unit="run", dynamic_ncols=True)
        iterator = bar
    for seed in iterator:
        result = run_simulation(settings_for_seed(seed, replica_count, request_count))
        if on_result is not None:
            on_result(result)
        result.cluster = None  # Release the simulation; the history and checks hold what reports need.
        results.append(result)
        if bar is not None:
            bad = sum(1 for r in results if r.validity is not Validity.VALID)
            stalled = sum(1 for r in results if r.liveness.status != "ok")
            bar.set_postfix(invalid_or_unknown=bad, stalled=stalled)
    if bar is not None:
        bar.close()
    return SwarmSummary(results, time.perf_counter() - started)
