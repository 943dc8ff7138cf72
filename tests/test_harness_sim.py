"""The simulation harness finds no violation in correct runs under every fault kind, and does find the ones we
plant: fixed seeds run valid and reproducibly; histories corrupted on purpose (a flipped verdict, a
contradicting retry, an inverted order, a forged certificate) are reported invalid, with the exact command to
reproduce the run; the nemesis keeps to f faulty replicas and heals as documented; reports are written."""

from __future__ import annotations

import base64
import dataclasses
import io
import json

import pytest
from hypothesis import given, settings, strategies as st

from bft.testing import ApproveEverything, NetworkFaults, SimCluster
from harness import (Event, EventType, FaultEvent, History, Nemesis, RunResult, Validity, check_keys, check_run,
                     history_from_cluster, plan_faults, run_simulation, settings_for_seed)
from harness.__main__ import describe_run, describe_swarm, exit_status, main
from harness._nemesis import FAULT_KINDS, PARTITION_KINDS, bridge_links, majorities_ring_links
from harness._report import vote_statistics, write_report
from harness._swarm import LivenessOutcome, SwarmSummary, ToolPolicy

pytestmark = pytest.mark.slow  # simulator swarms and the harness command line: make test runs it, make test-fast does not

FAST = {"replica_count": 4, "request_count": 8}
SEEDS = (0, 2, 4, 5)


@pytest.fixture(scope="module")
def runs() -> dict[int, RunResult]:
    return {seed: run_simulation(settings_for_seed(seed, **FAST)) for seed in SEEDS}


def test_fixed_seeds_are_valid_and_live(runs):
    for seed, result in runs.items():
        bad = {name: check.details for name, check in result.checks.items() if check.validity is not Validity.VALID}
        assert result.validity is Validity.VALID, (seed, bad)
        assert result.liveness.status == "ok", (seed, result.liveness.to_json())
        assert set(result.checks) == {"invariants", "linearizability", "real_time_order", "durability",
                                      "certified_verdicts"}
        assert sum(op.outcome is EventType.OK for op in result.history.operations()) >= 5


def test_fixed_seeds_exercise_partitions_network_crash_and_byzantine_faults(runs):
    exercised = {event.coverage_name for result in runs.values() for event in result.faults
                 if event.applied_start_ms is not None}
    assert {"crash", "network-drop", "network-delay", "partition-isolated-primary"} <= exercised
    assert any(name.startswith("byzantine:") for name in exercised)


def test_a_larger_cluster_with_f_2_is_valid():
    result = run_simulation(settings_for_seed(6, replica_count=7, request_count=8))
    assert result.validity is Validity.VALID, {n: c.details for n, c in result.checks.items()}
    assert result.cluster.config.faulty_max == 2


def test_a_seed_reproduces_the_same_run_exactly(runs):
    again = run_simulation(settings_for_seed(2, **FAST))
    assert again.history.to_jsonl() == runs[2].history.to_jsonl()
    assert [event.to_json() for event in again.faults] == [event.to_json() for event in runs[2].faults]


def test_a_plain_simulator_run_becomes_a_history_with_every_outcome():
    cluster = SimCluster(4, seed=5)
    answered = cluster.submit("client-0", {"tool": "read_file"})
    expired = cluster.submit("client-0", {"tool": "read_file"}, deadline_ms=cluster.now_ms - 1)
    cluster.run_until(cluster.all_done, max_ms=5_000)
    unanswered = cluster.submit("client-0", {"tool": "read_file"})
    history = history_from_cluster(cluster)
    outcomes = {op.key: op.outcome for op in history.operations()}
    assert outcomes == {answered.key: EventType.OK, expired.key: EventType.INFO, unanswered.key: EventType.INFO}
    assert check_keys(history).validity is Validity.VALID and len(history) == 6


# ----------------------------------------------------------------- corrupted histories are caught


def corrupted(result: RunResult, events: list[Event]) -> dict:
    return check_run(History(events), result.cluster, result.byzantine)


def first_ok(result: RunResult, verdict: str | None = None) -> int:
    return next(index for index, event in enumerate(result.history.events)
                if event.type is EventType.OK and (verdict is None or event.verdict == verdict))


def test_a_flipped_verdict_is_invalid_for_certificates_and_durability(runs):
    result = runs[0]
    events = list(result.history.events)
    ok_keys = [event.key for event in events if event.type is EventType.OK]
    index = next(i for i, event in enumerate(events) if event.type is EventType.OK and ok_keys.count(event.key) == 1)
    events[index] = dataclasses.replace(events[index], verdict="DENY" if events[index].verdict == "ALLOW" else "ALLOW")
    checks = corrupted(result, events)
    assert checks["certified_verdicts"].validity is Validity.INVALID
    assert checks["durability"].validity is Validity.INVALID
    assert checks["linearizability"].validity is Validity.VALID  # One observation alone is consistent.


def test_a_retry_contradicting_the_first_answer_is_not_linearizable(runs):
    result = runs[2]
    original = result.history.events[first_ok(result)]
    last = result.history.events[-1].time_ms
    flipped = "DENY" if original.verdict == "ALLOW" else "ALLOW"
    retry = [Event(EventType.INVOKE, 10_000, original.process, original.client_id, original.request_number, last),
             dataclasses.replace(original, operation_id=10_000, time_ms=last + 1, verdict=flipped)]
    checks = corrupted(result, list(result.history.events) + retry)
    assert checks["linearizability"].validity is Validity.INVALID
    assert original.client_id in " ".join(checks["linearizability"].details)


def test_an_inverted_order_of_two_sequential_verdicts_is_invalid(runs):
    result = runs[4]
    operations = [op for op in result.history.operations() if op.outcome is EventType.OK]
    earlier, later = next((a, b) for a in operations for b in operations
                          if a.key != b.key and a.complete_index < b.invoke_index and a.seq < b.seq
                          and all(op.key != b.key or op.invoke_index >= b.invoke_index for op in operations))
    events = list(result.history.events)
    events[earlier.complete_index] = dataclasses.replace(events[earlier.complete_index], seq=later.seq)
    events[later.complete_index] = dataclasses.replace(events[later.complete_index], seq=earlier.seq)
    checks = corrupted(result, events)
    assert checks["real_time_order"].validity is Validity.INVALID
    assert checks["certified_verdicts"].validity is Validity.INVALID


def test_an_allow_with_a_forged_certificate_is_invalid(runs):
    result = next(r for r in runs.values() if any(e.verdict == "ALLOW" for e in r.history.events))
    events = list(result.history.events)
    index = first_ok(result, "ALLOW")
    raw = bytearray(base64.b64decode(events[index].certificate))
    raw[-1] ^= 0xFF  # The last byte is inside the last reply's signature.
    events[index] = dataclasses.replace(events[index], certificate=base64.b64encode(bytes(raw)).decode())
    checks = corrupted(result, events)
    assert checks["certified_verdicts"].validity is Validity.INVALID
    assert "certificate does not verify" in checks["certified_verdicts"].details[0]


def test_a_failing_run_prints_the_command_that_reproduces_it(runs):
    result = runs[5]
    events = list(result.history.events)
    index = first_ok(result)
    events[index] = dataclasses.replace(events[index], seq=events[index].seq + 1_000)
    failing = dataclasses.replace(result, checks=corrupted(result, events))
    assert failing.validity is Validity.INVALID
    out = io.StringIO()
    describe_swarm(SwarmSummary([runs[0], failing], wall_seconds=1.0), out)
    text = out.getvalue()
    assert "FAILED seed 5 [invalid]" in text and "FAILED seed 0" not in text
    assert "reproduce with: python -m harness sim --seed 5 --replicas 4 --requests 8" in text
    assert "2.00 runs/s" in text and "fault coverage" in text
    single = io.StringIO()
    describe_run(failing, single)
    assert "reproduce with: python -m harness sim --seed 5 --replicas 4 --requests 8" in single.getvalue()
    assert exit_status([runs[0], failing], liveness_required=True) == 1


def test_an_exception_inside_a_run_is_an_invalid_result_not_a_crash(monkeypatch):
    def broken_quiesce(cluster):
        raise AssertionError("planted: a core invariant broke")
    monkeypatch.setattr("harness._swarm._quiesce", broken_quiesce)
    result = run_simulation(settings_for_seed(1, replica_count=4, request_count=3))
    assert result.validity is Validity.INVALID and set(result.checks) == {"run"}
    assert "planted: a core invariant broke" in result.checks["run"].summary
    assert any("broken_quiesce" in line for line in result.checks["run"].details)
    assert len(result.history) > 0  # What the clients saw before the failure is kept for the report.
    out = io.StringIO()
    describe_run(result, out)
    assert "reproduce with: python -m harness sim --seed 1 --replicas 4 --requests 3" in out.getvalue()


def test_a_stalled_liveness_phase_is_reported_apart_from_safety(runs):
    stalled = dataclasses.replace(runs[0], liveness=LivenessOutcome("stalled", 3, 1, 10_000, ["client-0#9"],
                                                                   ["replica 0: view 0, last executed seq 4"]))
    assert stalled.validity is Validity.VALID
    assert exit_status([stalled], liveness_required=True) == 2
    assert exit_status([stalled], liveness_required=False) == 0
    out = io.StringIO()
    describe_run(stalled, out)
    assert "1 of 3 requests finalized" in out.getvalue() and "stalled: client-0#9" in out.getvalue()
    assert "reproduce with: python -m harness sim --seed 0" in out.getvalue()


# ----------------------------------------------------------------- the command line and reports


def test_the_command_line_runs_a_swarm_and_writes_a_report(tmp_path):
    out = io.StringIO()
    assert main(["sim", "--seeds", "2", "--first-seed", "7", "--replicas", "4", "--requests", "5"], out) == 0
    assert "2 runs in" in out.getvalue() and "valid    2" in out.getvalue()
    out = io.StringIO()
    assert main(["sim", "--seed", "3", "--replicas", "4", "--requests", "6", "--out", str(tmp_path)], out) == 0
    assert "seed 3: VALID, liveness ok" in out.getvalue()
    history = History.from_jsonl((tmp_path / "history.jsonl").read_text())
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["validity"] == "valid" and results["operations"] == len(history.operations()) > 0
    assert len(results["vote_statistics"]) == 4
    page = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64,iVBORw0KGgo" in page and "python -m harness sim --seed 3" in page


def test_a_replica_approving_far_more_than_its_peers_is_flagged():
    events = []
    for number in range(1, 11):
        denied = number % 2 == 0  # Correct replicas deny every other request; replica 3 approves all.
        votes = tuple((replica, "DENY" if denied and replica != 3 else "ALLOW") for replica in range(4))
        events += [Event(EventType.INVOKE, number, "c", "c", number, number),
                   Event(EventType.OK, number, "c", "c", number, number + 1, verdict="DENY" if denied else "ALLOW",
                         seq=number, votes=votes, certificate="x")]
    rows = vote_statistics(History(events), 4)
    assert [row["flagged"] for row in rows] == [False, False, False, True]
    assert rows[3]["approval_rate"] == 1.0 and rows[0]["approval_rate"] == 0.5


def test_write_report_shows_flagged_replicas_and_faults(runs, tmp_path):
    page = write_report(runs[4], tmp_path / "run").read_text()
    assert "Votes per replica" in page and "fault timeline" in page
    assert all(event.coverage_name in page for event in runs[4].faults if event.applied_start_ms is not None)


# ----------------------------------------------------------------- the nemesis


@pytest.mark.parametrize("count", [4, 5, 7, 10])
def test_majorities_ring_gives_each_replica_a_different_majority(count):
    blocked = majorities_ring_links(list(range(count)))
    visible = [frozenset(b for b in range(count) if (a, b) not in blocked) for a in range(count)]
    assert all(len(seen) >= count // 2 + 1 and a in seen for a, seen in enumerate(visible))
    assert len(set(visible)) == count and all(len(seen) < count for seen in visible)


def test_bridge_keeps_one_replica_connected_to_both_halves():
    blocked = bridge_links([3, 0, 1, 2, 4])
    assert not any(3 in link for link in blocked)
    assert (0, 2) in blocked and (2, 0) in blocked and (0, 1) not in blocked


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([4, 5, 7, 10]), st.sets(st.sampled_from(FAULT_KINDS)))
def test_plans_stay_within_f_faulty_replicas_and_one_partition_at_a_time(seed, count, kinds):
    import random
    faulty_max = (count - 1) // 3
    events = plan_faults(random.Random(seed), count, faulty_max, frozenset(kinds), 3_000, can_restart=True)
    assert {event.kind for event in events} <= set(kinds)
    victims = {event.targets for event in events if event.kind in ("crash", "byzantine")}
    assert len(victims) <= faulty_max and all(0 <= target < count for (target,) in victims)
    windows = sorted((e.start_ms, e.end_ms) for e in events if e.kind in PARTITION_KINDS)
    assert all(end <= 3_000 and start < end for start, end in windows)
    assert all(first[1] <= second[0] for first, second in zip(windows, windows[1:]))


def test_nemesis_applies_and_heals_faults_but_keeps_byzantine_backups():
    policies = {i: ToolPolicy(frozenset({"exfiltrate_secrets"})) for i in range(4)}
    cluster = SimCluster(4, seed=1, policies=policies)
    events = [FaultEvent("partition-halves", 0, 100),
              FaultEvent("network-drop", 0, 200, detail={"drop_probability": 0.1}),
              FaultEvent("byzantine", 0, None, (0,), {"strategy": "approve-everything", "strategy_seed": 1}),
              FaultEvent("byzantine", 0, None, (2,), {"strategy": "lying-votes", "strategy_seed": 1})]
    nemesis = Nemesis(cluster, events, seed=3, base_policies=policies)
    nemesis.advance(0)
    assert cluster.blocked_links and cluster.faults.drop_probability == 0.1
    assert isinstance(cluster.policies[0], ApproveEverything) and 2 in cluster.interceptors
    nemesis.advance(150)
    assert not cluster.blocked_links and cluster.faults.drop_probability == 0.1
    assert events[0].applied_end_ms == 150 and nemesis.byzantine_replicas == {0, 2}
    notes = nemesis.heal_for_liveness(160)
    assert cluster.faults == NetworkFaults()
    assert cluster.policies[0] is policies[0]  # The Byzantine primary is healed ...
    assert 2 in cluster.interceptors and events[3].applied_end_ms is None  # ... a Byzantine backup is not.
    assert any("replica 2 stays Byzantine" in note for note in notes)
