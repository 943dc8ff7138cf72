"""Reconfiguration through consensus works end to end in the simulator: the window stops at the activation seq,
the switch happens at its stable checkpoint, replicas of another epoch are rejected as wrong-epoch, a replacement
joins by state transfer, and the full n=4 -> 7 -> 4 run with a replacement and two key rotations keeps every
invariant, judged per epoch, with verdicts continuing and S11 catching the planted old-epoch mutant."""

from __future__ import annotations

import json

import pytest

from bft.core import Prepare, Risk
from harness._mutants import MUTANTS
from harness._reconfiguration import CLIENT, Reconfiguration, _key, reconfigure_all, run_reconfiguration


def _replace_replica_3(run: Reconfiguration) -> int:
    replaced = run.config.replica_keys[:3] + (_key("replacement-3").public_key,)
    return run.change(replaced)


def test_the_old_epoch_orders_nothing_above_the_activation_seq() -> None:
    run = Reconfiguration(seed=3)
    run.settle("genesis")
    activation = _replace_replica_3(run)
    assert activation > 0, run.findings
    backup = run.cluster.replicas[1]
    assert backup.epochs.number == 0 and backup.epochs.ceiling() == activation
    assert backup.high_water <= activation  # The window never passes a in the old epoch.
    primary_id = backup.primary_id
    above = run.cluster.replicas[primary_id]._sign(Prepare(backup.view, activation + 1, bytes(32), primary_id,
                                                           bytes(64)))
    ready = backup.step(above)
    assert [rejection.reason for rejection in ready.rejected] == ["wrong-epoch"]
    assert run.findings == []


def test_a_replacement_joins_by_state_transfer_and_the_old_key_is_rejected() -> None:
    run = Reconfiguration(seed=4)
    run.settle("genesis")
    old_replica = run.cluster.replicas[3]
    activation = _replace_replica_3(run)
    assert run.run_until(lambda: run.activated((0, 1, 2)), "activation")
    survivor = run.cluster.replicas[0]
    assert survivor.low_water >= activation and survivor.epochs.starts_after == activation
    assert survivor.view > 0  # The new epoch started in a later view.
    # A seq the survivor holds no slot for: a PREPARE for a slot already prepared is held unverified (step 7).
    free_seq = next(seq for seq in range(survivor.low_water + 1, survivor.low_water + 9)
                    if survivor.normal.current_slot(seq) is None)
    old_key_prepare = old_replica._sign(Prepare(survivor.view, free_seq, bytes(32), 3, bytes(64)))
    counted = survivor.rejected_counts["wrong-epoch"]
    assert [r.reason for r in survivor.step(old_key_prepare).rejected] == ["wrong-epoch"]
    assert survivor.rejected_counts["wrong-epoch"] == counted + 1
    run.join(3, "replacement-3")
    assert run.run_until(lambda: run.activated(range(4)), "the replacement catching up")
    assert run.cluster.replicas[3].transfer_counts["adopted"] >= 1
    run.settle("replaced")
    assert run.findings == []


@pytest.mark.slow
def test_four_to_seven_to_four_with_a_replacement_and_key_rotations_keeps_every_invariant() -> None:
    run_findings = run_reconfiguration(seed=0)
    assert run_findings == []


@pytest.mark.slow
def test_verdicts_continue_in_every_epoch_and_refusals_come_only_from_epoch_switches() -> None:
    run = Reconfiguration(seed=1)
    reconfigure_all(run)
    assert run.findings == []
    bounds = [starts_after for starts_after, _ in run.chain] + [10**9]
    certified = [r.certificate.seq for r in run.cluster.operations.values() if r.certificate]
    for index in range(len(run.chain)):
        assert any(bounds[index] < seq <= bounds[index + 1] for seq in certified), f"no verdict in epoch {index}"
    refused = [r.invoked_ms for r in run.cluster.operations.values() if r.refused]
    outside = [t for t in refused if not any(start <= t <= end for start, end in run.switch_windows)]
    assert len(run.switch_windows) == 4 and outside == [], f"{len(outside)} refused outside an epoch switch"
    log = run.cluster.stores[0].load().log
    changes = [json.loads(e.events)[0] for e in log if e.client_id == "operator:alice" and e.events]
    assert [change["epoch"] for change in changes] == [1, 2, 3, 4]
    assert [change["replicas"] for change in changes] == [7, 4, 4, 4]
    rotated = run.cluster.replicas[1]
    assert rotated.epochs.number == 4 and not rotated.epochs.retired  # It kept running, with its new key.
    assert rotated.config.replica_keys[1] == _key("rotated-1").public_key
    removed = [run.cluster.replicas[r] for r in (4, 5, 6)]
    assert all(r.epochs.retired or r.low_water < run.chain[2][0] for r in removed)  # Stopped, or never got there.
    assert run.cluster.clients[CLIENT].new_request({"tool": "read"}, Risk.LOW, 10**15)  # Signs with the new key.


@pytest.mark.slow
def test_the_old_epoch_ordering_past_activation_is_caught_by_s11() -> None:
    with MUTANTS["old-epoch-orders-past-activation"].activate():
        findings = run_reconfiguration(seed=0)
    assert any(finding.startswith("S11:") for finding in findings), findings[:5]


@pytest.mark.slow
def test_a_member_restarted_after_an_activation_resumes_in_the_new_epoch() -> None:
    run = Reconfiguration(seed=2)
    run.settle("genesis")
    grown = run.config.replica_keys + tuple(_key(f"joiner-{i}").public_key for i in (4, 5, 6))
    run.change(grown)
    for replica_id in (4, 5, 6):
        run.join(replica_id, f"joiner-{replica_id}")
    assert run.run_until(lambda: run.activated(range(7)), "growing to n=7")
    run.settle("n=7")
    run.cluster.crash(0)
    run.cluster.run(200)
    run.cluster.restart(0)  # From its store: the log rebuilds the chain, the stable proof is epoch 1's quorum.
    restarted = run.cluster.replicas[0]
    assert restarted.epochs.number == 1 and restarted.quorum == 5
    run.settle("after the restart")
    assert run.findings == []
