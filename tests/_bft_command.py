"""The ``bft`` command run as a child process, for the tests that drive real replica processes."""

from __future__ import annotations

import os
import subprocess
import sys


def bft_process(*arguments: object, timeout_s: float, check_exit: int | None = 0) -> subprocess.CompletedProcess:
    """Run ``python -m bft ARGUMENTS``; no traceback may appear, and the exit code must be ``check_exit``
    unless that is None."""
    completed = subprocess.run([sys.executable, "-m", "bft", *map(str, arguments)], capture_output=True, text=True,
                               timeout=timeout_s, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert "Traceback" not in completed.stderr, completed.stderr
    if check_exit is not None:
        assert completed.returncode == check_exit, (arguments, completed.returncode, completed.stdout,
                                                    completed.stderr)
    return completed
