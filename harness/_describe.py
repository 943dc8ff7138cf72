"""What ``python -m harness sim`` prints about one simulated run and about a swarm of them.

Its own module so that every command that runs the simulator (``sim``, and
``mutants --seed`` replaying a mutant) describes a run the same way without
importing the command line's entry point.
"""

from __future__ import annotations

from typing import TextIO

from ._linearizability import Validity
from ._swarm import LIVENESS_POLICY, RunResult, SwarmSummary


def describe_run(result: RunResult, out: TextIO) -> None:
    settings = result.settings
    print(f"seed {settings.seed}: {result.validity.value.upper()}, liveness {result.liveness.status}  "
          f"({settings.replica_count} replicas, {len(result.history.operations())} operations, "
          f"faults: {', '.join(settings.fault_kinds) or 'none'})", file=out)
    for name, check in result.checks.items():
        print(f"  {check.validity.value:8} {name}: {check.summary}", file=out)
        for line in check.details if check.validity is not Validity.VALID else []:
            print(f"             {line}", file=out)
    liveness = result.liveness
    print(f"  liveness: {liveness.finalized} of {liveness.submitted} requests finalized within "
          f"{liveness.bound_ms} ms after healing ({LIVENESS_POLICY})", file=out)
    for line in liveness.notes + ([f"stalled: {', '.join(liveness.stalled)}"] if liveness.stalled else []) \
            + liveness.diagnosis:
        print(f"    {line}", file=out)
    print("  fault timeline (ms since start):", file=out)
    for event in result.faults:
        print(f"    {event.describe()}", file=out)
    if result.validity is not Validity.VALID or liveness.status != "ok":
        print(f"  reproduce with: {settings.reproduce_command()}", file=out)


def describe_swarm(summary: SwarmSummary, out: TextIO) -> None:
    results = summary.results
    rate = len(results) / summary.wall_seconds if summary.wall_seconds > 0 else 0.0
    print(f"\n{len(results)} runs in {summary.wall_seconds:.1f} s ({rate:.2f} runs/s)", file=out)
    for validity in Validity:
        print(f"  {validity.value:8} {summary.count(lambda r: r.validity is validity)}", file=out)
    print(f"  stalled  {summary.count(lambda r: r.liveness.status != 'ok')} (liveness, reported separately: "
          f"{LIVENESS_POLICY})", file=out)
    print("fault coverage (runs that exercised each fault):", file=out)
    for name, count in summary.coverage().items():
        print(f"  {name:32} {count}", file=out)
    failing = [r for r in results if r.validity is not Validity.VALID or r.liveness.status != "ok"]
    for result in failing:
        problems = [name for name, check in result.checks.items() if check.validity is not Validity.VALID]
        if result.liveness.status != "ok":
            problems.append(f"liveness stalled ({', '.join(result.liveness.stalled[:5])})")
        print(f"FAILED seed {result.settings.seed} [{result.validity.value}]: {'; '.join(problems)}", file=out)
        print(f"  reproduce with: {result.settings.reproduce_command()}", file=out)
