"""What the ``bft`` command line's modules share: exit codes, the one-sentence usage error, argument parsers.

``bft.cli`` builds the parser from the subcommands of ``_cluster``, ``_keys`` and
``_operator``; all of them import what they share from here, so none of them
imports another to reach it (see tests/test_import_cycles.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from ..cluster import CLUSTER_FILE_NAME

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DENY = 3
EXIT_REFUSED = 4


class UsageError(Exception):
    """A user-caused error; its message is the one sentence shown."""


class _Parser(argparse.ArgumentParser):
    """Report argument errors as one sentence and let ``main`` turn them into exit code 2."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside [{low}, {high}]")
        return value
    return parse


SUBMIT_TIMEOUT_MS_MAX = 10 * 60 * 1000
EXIT_BY_STATUS = {"ALLOW": EXIT_OK, "DENY": EXIT_DENY, "REFUSED": EXIT_REFUSED}


def _cluster_path(text: str) -> Path:
    """A cluster file, or a directory holding ``cluster.toml``."""
    path = Path(text)
    return path / CLUSTER_FILE_NAME if path.is_dir() else path


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def outcome_document(outcome) -> dict:
    """What ``bft submit`` prints: the verdict first, the certificate last."""
    return {"status": outcome.status, "reason": outcome.reason, "client_id": outcome.request.client_id,
            "request_number": outcome.request_number, "latency_ms": round(outcome.latency_ms, 3),
            "certificate": json.loads(outcome.certificate.to_json()) if outcome.certificate else None}


def _shown(value: int | None) -> str:
    return "-" if value is None else str(value)
