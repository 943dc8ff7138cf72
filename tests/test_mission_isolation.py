"""Proves the isolation scenario asks the cluster's own detector (automatic rule on) to quarantine exactly the
approve-everything replica at one log position on every honest replica, with verdicts checked before and after;
and pins the known false positive at n=5, where the content-blind rate policy is quarantined instead."""

from __future__ import annotations

import pytest

from harness._linearizability import Validity
from harness._mission import compromised_replica
from harness._mission_isolation import run_isolation


def test_at_n7_every_honest_replica_quarantines_the_approve_everything_replica_at_one_position() -> None:
    compromised = compromised_replica(0, 7)
    result = run_isolation(0, 7, compromised)
    assert result.validity is Validity.VALID, result.summary
    assert result.quarantine_position is not None and f"replica {compromised}" in result.summary


@pytest.mark.xfail(strict=True, reason="known weakness (issue 6): at n=5 the detector's approval-rate rule "
                                       "quarantines the honest, content-blind rate policy first, which uses up "
                                       "the automatic quarantine budget of f")
def test_at_n5_the_detector_isolates_the_approve_everything_replica() -> None:
    result = run_isolation(0, 5, compromised_replica(0, 5))
    assert result.validity is Validity.VALID, result.summary
