"""``python -m harness check FILE --model M``: check one history file.

Exit status: 0 linearizable; 1 not linearizable (the counterexample is
printed, and drawn with ``--report``); 3 unknown within the limits; 2 bad
input (the file, the line and the reason on standard error).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from ._checker import Outcome, check
from ._models import MODELS
from ._ops import HistoryInputError
from ._readers import FORMATS, read_file

EXIT_OK, EXIT_ILLEGAL, EXIT_BAD_INPUT, EXIT_UNKNOWN = 0, 1, 2, 3
DEFAULT_MAX_STATES = 2_000_000  # About 300 MB of memo per partition at most.
DEFAULT_TIMEOUT_S = 300.0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("check", help="check a history file for linearizability",
                                 description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="the history: Jepsen EDN, JSON Lines, or Jepsen log lines")
    parser.add_argument("--model", required=True, choices=sorted(MODELS), help="the object the history used")
    parser.add_argument("--format", choices=FORMATS, help="the file's format (default: guessed from its content)")
    parser.add_argument("--max-states", type=int, default=DEFAULT_MAX_STATES,
                        help=f"states explored per partition before answering unknown (default {DEFAULT_MAX_STATES})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"time for the whole check before answering unknown (default {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--report", type=Path, metavar="HTML", help="write an HTML page of the check here")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def main(arguments: argparse.Namespace, out: TextIO, errors: TextIO | None = None) -> int:
    errors = errors if errors is not None else sys.stderr
    if arguments.max_states < 1 or arguments.timeout <= 0:
        print("check: --max-states and --timeout must be positive", file=errors)
        return EXIT_BAD_INPUT
    model = MODELS[arguments.model]()
    try:
        ops = read_file(arguments.file, arguments.format)
        started = time.process_time()
        result = check(ops, model, timeout_s=arguments.timeout, max_states=arguments.max_states)
    except HistoryInputError as error:
        print(f"{arguments.file}: bad input: {error}", file=errors)
        return EXIT_BAD_INPUT
    except OSError as error:
        print(f"{arguments.file}: cannot read: {error.strerror or error}", file=errors)
        return EXIT_BAD_INPUT
    cpu_s = time.process_time() - started
    if arguments.json:
        print(json.dumps(result.to_json(), indent=1), file=out)
    else:
        _describe(result, len(ops), cpu_s, out)
    if arguments.report is not None:
        from ._report import write_report
        print(f"report: {write_report(arguments.report, ops, result, f'{arguments.file.name} ({arguments.model})')}",
              file=out)
    return {Outcome.OK: EXIT_OK, Outcome.ILLEGAL: EXIT_ILLEGAL, Outcome.UNKNOWN: EXIT_UNKNOWN}[result.outcome]


def _describe(result, count: int, cpu_s: float, out: TextIO) -> None:
    print(f"{result.outcome.value}: {count} operations in {result.partitions} partition(s), "
          f"{result.states} states in {cpu_s:.2f} CPU-s", file=out)
    if result.failure is not None:
        for line in result.failure.describe():
            print(line, file=out)
    for reason in result.reasons:
        print(f"  gave up: {reason}", file=out)
    for key, prefix in result.partial.items():
        where = f"partition {key!r}" if key is not None else "the history"
        print(f"  longest linearizable prefix reached in {where}: {len(prefix)} operations", file=out)
