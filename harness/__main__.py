"""``python -m harness sim``: one reproducible simulated run, or a swarm of them; ``python -m harness scenario
mission``: the mission scenario (see ``harness._mission``); ``python -m harness scenario rejoin``: every
replica in turn paused, killed and cut off, then back (see ``harness._rejoin``); ``python -m harness byzantine-replica``: one real
replica process that lies to its peers (see ``harness._byzantine_replica``); ``python -m harness check FILE
--model M``: check any history file for linearizability (see ``harness.linearizability``).

Exit status: 0 when every run is valid and live; 1 when any run is invalid
(a safety check failed); 3 when none is invalid but a checker gave up
(unknown); 2 when every run is safe but some liveness phase stalled (unless
``--liveness report``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TextIO

from ._describe import describe_run, describe_swarm
from ._linearizability import Validity
from ._swarm import RunResult, run_simulation, run_swarm, settings_for_seed

EXIT_INVALID, EXIT_STALLED, EXIT_UNKNOWN = 1, 2, 3
SEEDS_MAX = 1_000_000


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m harness", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)
    sim = commands.add_parser("sim", help="deterministic simulation runs")
    which = sim.add_mutually_exclusive_group(required=True)
    which.add_argument("--seed", type=int, help="run this one seed")
    which.add_argument("--seeds", type=int, help="run a swarm of this many seeds")
    sim.add_argument("--first-seed", type=int, default=0, help="the swarm's first seed (default 0)")
    sim.add_argument("--replicas", type=int, choices=(4, 5, 7, 10), help="fix the cluster size")
    sim.add_argument("--requests", type=int, help="fix the number of safety-phase requests")
    sim.add_argument("--out", type=Path, help="write history.jsonl, results.json, report.html here "
                                              "(for a swarm: one directory per failing run)")
    sim.add_argument("--liveness", choices=("require", "report"), default="require",
                     help="whether a stalled liveness phase makes the exit status non-zero")
    scenario = commands.add_parser("scenario", help="a named end-to-end scenario (mission, isolation, rejoin)")
    scenario.add_argument("name", choices=("mission", "isolation", "rejoin"),
                          help="mission: the mission scenario; isolation: the cluster's own detector isolates the "
                               "approve-everything replica with the automatic rule on; rejoin: each replica in turn "
                               "(primary included) is paused, killed and cut off under load and must rejoin")
    scenario.add_argument("--replicas", type=int, choices=(5, 7), help="one cluster size (default: 5 and 7)")
    scenario.add_argument("--seed", type=int, default=0, help="the seed (default 0)")
    scenario.add_argument("--out", type=Path, default=Path("mission-report"),
                          help="write report.html, results.json and the histories here (default ./mission-report)")
    scenario.add_argument("--real", action="store_true", help="real replica processes behind the fault proxy")
    scenario.add_argument("--rate", type=float, metavar="PER_S",
                          help="mission only: requests a second the agents offer together (default 12.5); a host "
                               "too small for the cluster at that rate misses latency bounds, see README")
    from . import _byzantine_replica, _modelcheck_cli, _mutant_hunt
    from .linearizability import _cli as check_cli
    check_cli.add_parser(commands)
    _mutant_hunt.add_parser(commands)
    _modelcheck_cli.add_parser(commands)
    _byzantine_replica.add_parser(commands)
    return root


def exit_status(results: list[RunResult], liveness_required: bool) -> int:
    if any(r.validity is Validity.INVALID for r in results):
        return EXIT_INVALID
    if any(r.validity is Validity.UNKNOWN for r in results):
        return EXIT_UNKNOWN
    if liveness_required and any(r.liveness.status != "ok" for r in results):
        return EXIT_STALLED
    return 0


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    arguments = parser().parse_args(argv)
    if arguments.command == "check":
        from .linearizability import _cli as check_cli
        return check_cli.main(arguments, out)
    if arguments.command == "scenario" and arguments.name == "isolation":
        if arguments.rate is not None:
            parser().error("--rate applies to the mission scenario only")
        from ._mission_isolation import main_isolation
        return main_isolation(arguments, out)
    if arguments.command == "scenario" and arguments.name == "rejoin":
        if arguments.rate is not None:
            parser().error("--rate applies to the mission scenario only")
        if arguments.real:
            from ._rejoin_real import main_rejoin_real
            return main_rejoin_real(arguments, out)
        from ._rejoin import main_rejoin
        return main_rejoin(arguments, out)
    if arguments.command == "scenario":
        from ._mission import main_scenario
        from ._mission_plan import DEFAULT_RATE_PER_S, ArrivalGaps
        try:
            arguments.gaps = ArrivalGaps.for_rate(DEFAULT_RATE_PER_S if arguments.rate is None else arguments.rate)
        except ValueError as error:
            parser().error(f"--rate: {error}")
        return main_scenario(arguments, out)
    if arguments.command == "byzantine-replica":
        from ._byzantine_replica import main as main_byzantine_replica
        return main_byzantine_replica(arguments, out)
    if arguments.command in ("mutants", "modelcheck"):
        from . import _modelcheck_cli, _mutant_hunt
        return (_mutant_hunt if arguments.command == "mutants" else _modelcheck_cli).main(arguments, out)
    if arguments.requests is not None and not 0 <= arguments.requests <= 10_000:
        parser().error("--requests must be in [0, 10000]")
    liveness_required = arguments.liveness == "require"
    if arguments.seed is not None:
        result = run_simulation(settings_for_seed(arguments.seed, arguments.replicas, arguments.requests))
        describe_run(result, out)
        if arguments.out:
            from ._report import write_report
            print(f"report: {write_report(result, arguments.out)}", file=out)
        return exit_status([result], liveness_required)
    if not 1 <= arguments.seeds <= SEEDS_MAX:
        parser().error(f"--seeds must be in [1, {SEEDS_MAX}]")
    seeds = list(range(arguments.first_seed, arguments.first_seed + arguments.seeds))
    summary = run_swarm(seeds, arguments.replicas, arguments.requests,
                        on_result=_failure_writer(arguments.out, out) if arguments.out else None)
    describe_swarm(summary, out)
    return exit_status(summary.results, liveness_required)


def _failure_writer(directory: Path, out: TextIO):
    def write(result: RunResult) -> None:
        if result.validity is not Validity.VALID or result.liveness.status != "ok":
            from ._report import write_report
            print(f"report: {write_report(result, directory / f'seed-{result.settings.seed}')}", file=out)
    return write


def run_from_shell() -> int:
    """``main`` for the shell: a reader that goes away (``| head``) ends the run quietly."""
    try:
        return main()
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush cannot raise a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(run_from_shell())
