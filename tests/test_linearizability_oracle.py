"""The search agrees with a brute-force oracle on random tiny histories for every shipped model, indeterminate
operations included; every failure it reports is a real conflict (relaxing the named operation makes the
relaxed sub-history linearizable, keeping it does not); and an open invocation anywhere is judged correctly."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from harness.linearizability import (MODELS, Event, Op, Outcome, Register, Status, brute_force_linearizable, check,
                                     pair_events)
from harness.linearizability._checker import relaxed

VALUES = (0, 1, 2)
KV_STRINGS = ("", "a", "b", "ab", "ba")


def _input_and_output(draw, model_name: str, f: str):
    """An input and an observed result from small domains, so legal and illegal histories both come up."""
    value = st.sampled_from(VALUES)
    if model_name in ("register", "cas-register"):
        if f == "write":
            written = draw(value)
            return written, written
        if f == "read":
            return None, draw(st.sampled_from((None,) + VALUES))
        pair = (draw(st.sampled_from((None,) + VALUES)), draw(value))
        return pair, draw(st.sampled_from((pair, False)))
    if model_name == "kv":
        if f == "get":
            return None, draw(st.sampled_from(KV_STRINGS))
        written = draw(st.sampled_from(("a", "b")))
        return written, written
    if model_name == "set":
        if f == "add":
            element = draw(value)
            return element, element
        return None, frozenset(draw(st.sets(value)))
    if model_name == "mutex":
        return None, None
    if model_name == "multi-register":
        micro = st.tuples(st.sampled_from(("read", "write")), st.sampled_from(("x", "y")), value)
        txn = draw(st.lists(micro, min_size=1, max_size=2))
        given_txn = tuple((f, name, None if f == "read" else v) for f, name, v in txn)
        seen = tuple((f, name, v if f == "write" else draw(st.sampled_from((None,) + VALUES))) for f, name, v in txn)
        return given_txn, seen
    return None, (draw(st.sampled_from(("ALLOW", "DENY"))), draw(st.sampled_from((1, 2))))


@st.composite
def histories(draw, model_name: str, size_max: int = 7) -> list[Op]:
    """Up to ``size_max`` operations with random overlapping intervals (ends may touch); some indeterminate."""
    model = MODELS[model_name]()
    count = draw(st.integers(1, size_max))
    ops = []
    for number in range(count):
        call = draw(st.integers(0, 2 * count))
        ret = call + draw(st.integers(0, count))
        f = draw(st.sampled_from(model.functions))
        given_value, observed = _input_and_output(draw, model_name, f)
        key = draw(st.sampled_from(("x", "y"))) if model_name == "kv" else \
            draw(st.sampled_from((("alice", 1), ("bob", 1)))) if model_name == "verdict" else None
        open_ended = draw(st.integers(0, 3)) == 0
        ops.append(Op(number=number, process=number, f=f, input=given_value, output=None if open_ended else observed,
                      status=Status.INFO if open_ended else Status.OK, call=call, ret=None if open_ended else ret,
                      key=key))
    return ops


@pytest.mark.parametrize("model_name", sorted(MODELS))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_search_agrees_with_the_brute_force_oracle(model_name: str, data):
    ops = data.draw(histories(model_name))
    model = MODELS[model_name]()
    result = check(ops, model)
    assert result.outcome is not Outcome.UNKNOWN
    assert (result.outcome is Outcome.OK) == brute_force_linearizable(ops, model), [op.describe() for op in ops]


@pytest.mark.parametrize("model_name", sorted(MODELS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_reported_conflict_is_real_and_the_named_operation_cannot_be_placed(model_name: str, data):
    ops = data.draw(histories(model_name))
    model = MODELS[model_name]()
    result = check(ops, model)
    if result.outcome is not Outcome.ILLEGAL:
        return
    failure = result.failure
    assert failure.minimal and failure.unplaceable in failure.observed
    as_checked = [op if op in failure.observed else _relax(op) for op in failure.sub_history]
    assert not brute_force_linearizable(as_checked, model)
    without_named = [_relax(op) if op.number == failure.unplaceable.number else op for op in as_checked]
    assert brute_force_linearizable(without_named, model), failure.describe()


def _relax(op: Op) -> Op:
    return relaxed(op) if op.status is Status.OK else op


# ----------------------------------------------------------------- open invocations


def _sequential_register_events() -> list[Event]:
    """A valid sequential history: write 1, read 1, write 2, read 2 (one process each)."""
    events = []
    for process, (f, value) in enumerate((("write", 1), ("read", 1), ("write", 2), ("read", 2))):
        events += [Event(process, "invoke", f, value if f == "write" else None), Event(process, "ok", f, value)]
    return events


@pytest.mark.parametrize("position", range(9))
@pytest.mark.parametrize("written", (1, 2, 3))
def test_an_open_write_at_every_position_is_judged_as_the_oracle_says(position: int, written: int):
    events = _sequential_register_events()
    events.insert(position, Event("crashed", "invoke", "write", written))
    ops = pair_events(events)
    assert any(op.ret is None for op in ops)
    model = Register()
    expected = brute_force_linearizable(ops, model)
    assert check(ops, model).ok == expected
    # Valid before the crash; an unobserved write can always be ignored, so it stays valid.
    assert expected


@pytest.mark.parametrize("closed", range(4))
def test_any_operation_left_open_keeps_a_valid_history_valid(closed: int):
    events = _sequential_register_events()
    del events[2 * closed + 1]  # Its completion never came.
    ops = pair_events(events)
    assert check(ops, Register()).ok and brute_force_linearizable(ops, Register())


@pytest.mark.parametrize("position", range(9))
def test_an_open_invocation_does_not_excuse_a_stale_read(position: int):
    events = _sequential_register_events()
    events[-1] = dataclasses.replace(events[-1], value=1)  # The last read sees 1 after 2 was written.
    events.insert(position, Event("crashed", "invoke", "write", 7))
    ops = pair_events(events)
    assert check(ops, Register()).outcome is Outcome.ILLEGAL
    assert not brute_force_linearizable(ops, Register())
