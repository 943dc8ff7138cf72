"""The mutant hunt: run the harness's own checkers against each planted bug and report what caught it.

Every mutant in ``_mutants.MUTANTS`` has a hunt plan, a generic harness run
(nothing in it checks for that mutant in particular):

- ``SwarmPlan``: the simulation swarm exactly as ``python -m harness sim``
  runs it (random faults and Byzantine strategies from the seed, then the
  invariant, linearizability, durability, certificate and liveness
  checkers), over seeds 0, 1, ... up to a bound; the first seed whose run is
  not valid and live catches the mutant.
- ``ModelCheckPlan``: the small-scope model checker (``_modelcheck``) with
  given bounds.  Where a bug needs a Byzantine behaviour the swarm's
  strategies do not have (a backup proposing, a new primary lying in its
  NEW-VIEW, a primary forging vote sets) or a crash at a precise point, the
  plan is a targeted scenario: one adversary from the checker's menu and one
  kind of deviation.
- ``ScenarioPlan``: targeted simulator schedules (``_hunt_scenarios``) that
  steer the cluster into a path the swarm reaches rarely (a replica fetching
  state from a lying peer), then run the invariant checker.

``CROSS_CHECKS`` names a second, different plan for the classic PBFT bugs of
issue 18 that a second checker catches too; the self-test runs those as well.

A hunt is believable only if the unmutated core passes the very same runs,
so ``baseline`` re-runs a plan's runs up to the catching point without the
mutant.  ``python -m harness mutants`` prints the table; ``--name M --seed S``
replays one swarm run under a mutant.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import TextIO

from ._hunt_scenarios import (BUNDLE_SCENARIOS, GOLDEN_NORMAL_CASE, GOLDEN_VIEW_CHANGE, PREPARE_QUORUM_SCENARIOS,
                              RECONFIGURATION_SCENARIOS, STATE_TRANSFER_SCENARIOS, VIEW_CHANGE_SCENARIOS,
                              run_scenario)
from ._linearizability import Validity
from ._modelcheck import MENU, ModelCheckResult, ModelCheckSettings, run_model_check
from ._mutants import MUTANTS
from ._swarm import RunResult, run_simulation, settings_for_seed

SEEDS_MAX = 10_000


@dataclass(frozen=True)
class SwarmPlan:
    replica_count: int
    request_count: int
    seeds_max: int

    def describe(self) -> str:
        return f"swarm, n={self.replica_count}, {self.request_count} requests, seeds 0..{self.seeds_max - 1}"


@dataclass(frozen=True)
class ModelCheckPlan:
    settings: ModelCheckSettings

    def describe(self) -> str:
        settings = self.settings
        kinds = [kind for kind, on in (("reorders", settings.reorders), ("timeouts", settings.time_steps_max),
                                      ("crashes", settings.crashes_max)) if on]
        adversaries = "every adversary" if set(settings.adversaries) == set(MENU) else \
            f"adversary {', '.join(settings.adversaries)}"
        return (f"model check, {adversaries}, {settings.deviations} deviation(s) "
                f"({', '.join(kinds) or 'none'}), at most {settings.max_states} states")

    def command_flags(self) -> str:
        settings = self.settings
        flags = [f"--depth {settings.depth}", f"--max-states {settings.max_states}",
                 f"--deviations {settings.deviations}", f"--crashes {settings.crashes_max}",
                 f"--timeouts {settings.time_steps_max}"]
        flags += [] if settings.reorders else ["--no-reorders"]
        if set(settings.adversaries) != set(MENU):
            flags += [f"--adversary {name}" for name in settings.adversaries]
        return " ".join(flags)


@dataclass(frozen=True)
class ScenarioPlan:
    scenarios: tuple[str, ...]

    def describe(self) -> str:
        return f"simulator schedules {', '.join(self.scenarios)}"


def _targeted(adversary: str, max_states: int, *, reorders: bool = False, timeouts: int = 0,
              crashes: int = 0) -> ModelCheckPlan:
    return ModelCheckPlan(ModelCheckSettings(depth=200, max_states=max_states, deviations=1, crashes_max=crashes,
                                             time_steps_max=timeouts, reorders=reorders, adversaries=(adversary,)))


# The whole menu on the default schedule: one path per adversary, about 600 states.
_MENU_DEFAULT_SCHEDULE = ModelCheckPlan(ModelCheckSettings(depth=200, max_states=2_000, deviations=0))
_SWARM_N4 = SwarmPlan(4, 10, 40)

HUNT_PLANS: dict[str, SwarmPlan | ModelCheckPlan] = {
    "quorum-one-smaller": _MENU_DEFAULT_SCHEDULE,
    "two-f-plus-one-quorum": SwarmPlan(5, 10, 20),  # The two quorums differ only when n > 3f+1.
    "skip-signature-verification": _MENU_DEFAULT_SCHEDULE,
    "accept-preprepare-from-non-primary": _targeted("usurping-backup", 2_000, reorders=True),
    "skip-new-view-validation": _targeted("lying-new-primary", 2_000, timeouts=1),
    "execute-before-commit": _SWARM_N4,
    "send-before-persist": _targeted("double-preprepare", 2_000, crashes=1),
    "own-messages-ahead-of-the-disk": _targeted("double-preprepare", 2_000, crashes=1),
    "vote-not-bound-to-request": _MENU_DEFAULT_SCHEDULE,
    "count-duplicate-votes": _MENU_DEFAULT_SCHEDULE,
    "ignore-deadline": _SWARM_N4,
    "verdict-ignores-vetoes": _SWARM_N4,
    # Checkpoints come every 32 seqs, so a restarted replica's forgotten table shows only in longer runs.
    "forget-exactly-once-after-restart": SwarmPlan(4, 40, 20),
    "certificate-accepts-f-replies": _SWARM_N4,
    "backup-never-shares-overdue-votes": _SWARM_N4,
    "drop-phase-votes-before-quorum": _SWARM_N4,
    "batch-waits-for-a-full-batch": _SWARM_N4,
    # Needs a primary forging bundle parts: the swarm's forging-collector strategy, steered to the primary.
    "bundle-trusts-forwarder": ScenarioPlan(BUNDLE_SCENARIOS),
    # Issue 18's classic PBFT bugs.  A dropped re-proposal shows only where a view change meets a slot that
    # committed at some replicas and not others; with COMMITs collected by the primary (SPEC.md 11c), the
    # primary commits a step before its backups, so short runs reach it.
    "reproposal-ignores-highest-view": ScenarioPlan(VIEW_CHANGE_SCENARIOS),
    "new-view-drops-a-prepared-request": SwarmPlan(4, 10, 30),
    # Unsafe only with a primary that equivocates its PREPAREs too, which the swarm's strategies do not.
    "prepared-with-one-prepare-too-few": ScenarioPlan(PREPARE_QUORUM_SCENARIOS),
    "stable-checkpoint-from-f-plus-1": _MENU_DEFAULT_SCHEDULE,
    "state-transfer-skips-digest-check": ScenarioPlan(STATE_TRANSFER_SCENARIOS),
    "execute-out-of-order": _MENU_DEFAULT_SCHEDULE,
    # Needs a configuration change under load: the simulated n=4 -> 7 -> 4 run with replacement and rotation.
    "old-epoch-orders-past-activation": ScenarioPlan(RECONFIGURATION_SCENARIOS),
}
# A second checker that catches the same bug (run by the self-test too).
CROSS_CHECKS: dict[str, SwarmPlan | ModelCheckPlan | ScenarioPlan] = {
    "stable-checkpoint-from-f-plus-1": SwarmPlan(4, 40, 10),
    "execute-out-of-order": SwarmPlan(4, 10, 5),
    "new-view-drops-a-prepared-request": ScenarioPlan(VIEW_CHANGE_SCENARIOS),
    # The behaviour-diff checker: a COMMIT leaves one PREPARE early in the normal case.
    "prepared-with-one-prepare-too-few": ScenarioPlan(GOLDEN_NORMAL_CASE),
    # The behaviour-diff checker: the golden script's view 2 re-proposes the view-1 batch, not the view-0 one.
    "reproposal-ignores-highest-view": ScenarioPlan(GOLDEN_VIEW_CHANGE),
}
assert set(HUNT_PLANS) == set(MUTANTS), "every mutant has a hunt plan"


@dataclass
class HuntResult:
    mutant: str
    plan: SwarmPlan | ModelCheckPlan | ScenarioPlan
    caught: bool
    seed: int | None  # The catching seed of a swarm hunt, or the index of the catching scenario.
    runs: int  # Swarm runs, or model-checker states, spent.
    checkers: list[str]
    wall_seconds: float
    details: list[str] = field(default_factory=list)

    @property
    def reproduce(self) -> str:
        if isinstance(self.plan, SwarmPlan):
            seed = self.seed if self.seed is not None else 0
            return f"python -m harness mutants --name {self.mutant} --seed {seed}"
        if isinstance(self.plan, ScenarioPlan):
            return f"python -m harness mutants --name {self.mutant}"
        return f"python -m harness modelcheck --mutant {self.mutant} {self.plan.command_flags()}"

    def where(self) -> str:
        if not self.caught:
            return "NOT CAUGHT"
        if isinstance(self.plan, ScenarioPlan):
            return f"schedule {self.plan.scenarios[self.seed]}"
        return f"seed {self.seed}" if isinstance(self.plan, SwarmPlan) else f"after {self.runs} states"


# ----------------------------------------------------------------------------- one run


def run_swarm_seed(plan: SwarmPlan, seed: int) -> RunResult:
    return run_simulation(settings_for_seed(seed, plan.replica_count, plan.request_count))


def swarm_findings(result: RunResult) -> list[str]:
    """The checkers that found something wrong with a run (empty when it is valid and live).

    The invariant checker's finding names the invariants that broke, e.g. ``invariants S1/S5``.
    """
    found = []
    for name, check in result.checks.items():
        if check.validity is Validity.VALID:
            continue
        ids = dict.fromkeys(detail.split(":", 1)[0] for detail in check.details if re.match(r"S\d+:", detail))
        found.append(f"{name} {'/'.join(ids)}" if name == "invariants" and ids else name)
    return found + (["liveness"] if result.liveness.status != "ok" else [])


def model_check_findings(result: ModelCheckResult) -> list[str]:
    if result.counterexample is None:
        return []
    invariants = [violation.split(":", 1)[0] for violation in result.counterexample.violations]
    return [f"modelcheck {', '.join(dict.fromkeys(invariants))}"]


# ----------------------------------------------------------------------------- hunts


def scenario_findings(findings: list[str]) -> list[str]:
    """Checker names for a scenario's findings: ``invariants S9``, ``progress``, ``core assertion``."""
    names = []
    for finding in findings:
        invariant = re.match(r"(S\d+):", finding)
        names.append(f"invariants {invariant.group(1)}" if invariant else
                     "core assertion" if "AssertionError" in finding else finding.split(":")[0])
    return list(dict.fromkeys(names))


def hunt(name: str, seeds_max: int | None = None,
         plan: SwarmPlan | ModelCheckPlan | ScenarioPlan | None = None) -> HuntResult:
    """Run ``name``'s plan (or ``plan``) with the mutant active until a checker catches it or the bound is reached."""
    mutant, plan = MUTANTS[name], plan or HUNT_PLANS[name]
    started = time.perf_counter()
    with mutant.activate():
        if isinstance(plan, ScenarioPlan):
            for index, scenario in enumerate(plan.scenarios):
                findings = run_scenario(scenario)
                if findings:
                    return HuntResult(name, plan, True, index, index + 1, scenario_findings(findings),
                                      time.perf_counter() - started, findings[:5])
            return HuntResult(name, plan, False, None, len(plan.scenarios), [], time.perf_counter() - started)
        if isinstance(plan, ModelCheckPlan):
            result = run_model_check(plan.settings)
            return HuntResult(name, plan, result.counterexample is not None, None, result.states,
                              model_check_findings(result), time.perf_counter() - started, result.describe())
        bound = seeds_max if seeds_max is not None else plan.seeds_max
        for seed in range(bound):
            run = run_swarm_seed(plan, seed)
            findings = swarm_findings(run)
            if findings:
                return HuntResult(name, plan, True, seed, seed + 1, findings, time.perf_counter() - started,
                                  _run_details(run))
    return HuntResult(name, plan, False, None, bound, [], time.perf_counter() - started)


def baseline(plan: SwarmPlan | ModelCheckPlan | ScenarioPlan, runs: int) -> list[str]:
    """Findings on the unmutated core over the runs a hunt spent (``runs`` seeds, states or schedules): none."""
    if isinstance(plan, ScenarioPlan):
        return [f"{scenario}: {finding}" for scenario in plan.scenarios[:runs] for finding in run_scenario(scenario)]
    if isinstance(plan, ModelCheckPlan):
        return model_check_findings(run_model_check(dataclasses.replace(plan.settings, max_states=runs)))
    findings = []
    for seed in range(runs):
        findings += [f"seed {seed}: {finding}" for finding in swarm_findings(run_swarm_seed(plan, seed))]
    return findings


def _run_details(run: RunResult) -> list[str]:
    lines = []
    for name, check in run.checks.items():
        if check.validity is not Validity.VALID:
            lines.append(f"{name}: {check.summary}")
            lines += [f"  {detail}" for detail in check.details[:3]]
    if run.liveness.status != "ok":
        lines.append(f"liveness: {run.liveness.finalized} of {run.liveness.submitted} requests finalized "
                     f"within {run.liveness.bound_ms} ms after healing")
    return lines


# ----------------------------------------------------------------------------- command line


def add_parser(commands) -> None:
    mutants = commands.add_parser("mutants", help="hunt the planted protocol bugs with the harness's checkers")
    mutants.add_argument("--name", help=f"hunt only this mutant (default: all): {', '.join(MUTANTS)}")
    mutants.add_argument("--seeds", type=int, help="the seed bound for swarm hunts (default: each plan's own)")
    mutants.add_argument("--seed", type=int, help="with --name: replay this one swarm run under the mutant")


def main(arguments: argparse.Namespace, out: TextIO) -> int:
    """Exit status 0 when every hunted mutant is caught, 1 when one escapes."""
    if arguments.seeds is not None and not 1 <= arguments.seeds <= SEEDS_MAX:
        return _usage_error(f"--seeds must be in [1, {SEEDS_MAX}]")
    if arguments.name is not None and arguments.name not in MUTANTS:
        return _usage_error(f"unknown mutant {arguments.name!r}; choose from {', '.join(MUTANTS)}")
    if arguments.seed is not None:
        return _replay(arguments, out)
    names = [arguments.name] if arguments.name else list(MUTANTS)
    results = []
    for name in names:
        result = hunt(name, arguments.seeds)
        results.append(result)
        print(f"{name}: {result.where()} ({', '.join(result.checkers) or 'no checker'}; "
              f"{result.wall_seconds:.1f} s)", file=out, flush=True)
    _print_table(results, out)
    return 0 if all(result.caught for result in results) else 1


def _replay(arguments: argparse.Namespace, out: TextIO) -> int:
    if arguments.name is None:
        return _usage_error("--seed needs --name: which mutant to replay")
    plan = HUNT_PLANS[arguments.name]
    if not isinstance(plan, SwarmPlan):
        return _usage_error(f"{arguments.name} is hunted by the model checker or fixed schedules, without seeds; "
                            f"run: python -m harness mutants --name {arguments.name}")
    if arguments.seed < 0:
        return _usage_error("--seed must not be negative")
    from ._describe import describe_run
    with MUTANTS[arguments.name].activate():
        run = run_swarm_seed(plan, arguments.seed)
    print(f"mutant {arguments.name} ({MUTANTS[arguments.name].breaks}), {plan.describe()}", file=out)
    describe_run(run, out)
    return 1 if swarm_findings(run) else 0


def _print_table(results: list[HuntResult], out: TextIO) -> None:
    print("\nmutant | what it breaks | hunted by | caught by | where | reproduce", file=out)
    for result in results:
        print(f"{result.mutant} | {MUTANTS[result.mutant].breaks} | {result.plan.describe()} | "
              f"{', '.join(result.checkers) or '-'} | {result.where()} | {result.reproduce}", file=out)
    escaped = [result.mutant for result in results if not result.caught]
    print(f"\n{len(results) - len(escaped)} of {len(results)} mutants caught"
          + (f"; ESCAPED: {', '.join(escaped)}" if escaped else ""), file=out)


def _usage_error(message: str) -> int:
    import sys
    print(f"python -m harness mutants: error: {message}", file=sys.stderr)
    return 2
