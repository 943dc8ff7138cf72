"""``python -m bench``: run the benchmark suite and print its table.  ``--help`` lists the options.

A mistake the user can make (an unknown step, an unwritable results folder,
real processes asked for but unavailable) ends with one sentence on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from ._launchers import LAUNCHER_NAMES, LaunchError, choose_launcher, default_scratch_directory
from ._run import FULL, QUICK, STEPS, run_bench, with_steps

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"


class UsageError(Exception):
    """A user-caused error; its message is the one sentence shown."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bench", description="Measure the latency floor and throughput ceiling of this "
                     "machine, then the cluster's latency, throughput and simulated scaling against them.")
    parser.add_argument("--quick", action="store_true", help="the smallest version of every step (seconds)")
    parser.add_argument("--launcher", choices=LAUNCHER_NAMES, default="auto",
                        help="how replicas run: real processes, in this process, or auto (processes if they start)")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated subset of {','.join(STEPS)} (floor and ceiling always run)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="folder for the run's folder of results")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="disk folder for temporary databases (default: $BENCH_SCRATCH or the system temp folder)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return parser


def _steps(text: str) -> tuple[str, ...]:
    steps = tuple(step.strip() for step in text.split(",") if step.strip())
    unknown = [step for step in steps if step not in STEPS]
    if unknown:
        raise UsageError(f"unknown step {unknown[0]!r}; the steps are {', '.join(STEPS)}")
    return steps


def _writable_directory(path: Path, what: str) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the {what} folder {path} ({error.strerror or error})") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"the {what} folder {path} is not writable")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    try:
        arguments = _parser().parse_args(argv)
        settings = with_steps(QUICK if arguments.quick else FULL, _steps(arguments.steps), not arguments.no_plots)
        results = _writable_directory(arguments.results, "results")
        scratch = _writable_directory(arguments.scratch or default_scratch_directory(), "scratch")
        launcher = choose_launcher(arguments.launcher)
    except (UsageError, LaunchError) as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    try:
        run_bench(settings, launcher, results, scratch)
    except LaunchError as error:
        print(f"python -m bench: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
