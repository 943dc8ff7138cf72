"""The mission scenario passes in simulation at n=5 and n=7 and writes its report; its analysis says which fault
combinations no correct protocol can serve fast; n=5 waits or refuses under one replica down plus one behind
500 ms links while n=7 meets the bounds under the same faults; the vote statistics flag exactly the
approve-everything replica and the cluster's own detector isolates it; each mission check fails on a history
that breaks what it checks; requests before the faults (a real run's warm-up) are outside the latency
bounds; a missed latency bound names the episodes whose host CPUs were saturated (read from /proc/stat),
without changing any verdict; the offered rate (--rate) sets the gaps between requests and is recorded in
the results and the reproducing command; and a smoke run of real-process mode (replica processes behind
fault proxies) keeps every safety check."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random

import pytest

from bft.core import Decision, Risk
from harness import Event, EventType, History, Validity
from harness.__main__ import main
from harness._host_cpu import CpuTimes, HostCpu, HostCpuMonitor, busy_fraction, read_cpu_times
from harness._mission import run_mission
from harness._mission_plan import DEFAULT_ARRIVALS, LATENCY_BOUNDS_MS, ArrivalGaps, Reach, assess, plan_episodes
from harness._mission_results import (BOUNDED, WARM_UP, check_fails_closed, check_honest_majority, check_latency_bounds,
                                      check_no_corner_cutting)
from harness._mission_real import WARM_UP_REQUESTS, run_real_mission
from harness._report import vote_statistics

pytestmark = pytest.mark.slow  # the mission scenario, simulated and with real processes: make test runs it, make test-fast does not

SEED = 0


@pytest.fixture(scope="module")
def mission():
    return run_mission(SEED, (5, 7))


def _failing(result) -> dict:
    failing = {}
    for configuration in result.configurations:
        for episode in configuration.episodes:
            failing.update({f"n{configuration.replica_count}/{episode.spec.name}/{name}": check.details
                            for name, check in episode.checks.items() if check.validity is not Validity.VALID})
        failing.update({f"n{configuration.replica_count}/{name}": check.summary
                        for name, check in configuration.checks.items() if check.validity is not Validity.VALID})
    return failing


def test_the_mission_passes_at_n5_and_n7(mission):
    assert mission.validity is Validity.VALID, _failing(mission)
    for configuration in mission.configurations:
        assert [episode.spec.name for episode in configuration.episodes] == \
            ["tolerated", "down-plus-slow", "no-quorum", "primary-failover"]
        for episode in configuration.episodes:
            assert {"invariants", "linearizability", "durability", "certified_verdicts", "honest_majority",
                    "dangerous_actions", "liveness_after_heal"} <= set(episode.checks)
        assert set(configuration.checks) == {"latency_bounds", "detection", "isolation"}


@pytest.mark.parametrize("replica_count, down, slow, reach, floor_ms", [
    (5, 0, 0, Reach.FAST, 0), (5, 1, 0, Reach.FAST, 0), (5, 0, 1, Reach.FAST, 0),
    (5, 1, 1, Reach.SLOW, 1000), (5, 0, 2, Reach.SLOW, 1000), (5, 2, 0, Reach.NONE, None),
    (7, 1, 1, Reach.FAST, 0), (7, 2, 0, Reach.FAST, 0), (7, 2, 1, Reach.SLOW, 1000), (7, 3, 0, Reach.NONE, None),
])
def test_the_analysis_says_which_fault_combinations_leave_a_fast_quorum(replica_count, down, slow, reach, floor_ms):
    verdict = assess(replica_count, down, slow, slow_link_ms=500)
    assert (verdict.reach, verdict.latency_floor_ms) == (reach, floor_ms)
    assert verdict.bound_achievable(Risk.LOW) is (reach is Reach.FAST)
    assert verdict.bound_achievable(Risk.HIGH) is (reach is Reach.FAST)  # 2 x 500 ms is not under 1000 ms.
    assert verdict.bound_achievable(Risk.MEDIUM) is None


def test_n5_waits_or_refuses_under_one_down_and_one_slow_while_n7_meets_the_bounds(mission):
    five, seven = (configuration.episode("down-plus-slow") for configuration in mission.configurations)
    assert five.spec.feasibility.reach is Reach.SLOW and seven.spec.feasibility.reach is Reach.FAST
    assert len(five.spec.down) == len(seven.spec.down) == len(five.spec.slow) == len(seven.spec.slow) == 1
    assert five.checks["no_corner_cutting"].validity is Validity.VALID
    # Every verdict certified while the slow replica was needed waited for it: at least two of its 500 ms
    # hops.  A request made just before the heal may finish sooner, once the links are fast again.
    window = [op for op in five.history.operations()
              if five.window_start_ms <= op.invoke.time_ms and op.completion.time_ms < five.liveness_start_ms]
    assert window and all(op.completion.time_ms - op.invoke.time_ms >= 1000 for op in window)
    assert all(op.completion.time_ms >= five.liveness_start_ms for op in five.history.operations()
               if five.window_start_ms <= op.invoke.time_ms < five.liveness_start_ms
               and op.completion.time_ms - op.invoke.time_ms < 1000)
    fast_window = seven.samples()[BOUNDED]
    for risk, bound_ms in LATENCY_BOUNDS_MS.items():
        assert fast_window[risk] and all(sample.answered for sample in fast_window[risk])
        assert max(sample.latency_ms for sample in fast_window[risk]) < bound_ms


def test_without_a_quorum_the_cluster_refuses_and_certifies_nothing_until_the_heal(mission):
    for configuration in mission.configurations:
        episode = configuration.episode("no-quorum")
        assert episode.spec.feasibility.reach is Reach.NONE
        window = [op for op in episode.history.operations()
                  if episode.window_start_ms <= op.invoke.time_ms < episode.liveness_start_ms]
        assert window and any(op.outcome is not EventType.OK for op in window)
        assert all(op.completion.time_ms >= episode.liveness_start_ms for op in window if op.outcome is EventType.OK)


def test_the_vote_statistics_flag_exactly_the_approve_everything_replica(mission):
    for configuration in mission.configurations:
        flagged = [row["replica"] for row in configuration.votes if row["flagged"]]
        assert flagged == [configuration.compromised]
        assert configuration.policy_names[configuration.compromised] == "approve-everything"
        assert "rate" in configuration.policy_names  # The honest replica that approves the most is not flagged.


def test_a_content_blind_replica_that_denies_bursts_is_not_flagged():
    events = []
    for number in range(1, 21):
        dangerous, burst = number % 4 == 0, number in (5, 6, 7, 9)
        votes = ((0, "DENY" if dangerous else "ALLOW"), (1, "DENY" if dangerous else "ALLOW"),
                 (2, "DENY" if burst else "ALLOW"), (3, "ALLOW"), (4, "DENY" if dangerous or number == 3 else "ALLOW"))
        events += [Event(EventType.INVOKE, number, "c", "c", number, number),
                   Event(EventType.OK, number, "c", "c", number, number + 1, verdict="DENY" if dangerous else "ALLOW",
                         seq=number, votes=votes, certificate="x")]
    rows = vote_statistics([History(events)], 5)
    assert [row["flagged"] for row in rows] == [False, False, False, True, False]
    assert rows[2]["contested_approval_rate"] == 1.0  # Replica 2 also approves what the others deny ...
    assert rows[3]["contested"] == 5 and rows[3]["contested_allow"] == 5


def test_episodes_use_the_same_fault_kinds_at_both_sizes_and_only_honest_victims():
    for seed in range(5):
        plans = {count: plan_episodes(seed, count, compromised=count - 1) for count in (5, 7)}
        for five, seven in zip(plans[5], plans[7]):
            assert five.name == seven.name and five.window_ms == seven.window_ms
        assert [kind for _, kind in plans[5][1].down] == [kind for _, kind in plans[7][1].down]
        for count, plan in plans.items():
            victims = [r for episode in plan for r, _ in episode.down] + [r for episode in plan for r in episode.slow]
            assert count - 1 not in victims
            assert plan[3].down[0][0] == 0 and all(0 not in dict(episode.down) for episode in plan[:3])


# ----------------------------------------------------------------- the checks can fail


def _shift_completion(history: History, operation_id: int, time_ms: int, **changes) -> History:
    """A copy of ``history`` with one operation's completion moved to ``time_ms`` (and fields changed)."""
    events = []
    for event in history.events:
        if event.operation_id == operation_id and event.type is not EventType.INVOKE:
            event = dataclasses.replace(event, time_ms=time_ms, **changes)
        events.append(event)
    return History(sorted(events, key=lambda event: (event.time_ms, event.type is EventType.INVOKE)))


def test_the_fail_closed_check_catches_a_verdict_certified_without_a_quorum(mission):
    episode = mission.configurations[0].episode("no-quorum")
    inside = next(op for op in episode.history.operations() if op.outcome is EventType.OK
                  and episode.window_start_ms <= op.invoke.time_ms < episode.liveness_start_ms)
    forged = dataclasses.replace(episode, history=_shift_completion(episode.history, inside.operation_id,
                                                                    inside.invoke.time_ms + 50))
    outcome = check_fails_closed(forged)
    assert outcome.validity is Validity.INVALID and "without a quorum" in outcome.summary


def test_the_corner_cutting_check_catches_a_verdict_faster_than_any_correct_protocol(mission):
    episode = mission.configurations[0].episode("down-plus-slow")
    inside = next(op for op in episode.history.operations()
                  if episode.window_start_ms <= op.invoke.time_ms < episode.liveness_start_ms - 200)
    donor = next(op for op in episode.history.operations() if op.outcome is EventType.OK)
    completion = donor.completion
    forged_history = _shift_completion(episode.history, inside.operation_id, inside.invoke.time_ms + 100,
                                       type=EventType.OK, verdict=completion.verdict, seq=completion.seq,
                                       certificate=completion.certificate, note=None)
    outcome = check_no_corner_cutting(dataclasses.replace(episode, history=forged_history))
    assert outcome.validity is Validity.INVALID and "floor" in outcome.summary


def test_the_honest_majority_check_catches_an_allow_the_honest_majority_denied(mission):
    episode = mission.configurations[0].episode("tolerated")
    denied = next(op for op in episode.history.operations()
                  if op.outcome is EventType.OK and op.verdict == "DENY" and episode.actions[op.key].dangerous)

    class Recorded:
        def __init__(self, decision):
            self.decisions = {denied.key: decision}

    replica_count, compromised = 5, 4
    policies = {r: Recorded(Decision.ALLOW if r == compromised else Decision.DENY) for r in range(replica_count)}
    assert check_honest_majority(episode.history, policies, compromised).validity is Validity.VALID
    flipped = _shift_completion(episode.history, denied.operation_id, denied.completion.time_ms, verdict="ALLOW")
    outcome = check_honest_majority(flipped, policies, compromised)
    assert outcome.validity is Validity.INVALID and "honest majority" in outcome.summary


# ----------------------------------------------------------------- the command line and the report


def test_the_command_line_prints_the_comparison_writes_the_report_and_fails_on_a_violation(mission, monkeypatch,
                                                                                            tmp_path):
    five_only = dataclasses.replace(mission, configurations=mission.configurations[:1])
    monkeypatch.setattr("harness._mission.run_mission", lambda seed, counts, gaps: five_only)
    out = io.StringIO()
    assert main(["scenario", "mission", "--seed", str(SEED), "--out", str(tmp_path)], out) == 0
    text = out.getvalue()
    assert "mission seed 0 (simulation): VALID" in text and "slow quorum only" in text and "no correct protocol" in text
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["validity"] == "valid" and [c["replicas"] for c in results["configurations"]] == [5]
    for configuration in results["configurations"]:
        flagged = [row["replica"] for row in configuration["vote_statistics"] if row["flagged"]]
        assert flagged == [configuration["compromised_replica"]]
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,iVBORw0KGgo") == 4 and "Votes per replica" in page
    assert (tmp_path / "n5-down-plus-slow.history.jsonl").exists()

    episode = five_only.configurations[0].episodes[0]
    broken = dataclasses.replace(episode.checks["honest_majority"], validity=Validity.INVALID)
    monkeypatch.setitem(episode.checks, "honest_majority", broken)
    monkeypatch.setattr("harness._report.plot_png", lambda episode: b"")  # The exit status is what is tested.
    assert main(["scenario", "mission", "--out", str(tmp_path / "again")], io.StringIO()) == 1


def test_requests_before_the_faults_are_warm_up_and_outside_the_latency_bounds(mission):
    episode = mission.configurations[0].episodes[0]
    assert episode.regime(episode.window_start_ms - 1) == WARM_UP
    assert episode.regime(episode.window_start_ms) == BOUNDED  # The tolerated episode keeps a fast quorum.


def test_a_missed_latency_bound_names_the_episodes_whose_host_had_no_cpu_to_spare(mission, monkeypatch):
    tolerated, down_plus_slow, no_quorum, _ = mission.configurations[1].episodes
    assert no_quorum.spec.name == "no-quorum" and not any(no_quorum.samples()[BOUNDED].values())
    busy = [dataclasses.replace(tolerated, host_cpu=HostCpu(0.93, 0.6, 12)),
            dataclasses.replace(down_plus_slow, host_cpu=HostCpu(0.7, 0.1, 12)),
            dataclasses.replace(no_quorum, host_cpu=HostCpu(0.9, 0.5, 12))]  # No bounded latencies: not named.
    assert check_latency_bounds(busy).validity is Validity.VALID  # The figure never changes a verdict.
    monkeypatch.setitem(LATENCY_BOUNDS_MS, Risk.LOW, 1)
    missed = check_latency_bounds(busy)
    assert missed.validity is Validity.INVALID
    saturated = [line for line in missed.details if "busy" in line]
    assert saturated == [f"tolerated: host CPU 93% busy, saturated 60% of the time "
                         f"({os.cpu_count()} cores), so its latencies include waiting for a CPU"]


def test_host_cpu_busy_comes_from_the_first_line_of_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 40 5 5 0 0 0\ncpu0 50 0 25 400 20 2 3 0 0 0\n")
    start = read_cpu_times(stat)
    assert start == CpuTimes(busy_ticks=160, total_ticks=1000)
    stat.write_text("cpu  400 0 110 860 40 20 10 0 0 0\n")
    assert busy_fraction(start, read_cpu_times(stat)) == pytest.approx(380 / 440)
    stat.write_text("intr 1 2 3\n")
    assert read_cpu_times(stat) is None and read_cpu_times(tmp_path / "missing") is None
    assert busy_fraction(start, None) is None and busy_fraction(start, start) is None


def test_the_host_cpu_monitor_counts_the_intervals_at_least_90_percent_busy(tmp_path):
    stat = tmp_path / "stat"
    monitor = HostCpuMonitor(stat)
    stat.write_text("cpu  0 0 0 0 0 0 0 0\n")
    monitor.start()
    for busy, total in ((95, 100), (150, 200), (245, 300)):  # Intervals 95%, 55% and 95% busy.
        stat.write_text(f"cpu  {busy} 0 0 {total - busy} 0 0 0 0\n")
        monitor._sample()
    summary = monitor.summary()
    assert summary == HostCpu(mean_busy=pytest.approx(245 / 300), saturated_share=pytest.approx(2 / 3), intervals=3)
    assert summary.describe() == "host CPU 82% busy, saturated 67% of the time"
    assert HostCpuMonitor(tmp_path / "missing").summary() is None


def test_the_default_rate_keeps_the_gaps_every_earlier_mission_used_and_other_rates_keep_their_mean():
    assert (DEFAULT_ARRIVALS.min_ms, DEFAULT_ARRIVALS.max_ms) == (40, 120)  # 12.5 requests a second.
    for rate in (1, 4, 8.3, 12.5, 20, 50):
        gaps = ArrivalGaps.for_rate(rate)
        assert gaps.min_ms >= 10 and gaps.min_ms % 10 == 0 and gaps.max_ms % 10 == 0
        assert (gaps.min_ms + gaps.max_ms) / 2 == pytest.approx(1000 / rate, abs=5)  # The draw is uniform.
    rng = random.Random(1)
    draws = [ArrivalGaps.for_rate(8).draw(rng) for _ in range(2000)]
    assert min(draws) == 60 and max(draws) == 190


@pytest.mark.parametrize("rate", [0, 0.5, 51, float("nan")])
def test_a_rate_outside_the_supported_range_is_refused_with_the_range(rate):
    with pytest.raises(ValueError, match=r"must be in \[1, 50\]"):
        ArrivalGaps.for_rate(rate)


def test_the_command_line_passes_the_rate_on_and_refuses_it_where_it_means_nothing(mission, monkeypatch, tmp_path,
                                                                                  capsys):
    five_only = dataclasses.replace(mission, configurations=mission.configurations[:1])
    asked = []

    def run(seed, counts, gaps):
        asked.append(gaps)
        return dataclasses.replace(five_only, gaps=gaps)

    monkeypatch.setattr("harness._mission.run_mission", run)
    out = io.StringIO()
    assert main(["scenario", "mission", "--rate", "8", "--out", str(tmp_path)], out) == 0
    assert asked == [ArrivalGaps.for_rate(8)] and "at 8 a second" in out.getvalue()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["rate_per_s"] == 8 and results["arrival_gap_ms"] == [60, 190]
    assert results["reproduce"] == "python -m harness scenario mission --seed 0 --replicas 5 --rate 8"
    assert "offer 8 requests a second together (gaps of\n60-190 ms)" in (tmp_path / "report.html").read_text()
    for argv in (["scenario", "mission", "--rate", "0"], ["scenario", "isolation", "--rate", "8"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv, io.StringIO())
        assert exit_info.value.code == 2
    assert "must be in [1, 50]" in capsys.readouterr().err


# ----------------------------------------------------------------- real processes (a smoke run)


SAFETY_CHECKS = ("invariants", "linearizability", "real_time_order", "certified_verdicts", "honest_majority",
                 "dangerous_actions", "liveness_after_heal")


def test_a_real_process_episode_behind_fault_proxies_keeps_every_safety_check(tmp_path):
    result = run_real_mission(SEED, (5,), tmp_path, episode_names=("tolerated",))
    configuration = result.configurations[0]
    episode = configuration.episodes[0]
    assert result.real and episode.spec.name == "tolerated"
    failing = {name: check.details for name, check in episode.checks.items()
               if name in SAFETY_CHECKS and check.validity is not Validity.VALID}
    assert not failing and set(SAFETY_CHECKS) <= set(episode.checks)
    assert sum(op.outcome is EventType.OK for op in episode.history.operations()) >= 10
    assert [row["replica"] for row in configuration.votes if row["flagged"]] == [configuration.compromised]
    warm_up = [op for op in episode.history.operations() if op.invoke.time_ms < episode.window_start_ms]
    assert len(warm_up) == WARM_UP_REQUESTS and all(op.outcome is EventType.OK for op in warm_up)
    assert {episode.regime(op.invoke.time_ms) for op in warm_up} == {WARM_UP}  # Not under the latency bounds.
    if read_cpu_times() is not None:  # Linux: the host's CPU use over the episode is recorded.
        assert 0.0 <= episode.host_cpu.mean_busy <= 1.0 and 0.0 <= episode.host_cpu.saturated_share <= 1.0
        assert episode.host_cpu.intervals >= 8  # Sampled every 0.25 s over a run of several seconds.
    # Wall-clock latency on a shared machine (an fsync per persist, every process on two cores) is reported in
    # the result's latency_bounds check, not asserted here.


def test_a_real_process_episode_with_a_crash_ends_its_faulty_window_when_the_restart_begins(tmp_path):
    """Seed 2 at n=5: replica 4 is SIGKILLed and another replica sits behind 500 ms links.  The window
    closes when the harness starts lifting the faults (a restarted replica may complete a quorum at
    once), and the requests that must finalize run once the cluster has reconnected."""
    result = run_real_mission(2, (5,), tmp_path, episode_names=("down-plus-slow",))
    episode = result.configurations[0].episodes[0]
    assert [kind for _, kind in episode.spec.down] == ["crash"] and episode.spec.slow
    checks = {name: episode.checks[name].validity for name in
              ("invariants", "no_corner_cutting", "liveness_after_heal")}
    assert checks == dict.fromkeys(checks, Validity.VALID), {n: episode.checks[n].details for n in checks}
    healed = [op for op in episode.history.operations() if op.invoke.time_ms >= episode.liveness_start_ms]
    assert len(healed) >= 5
    # The restart (a fresh Python process importing the runtime, then reconnecting) lies between the end
    # of the window and the first healed request; timing the window after it let a quorum form inside it.
    assert min(op.invoke.time_ms for op in healed) - episode.liveness_start_ms > 100
