"""Small-scope model checking: a bounded exploration of the real core (n=4, one Byzantine replica, two requests)
finds no violation and is deterministic, and the same checker finds planted mutants with a counterexample trace."""

from __future__ import annotations

import io

import pytest

from harness.__main__ import main
from harness._modelcheck import MENU, ModelCheckSettings, run_model_check
from harness._mutants import MUTANTS

pytestmark = pytest.mark.slow  # bounded model checking: make test runs it, make test-fast does not


def test_a_bounded_exploration_of_the_real_core_finds_no_violation():
    settings = ModelCheckSettings(depth=200, max_states=4_000, deviations=1)
    result = run_model_check(settings)

    assert result.counterexample is None, "\n".join(result.describe())
    assert result.states == 4_000 and result.transitions >= result.states - len(MENU) * 2
    # As deep as a whole run of the default schedule (both requests executed and checkpointed), or deeper.
    complete_run_depth = run_model_check(ModelCheckSettings(depth=200, max_states=5_000, deviations=0)).depth_reached
    assert result.depth_reached >= complete_run_depth, "runs go all the way to executed and checkpointed requests"
    assert set(result.states_by_adversary) == set(MENU) and all(result.states_by_adversary.values())


def test_the_default_schedule_of_every_adversary_is_explored_completely_and_deterministically():
    settings = ModelCheckSettings(depth=200, max_states=5_000, deviations=0)
    first, second = run_model_check(settings), run_model_check(settings)

    assert first.counterexample is None and first.exhausted
    assert (first.states, first.transitions, first.depth_reached, first.states_by_adversary) == \
        (second.states, second.transitions, second.depth_reached, second.states_by_adversary)


@pytest.mark.parametrize("mutant, settings, invariant", [
    ("quorum-one-smaller", ModelCheckSettings(depth=200, max_states=2_000, deviations=0), "S1"),
    ("vote-not-bound-to-request", ModelCheckSettings(depth=200, max_states=2_000, deviations=0), "S2"),
    ("send-before-persist", ModelCheckSettings(depth=200, max_states=2_000, deviations=1, time_steps_max=0,
                                               reorders=False, adversaries=("double-preprepare",)), "S7"),
    ("own-messages-ahead-of-the-disk", ModelCheckSettings(depth=200, max_states=2_000, deviations=1, time_steps_max=0,
                                                          reorders=False, adversaries=("double-preprepare",)), "S7"),
])
def test_the_model_checker_finds_mutants_with_a_trace(mutant, settings, invariant):
    with MUTANTS[mutant].activate():
        result = run_model_check(settings)

    counterexample = result.counterexample
    assert counterexample is not None, f"{mutant} escaped the model checker"
    assert any(violation.startswith(f"{invariant}:") for violation in counterexample.violations)
    assert counterexample.trace and all(step.startswith(("deliver ", "time passes", "replica "))
                                        for step in counterexample.trace)
    assert len(counterexample.trace) <= result.depth_reached
    text = "\n".join(result.describe())
    assert "VIOLATION FOUND" in text and f"violated: {invariant}:" in text and "  1. deliver Request" in text


def test_the_command_reports_numbers_and_exit_status():
    out = io.StringIO()
    assert main(["modelcheck", "--depth", "30", "--max-states", "60", "--deviations", "0"], out) == 0
    assert "model check: no violation" in out.getvalue() and "states" in out.getvalue()
    found = io.StringIO()
    assert main(["modelcheck", "--depth", "200", "--deviations", "0", "--adversary", "equivocating-primary",
                 "--mutant", "quorum-one-smaller"], found) == 1
    assert "counterexample with adversary equivocating-primary" in found.getvalue()


@pytest.mark.parametrize("arguments, message", [
    (["modelcheck", "--depth", "0"], "--depth must be in"),
    (["modelcheck", "--depth", "10", "--adversary", "nobody"], "unknown adversary"),
    (["modelcheck", "--depth", "10", "--mutant", "nothing"], "unknown mutant"),
])
def test_usage_errors_are_one_sentence_and_exit_2(arguments, message, capsys):
    assert main(arguments, io.StringIO()) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error and len(error.strip().splitlines()) == 1
