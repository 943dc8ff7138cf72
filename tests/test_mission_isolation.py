"""Proves the isolation scenario asks the cluster's own detector (product defaults, automatic rule on) to
quarantine exactly the approve-everything replica at one log position on every honest replica, with verdicts
checked before and after, while the honest content-blind rate policy is left alone, at both mission sizes."""

from __future__ import annotations

import pytest

from harness._linearizability import Validity
from harness._mission_plan import REPLICA_COUNTS, compromised_replica
from harness._mission_isolation import run_isolation

pytestmark = pytest.mark.slow  # the isolation scenario: make test runs it, make test-fast does not


@pytest.mark.parametrize("replica_count", REPLICA_COUNTS)
def test_every_honest_replica_quarantines_the_approve_everything_replica_at_one_position(replica_count: int) -> None:
    compromised = compromised_replica(0, replica_count)
    result = run_isolation(0, replica_count, compromised)
    assert result.validity is Validity.VALID, result.summary
    assert result.quarantine_position is not None and f"quarantined replica {compromised} " in result.summary
