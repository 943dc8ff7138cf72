"""The Jepsen-like harness: histories, a linearizability checker, a nemesis, swarms and reports.

Today it drives the deterministic simulator (``bft.testing.SimCluster``);
``python -m harness sim --help`` shows how to run one seed or a swarm.
"""

from ._history import Event, EventType, History, HistoryError, Operation, build_history, history_from_cluster
from ._linearizability import (CheckResult, Validity, VerdictRegister, check_history, check_keys,
                               check_real_time_order, combine, search)
from ._nemesis import FAULT_KINDS, FaultEvent, Nemesis, plan_faults
from ._run_checks import CheckOutcome, check_run
from ._swarm import (HarnessCluster, LivenessOutcome, RunResult, RunSettings, SwarmSummary, run_simulation, run_swarm,
                     settings_for_seed)

__all__ = [
    "CheckOutcome", "CheckResult", "Event", "EventType", "FAULT_KINDS", "FaultEvent", "HarnessCluster", "History",
    "HistoryError", "LivenessOutcome", "Nemesis", "Operation", "RunResult", "RunSettings", "SwarmSummary",
    "Validity", "VerdictRegister", "build_history", "check_history", "check_keys", "check_real_time_order",
    "check_run", "combine", "history_from_cluster", "plan_faults", "run_simulation", "run_swarm", "search",
    "settings_for_seed",
]
