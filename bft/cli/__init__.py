"""The ``bft`` command line.  ``main(argv) -> exit code``; each subcommand is one handler.

Subcommands: ``demo``; ``init``, ``up``, ``down`` and ``replica`` to create and
run a cluster of local processes; ``keygen`` and ``cluster new|add-replica|
add-client|add-operator`` to make each node's key on its own machine and
assemble a cluster file from public keys; ``submit``, ``verify`` and ``status`` for
clients and operators; ``operator quarantine|release|evidence|blocklist`` for
the accountability state; ``audit verify`` for a replica's verdict log.

Exit codes: 0 success (and ALLOW, or an operator command applied); 1 a check
failed (an invalid certificate, a broken log, an unhealthy cluster, a replica
that did not come up, the demo's safety self-check); 2 a mistake the user can
make (a bad number, a missing or bad file, an unknown replica, client or
operator id, bad JSON), always reported as one sentence on stderr, never a
traceback; 3 DENY (an operator command the cluster refused); 4 REFUSED.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from ._common import (EXIT_DENY, EXIT_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, UsageError,  # noqa: F401
                          _bounded_int, _Parser)
from ..cluster import ConfigFileError

def _writable_file(text: str) -> Path:
    path = Path(text)
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory")
    if not directory.is_dir() or not os.access(directory, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write to {text}: {directory} is not a writable directory")
    return path


def _add_demo(subcommands) -> None:
    from ..demo import CONCURRENCY_MAX, REPLICAS_MAX, REPLICAS_MIN, REQUESTS_MAX
    demo = subcommands.add_parser("demo", help="run a local cluster over loopback TCP and judge sample actions",
                                  description="Run n replicas (one of them compromised) in one process and print "
                                              "each verdict, a summary, and an offline certificate check.")
    demo.add_argument("--requests", type=_bounded_int(1, REQUESTS_MAX), default=40, help="how many actions (40)")
    demo.add_argument("--replicas", type=_bounded_int(REPLICAS_MIN, REPLICAS_MAX), default=5,
                      help="cluster size (5: f = 1)")
    demo.add_argument("--seed", type=_bounded_int(0, 2**63 - 1), default=0, help="seed of the action stream (0)")
    demo.add_argument("--concurrency", type=_bounded_int(1, CONCURRENCY_MAX), default=2,
                      help="requests in flight at once (2)")
    demo.add_argument("--certificate", type=_writable_file, default=Path("demo-certificate.json"),
                      help="where to write the last certificate (demo-certificate.json)")
    demo.set_defaults(handler=_run_demo)


def _run_demo(arguments: argparse.Namespace) -> int:
    from ..demo import run_demo
    try:
        summary = run_demo(arguments.requests, arguments.replicas, arguments.seed, arguments.concurrency,
                           arguments.certificate)
    except (OSError, RuntimeError, ExceptionGroup) as raised:
        error = _sole_cause(raised)
        if isinstance(error, OSError):  # For example the certificate file became unwritable.
            raise UsageError(f"bft demo: {error.strerror or error} ({error.filename or 'network'})") from None
        if isinstance(error, RuntimeError):  # The local cluster could not form; nothing typed was wrong.
            print(f"bft demo: {error}", file=sys.stderr)
            return EXIT_FAILED
        raise
    return EXIT_OK if summary.ok else EXIT_FAILED


def _sole_cause(error: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (trio's nurseries wrap what they raise)."""
    for _ in range(16):
        if not (isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1):
            break
        error = error.exceptions[0]
    return error


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bft", description="Byzantine-fault-tolerant consensus on safety verdicts.")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_demo(subcommands)
    from . import _cluster, _keys, _operator
    _cluster.add_commands(subcommands)
    _keys.add_commands(subcommands)
    _operator.add_commands(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        arguments = parser.parse_args(argv)
        if arguments.command is None:
            raise UsageError("bft: choose a command (try: bft init, bft demo, or bft --help)")
        return arguments.handler(arguments)
    except UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    except ConfigFileError as error:  # A missing or bad cluster, key or counter file.
        print(f"bft: {error}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exit_request:  # --help and --version end here.
        return exit_request.code if isinstance(exit_request.code, int) else EXIT_OK
    except KeyboardInterrupt:
        print("bft: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # The reader of our output went away (``bft submit ... | head``).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # So the exit flush cannot fail again.
        return EXIT_FAILED
