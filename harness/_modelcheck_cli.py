"""``python -m harness modelcheck``: the model checker's command line (``harness._modelcheck`` explores)."""

from __future__ import annotations

import sys
from contextlib import nullcontext

from ._modelcheck import DEPTH_MAX, ModelCheckSettings, run_model_check
from ._model_menu import MENU


def add_parser(commands) -> None:
    check = commands.add_parser("modelcheck", help="small-scope model checking of the real core (n=4, 2 requests)")
    check.add_argument("--depth", type=int, required=True, help=f"steps per run, at most {DEPTH_MAX}")
    check.add_argument("--max-states", type=int, default=ModelCheckSettings.max_states,
                       help="stop after exploring this many distinct states")
    check.add_argument("--deviations", type=int, default=ModelCheckSettings.deviations,
                       help="departures from the default schedule per run (default 1)")
    check.add_argument("--crashes", type=int, default=ModelCheckSettings.crashes_max,
                       help="crash-restarts of a correct replica per run (default 1)")
    check.add_argument("--timeouts", type=int, default=ModelCheckSettings.time_steps_max,
                       help="times a view-change timeout elapses per run (default 1)")
    check.add_argument("--no-reorders", action="store_true", help="do not reorder a replica's inbox")
    check.add_argument("--adversary", action="append", metavar="NAME",
                       help=f"Byzantine behaviour to explore, repeatable (default all: {', '.join(MENU)})")
    check.add_argument("--mutant", help="explore with this planted bug active (see: python -m harness mutants)")


def main(arguments, out) -> int:
    """Exit status 0 when no invariant breaks within the bounds, 1 with a counterexample, 2 on bad usage."""
    from ._mutants import MUTANTS  # Imported late: the mutants import the core they patch.
    settings = ModelCheckSettings(depth=arguments.depth, max_states=arguments.max_states,
                                  deviations=arguments.deviations, crashes_max=arguments.crashes,
                                  time_steps_max=arguments.timeouts, reorders=not arguments.no_reorders,
                                  adversaries=tuple(arguments.adversary or MENU))
    problem = settings.problem() or (f"unknown mutant {arguments.mutant!r}; choose from {', '.join(MUTANTS)}"
                                     if arguments.mutant and arguments.mutant not in MUTANTS else None)
    if problem:
        print(f"python -m harness modelcheck: error: {problem}", file=sys.stderr)
        return 2
    with MUTANTS[arguments.mutant].activate() if arguments.mutant else nullcontext():
        result = run_model_check(settings)
    print("\n".join(result.describe()), file=out)
    return 1 if result.counterexample else 0
