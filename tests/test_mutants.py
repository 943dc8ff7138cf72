"""The harness catches every planted protocol bug within its hunt's bound and reports where; the same runs pass
on the unmutated core (so a checker that always fails would not count); mutants patch only while active."""

from __future__ import annotations

import io

import pytest

from harness.__main__ import main
from harness._mutant_hunt import CROSS_CHECKS, HUNT_PLANS, ScenarioPlan, SwarmPlan, baseline, hunt
from harness._mutants import MUTANTS, PATCH_POINTS

pytestmark = pytest.mark.slow  # hunts every planted mutant: make test runs it, make test-fast does not


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_every_mutant_is_caught_within_its_bound_and_the_same_runs_pass_without_it(name):
    plan = HUNT_PLANS[name]
    result = hunt(name)

    assert result.caught, f"{name} escaped: {plan.describe()}"
    assert result.checkers, "a catch names the checker that made it"
    if isinstance(plan, SwarmPlan):
        assert result.seed is not None and 0 <= result.seed < plan.seeds_max
        assert result.reproduce == f"python -m harness mutants --name {name} --seed {result.seed}"
    elif isinstance(plan, ScenarioPlan):
        assert result.where() == f"schedule {plan.scenarios[result.seed]}" and result.details
    else:
        assert 0 < result.runs <= plan.settings.max_states
        assert result.reproduce.startswith(f"python -m harness modelcheck --mutant {name} ")
        assert any(line.strip().startswith("1. deliver") for line in result.details), "the trace is reported"
    assert baseline(plan, result.runs) == [], "the unmutated core must pass the runs that caught the mutant"


@pytest.mark.parametrize("name", sorted(CROSS_CHECKS))
def test_a_classic_pbft_bug_is_caught_by_a_second_checker_too(name):
    first, second = HUNT_PLANS[name], CROSS_CHECKS[name]
    assert first != second, "a cross-check is another plan"
    result = hunt(name, plan=second)
    assert result.caught and result.checkers, f"{name} escaped the cross-check: {second.describe()}"
    assert baseline(second, result.runs) == []


def test_issue_18s_classic_pbft_bugs_are_in_the_catalogue():
    classic = {"reproposal-ignores-highest-view", "new-view-drops-a-prepared-request", "stable-checkpoint-from-f-plus-1",
               "prepared-with-one-prepare-too-few",
               "state-transfer-skips-digest-check", "execute-out-of-order"}
    assert classic <= set(MUTANTS)


def test_every_patch_point_resolves_and_is_used_by_some_mutant():
    for key, point in PATCH_POINTS.items():
        owner, attribute = point.resolve()
        assert getattr(owner, attribute) is not None, key
    used = {key for mutant in MUTANTS.values() for key in mutant.patch_points}
    assert used == set(PATCH_POINTS)
    assert len(MUTANTS) >= 12 and set(HUNT_PLANS) == set(MUTANTS)


def test_a_mutant_patches_the_core_only_inside_its_block():
    originals = {key: point.original() for key, point in PATCH_POINTS.items()}
    for mutant in MUTANTS.values():
        with mutant.activate():
            changed = {key for key, point in PATCH_POINTS.items() if point.original() is not originals[key]}
            # A seam may also be patched only during a call (who counts as primary, while judging a PRE-PREPARE).
            assert changed and changed <= set(mutant.patch_points), mutant.name
        assert all(point.original() is originals[key] for key, point in PATCH_POINTS.items()), mutant.name


def test_the_command_hunts_one_mutant_and_prints_the_table_and_the_reproduction():
    out = io.StringIO()
    assert main(["mutants", "--name", "certificate-accepts-f-replies"], out) == 0
    text = out.getvalue()
    assert "certificate-accepts-f-replies: seed 0 (invariants S3, certified_verdicts" in text
    assert "python -m harness mutants --name certificate-accepts-f-replies --seed 0" in text
    assert "1 of 1 mutants caught" in text


def test_the_command_replays_one_seed_under_a_mutant():
    out = io.StringIO()
    seed = hunt("ignore-deadline").seed  # The first swarm seed that catches it; it moves as the protocol changes.
    assert seed is not None
    assert main(["mutants", "--name", "ignore-deadline", "--seed", str(seed)], out) == 1
    assert "mutant ignore-deadline" in out.getvalue() and "S5" in out.getvalue()


@pytest.mark.parametrize("arguments, message", [
    (["mutants", "--seed", "3"], "--seed needs --name"),
    (["mutants", "--name", "no-such-bug"], "unknown mutant"),
    (["mutants", "--name", "quorum-one-smaller", "--seed", "1"], "hunted by the model checker"),
    (["mutants", "--seeds", "0"], "--seeds must be in"),
])
def test_usage_errors_are_one_sentence_and_exit_2(arguments, message, capsys):
    assert main(arguments, io.StringIO()) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error and len(error.strip().splitlines()) == 1

