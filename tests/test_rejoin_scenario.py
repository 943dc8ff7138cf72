"""Proves the simulated rejoin scenario passes: every replica in turn (primary included) is paused, killed and
cut off for 2.5 s under load, then resumed, restarted or healed, and each time it is back in the cluster's view
with no lag within the issue's bounds (5 s with load, 2 s idle), verdicts never stop for longer than one view
change, the stranded-replica sequence leaves a cluster serving on 3 of 4 replicas, and every invariant holds."""

from __future__ import annotations

import io

import pytest

from harness import __main__ as harness_main
from harness._rejoin import REJOIN_BOUND_IDLE_MS, REJOIN_BOUND_LOADED_MS, VERDICT_GAP_BOUND_MS, run_rejoin_scenario

pytestmark = pytest.mark.slow  # the rejoin scenario: make test runs it, make test-fast does not


@pytest.mark.parametrize("seed", [0, 1])
def test_every_replica_rejoins_after_every_fault_within_the_bound(seed: int) -> None:
    result = run_rejoin_scenario(seed)
    assert not result.problems, "\n".join(result.problems)
    assert len(result.episodes) == 2 * 3 * 4
    for episode in result.episodes:
        bound = REJOIN_BOUND_LOADED_MS if episode.loaded else REJOIN_BOUND_IDLE_MS
        assert episode.rejoin_ms is not None and episode.rejoin_ms <= bound, episode.describe()
        assert episode.verdict_gap_ms_max <= VERDICT_GAP_BOUND_MS, episode.describe()
    assert result.stranded_ok


def test_the_command_prints_the_time_to_rejoin_and_exits_zero() -> None:
    out = io.StringIO()
    assert harness_main.main(["scenario", "rejoin", "--seed", "3"], out) == 0, out.getvalue()
    text = out.getvalue()
    assert "time to rejoin over 24 episodes: p50" in text and "stranded-replica sequence: cluster serves" in text
