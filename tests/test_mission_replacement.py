"""The real-process mission's replacement step (issue 20, item 4) at n=5: under the mission's load the operator
quarantines the approve-everything replica and replaces it through a configuration change; the report's
`replacement` check is VALID and tells the epoch change (its activation seq), the old process's retirement and the
fresh replica's catch-up, with S1-S11 judged per epoch over every honest SQLite log, no certified verdict lost and
no refusal outside the switch (the check's own conditions, see harness/_mission_replacement.py)."""

from __future__ import annotations

import re

import pytest

from harness._linearizability import Validity
from harness._mission_real import REPLACEMENT, run_real_mission

pytestmark = pytest.mark.slow  # real replica processes


def test_the_quarantined_replica_is_replaced_under_load_and_the_report_shows_the_epoch_change(tmp_path):
    result = run_real_mission(0, (5,), tmp_path, episode_names=(REPLACEMENT,))
    configuration = result.configurations[0]
    check = configuration.checks[REPLACEMENT]
    assert check.validity is Validity.VALID, check.details
    compromised = configuration.compromised
    assert re.search(rf"replica {compromised} quarantined at seq \d+; epoch 0 -> 1: the change executed at seq \d+, "
                     rf"activation seq \d+; replica {compromised}'s process retired by itself", check.summary)
    assert re.search(r"\d+ verdicts certified \((\d+) in epoch 1\)", check.summary)
    assert int(re.search(r"\((\d+) in epoch 1\)", check.summary).group(1)) > 0
    assert configuration.to_json()["checks"][REPLACEMENT]["details"][1].startswith("epoch 0 -> 1")
