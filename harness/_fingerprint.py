"""A fingerprint of a simulated run: one hash over everything every replica output, input by input.

Refactoring the core must not change its behaviour.  The golden interaction
scripts show that for hand-written scenarios; this shows it for the
simulator's random ones.  Every ``Ready`` a replica returns (messages sent to
replicas and clients, what it persisted, finalized, evaluated, rejected, the
log reads it asked for and the votes it declared dead), tagged with the
replica and counted in order, is hashed into one digest per seed.  Two trees
whose cores behave alike give equal digests for every seed; any difference in
what is sent, to whom, or in which order changes the digest.

``python -m harness._fingerprint --seeds 50`` prints one line per seed; the
committed file ``tests/simulator_fingerprints.txt`` holds a handful of them,
checked by ``tests/test_simulator_fingerprint.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
from typing import Iterator, TextIO
from unittest import mock

from bft.core import Replica

from ._swarm import run_simulation, settings_for_seed

SEEDS_MAX = 1_000


@contextlib.contextmanager
def recording(digest) -> Iterator[None]:
    """While active, every Ready any replica returns is fed to ``digest`` (a hashlib object)."""
    original = Replica._run

    def run(self, handler, *arguments):
        ready = original(self, handler, *arguments)
        digest.update(f"{self.replica_id}|{ready!r}\n".encode())
        return ready

    with mock.patch.object(Replica, "_run", run):
        yield


def fingerprint(seed: int) -> str:
    """The hex digest of every replica output in the simulator's run for ``seed`` (its own settings)."""
    digest = hashlib.sha256()
    with recording(digest):
        run_simulation(settings_for_seed(seed))
    return digest.hexdigest()


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness._fingerprint", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0 .. N-1 (default 10)")
    arguments = parser.parse_args(argv)
    if not 1 <= arguments.seeds <= SEEDS_MAX:
        parser.error(f"--seeds must be in [1, {SEEDS_MAX}]")
    for seed in range(arguments.seeds):
        print(f"{seed} {fingerprint(seed)}", file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
