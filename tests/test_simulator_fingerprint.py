"""The core behaves exactly as recorded: for a handful of simulator seeds, the hash of every output of every
replica (``harness._fingerprint``) equals the one committed in tests/simulator_fingerprints.txt.

A refactoring of the core must leave these hashes alone.  An intended change of behaviour (a protocol
change, a different message order) changes them: regenerate the file with
``python -m harness._fingerprint --seeds 5 > tests/simulator_fingerprints.txt`` and say so in the commit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from harness._fingerprint import fingerprint, recording
from harness._swarm import run_simulation, settings_for_seed

RECORDED_FILE = Path(__file__).parent / "simulator_fingerprints.txt"
RECORDED = dict(line.split() for line in RECORDED_FILE.read_text().splitlines())


@pytest.mark.parametrize("seed", sorted(RECORDED, key=int))
def test_the_simulated_run_of_a_seed_hashes_as_recorded(seed):
    assert fingerprint(int(seed)) == RECORDED[seed]


def test_the_fingerprint_covers_every_output_of_the_run():
    """A fingerprint that saw nothing would pass any refactoring: it hashes thousands of outputs, and seeds differ."""
    class CountingDigest:
        def __init__(self) -> None:
            self.inner, self.updates = hashlib.sha256(), 0

        def update(self, data: bytes) -> None:
            self.updates += 1
            self.inner.update(data)

    counted = CountingDigest()
    with recording(counted):
        run_simulation(settings_for_seed(0))
    assert counted.updates > 1_000
    assert counted.inner.hexdigest() == RECORDED["0"] != RECORDED["1"]
