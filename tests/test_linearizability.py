"""The linearizability checker accepts exactly the histories a verdict log can produce: hand-made valid and
invalid histories (conflicting verdicts or seqs for one key, inverted real-time order, info and fail
operations), a read/write register that exercises the search's backtracking, and hypothesis-generated
histories built from a known linearization, which must always be valid (and become invalid once corrupted)."""

from __future__ import annotations

import dataclasses
import random
from typing import Hashable

import pytest
from hypothesis import given, settings, strategies as st

from harness import (Event, EventType, History, HistoryError, Operation, Validity, check_history, check_keys,
                     check_real_time_order, combine, search)

CERTIFICATE = "not-a-real-certificate"  # The checkers never read it; the certificate check lives elsewhere.


def invoke(op: int, key: tuple[str, int], time_ms: int = 0) -> Event:
    return Event(EventType.INVOKE, op, key[0], key[0], key[1], time_ms, risk="low")


def ok(op: int, key: tuple[str, int], verdict: str, seq: int, time_ms: int = 0) -> Event:
    return Event(EventType.OK, op, key[0], key[0], key[1], time_ms, verdict=verdict, seq=seq, certificate=CERTIFICATE)


def info(op: int, key: tuple[str, int], time_ms: int = 0) -> Event:
    return Event(EventType.INFO, op, key[0], key[0], key[1], time_ms)


def fail(op: int, key: tuple[str, int], time_ms: int = 0) -> Event:
    return Event(EventType.FAIL, op, key[0], key[0], key[1], time_ms)


A, B, C = ("alice", 1), ("bob", 1), ("carol", 1)


def validity(*events: Event) -> tuple[Validity, Validity]:
    results = check_history(History(events))
    return results["per_key"].validity, results["real_time_order"].validity


# ----------------------------------------------------------------- per-key verdict register


def test_retries_returning_the_same_verdict_are_valid():
    assert validity(invoke(0, A), invoke(1, A), ok(1, A, "ALLOW", 3), ok(0, A, "ALLOW", 3),
                    invoke(2, A), ok(2, A, "ALLOW", 3)) == (Validity.VALID, Validity.VALID)


def test_two_ok_operations_with_different_verdicts_for_one_key_are_invalid():
    result = check_keys(History([invoke(0, A), ok(0, A, "ALLOW", 3), invoke(1, A), ok(1, A, "DENY", 3)]))
    assert result.validity is Validity.INVALID
    assert result.counterexample["key"] == list(A)
    assert "DENY" in result.counterexample["problem"] or "ALLOW" in result.counterexample["problem"]


def test_the_same_verdict_at_a_different_seq_is_invalid_even_when_concurrent():
    assert validity(invoke(0, A), invoke(1, A), ok(0, A, "DENY", 3), ok(1, A, "DENY", 4))[0] is Validity.INVALID


def test_a_conflict_on_one_key_is_found_among_many_valid_keys():
    events = []
    for number in range(1, 30):
        key = ("alice", number)
        events += [invoke(2 * number, key), ok(2 * number, key, "ALLOW", number)]
    events += [invoke(100, ("alice", 7)), ok(100, ("alice", 7), "ALLOW", 8)]
    result = check_keys(History(events))
    assert result.validity is Validity.INVALID and result.counterexample["key"] == ["alice", 7]
    assert result.partitions == 29


def test_info_operations_may_take_effect_or_not():
    # The info op may have executed, or not; either way the oks on each key agree, so it is valid.
    assert validity(invoke(0, A), info(0, A), invoke(1, A), ok(1, A, "DENY", 2)) == (Validity.VALID, Validity.VALID)
    assert validity(invoke(0, B), info(0, B)) == (Validity.VALID, Validity.VALID)
    # An unanswered invoke at the end of the history is also info.
    assert validity(invoke(0, C), invoke(1, C), ok(1, C, "ALLOW", 1)) == (Validity.VALID, Validity.VALID)


def test_info_operations_do_not_excuse_two_different_observed_verdicts():
    assert validity(invoke(0, A), info(0, A), invoke(1, A), ok(1, A, "DENY", 2),
                    invoke(2, A), ok(2, A, "ALLOW", 2))[0] is Validity.INVALID


def test_failed_operations_are_dropped():
    assert validity(invoke(0, A), fail(0, A), invoke(1, A), ok(1, A, "ALLOW", 1)) == (Validity.VALID, Validity.VALID)


# ----------------------------------------------------------------- cross-key real-time order


def test_real_time_order_inverted_is_invalid():
    result = check_real_time_order(History([invoke(0, A), ok(0, A, "ALLOW", 5), invoke(1, B), ok(1, B, "ALLOW", 3)]))
    assert result.validity is Validity.INVALID
    assert "alice" in result.counterexample["earlier"] and "bob" in result.counterexample["later"]


def test_equal_seqs_for_sequential_keys_are_invalid_but_fine_for_concurrent_ones():
    sequential = History([invoke(0, A), ok(0, A, "ALLOW", 5), invoke(1, B), ok(1, B, "DENY", 5)])
    concurrent = History([invoke(0, A), invoke(1, B), ok(0, A, "ALLOW", 5), ok(1, B, "DENY", 5)])
    assert check_real_time_order(sequential).validity is Validity.INVALID
    assert check_real_time_order(concurrent).validity is Validity.VALID


def test_concurrent_operations_may_be_ordered_either_way():
    assert validity(invoke(0, A), invoke(1, B), ok(1, B, "ALLOW", 2), ok(0, A, "ALLOW", 9)) == \
        (Validity.VALID, Validity.VALID)
    assert validity(invoke(0, A), invoke(1, B), ok(1, B, "ALLOW", 9), ok(0, A, "ALLOW", 2)) == \
        (Validity.VALID, Validity.VALID)


def test_a_retry_of_an_old_request_keeps_its_old_seq():
    # B was first sent before A completed; its retry, sent after, legitimately returns a lower seq.
    events = [invoke(0, B), info(0, B), invoke(1, A), ok(1, A, "ALLOW", 6), invoke(2, B), ok(2, B, "DENY", 4)]
    assert validity(*events) == (Validity.VALID, Validity.VALID)


def test_info_operations_do_not_constrain_the_order():
    assert check_real_time_order(History([invoke(0, A), info(0, A), invoke(1, B), ok(1, B, "ALLOW", 1)])).validity \
        is Validity.VALID


# ----------------------------------------------------------------- structure and serialization


def test_malformed_histories_are_rejected():
    with pytest.raises(HistoryError):
        History([ok(0, A, "ALLOW", 1)])
    with pytest.raises(HistoryError):
        History([invoke(0, A), invoke(0, A)])
    with pytest.raises(HistoryError):
        History([invoke(0, A, 10), ok(0, A, "ALLOW", 1, time_ms=5)])
    with pytest.raises(HistoryError):
        History([invoke(0, A), dataclasses.replace(ok(0, A, "ALLOW", 1), certificate=None)])
    with pytest.raises(HistoryError):
        History.from_jsonl('{"type": "sideways"}\n')


def test_jsonl_round_trip_keeps_every_field():
    history = History([invoke(0, A, 5), dataclasses.replace(ok(0, A, "ALLOW", 1, 9), signers=(0, 2),
                                                           votes=((0, "ALLOW"), (2, "DENY"))),
                       invoke(1, B, 9), info(1, B, 12)])
    again = History.from_jsonl(history.to_jsonl())
    assert again.events == history.events


def test_combine_orders_invalid_over_unknown_over_valid():
    assert combine([Validity.VALID, Validity.UNKNOWN]) is Validity.UNKNOWN
    assert combine([Validity.UNKNOWN, Validity.INVALID, Validity.VALID]) is Validity.INVALID
    assert combine([]) is Validity.VALID


# ----------------------------------------------------------------- the search itself, on a read/write register


class Register:
    """A read/write register; ``script`` maps an operation id to ("write", value) or ("read", value)."""

    def __init__(self, script: dict[int, tuple[str, int]]) -> None:
        self.script = script

    def initial(self) -> Hashable:
        return 0

    def step(self, state: Hashable, operation: Operation) -> tuple[Hashable, ...]:
        kind, value = self.script[operation.operation_id]
        if kind == "write":
            return (value,) if operation.outcome is EventType.OK else (state, value)  # info: may not happen
        if operation.outcome is EventType.INFO:
            return (state,)
        return (state,) if state == value else ()


def register_ops(*events: Event) -> list[Operation]:
    return History(events).operations()


R = ("register", 1)


def test_search_rejects_a_stale_read_after_a_completed_write():
    ops = register_ops(invoke(0, R), ok(0, R, "-", 1), invoke(1, R), ok(1, R, "-", 1))
    assert search(ops, Register({0: ("write", 1), 1: ("read", 0)})).validity is Validity.INVALID
    assert search(ops, Register({0: ("write", 1), 1: ("read", 1)})).validity is Validity.VALID


def test_search_accepts_a_read_concurrent_with_a_write_either_way():
    ops = register_ops(invoke(0, R), invoke(1, R), ok(1, R, "-", 1), ok(0, R, "-", 1))
    for seen in (0, 1):
        assert search(ops, Register({0: ("write", 1), 1: ("read", seen)})).validity is Validity.VALID


def test_search_backtracks_out_of_a_wrong_first_choice():
    # write 1 completes; write 2 then overlaps two reads that see 1 and then 2.  The search first tries
    # write 2 right after write 1, finds the read of 1 impossible, and must backtrack to put the read first.
    ops = register_ops(invoke(0, R), ok(0, R, "-", 1), invoke(1, R), invoke(2, R), ok(2, R, "-", 1),
                       invoke(3, R), ok(3, R, "-", 1), ok(1, R, "-", 1), invoke(4, R), ok(4, R, "-", 1))
    script = {0: ("write", 1), 1: ("write", 2), 2: ("read", 1), 3: ("read", 2)}
    assert search(ops, Register({**script, 4: ("read", 2)})).validity is Validity.VALID
    assert search(ops, Register({**script, 4: ("read", 1)})).validity is Validity.INVALID
    assert search(ops, Register({**script, 2: ("read", 2), 3: ("read", 1), 4: ("read", 2)})).validity \
        is Validity.INVALID


def test_search_lets_an_info_write_take_effect_late_or_never():
    ops = register_ops(invoke(0, R), info(0, R), invoke(1, R), ok(1, R, "-", 1), invoke(2, R), ok(2, R, "-", 1))
    assert search(ops, Register({0: ("write", 5), 1: ("read", 0), 2: ("read", 5)})).validity is Validity.VALID
    assert search(ops, Register({0: ("write", 5), 1: ("read", 0), 2: ("read", 0)})).validity is Validity.VALID
    assert search(ops, Register({0: ("write", 5), 1: ("read", 5), 2: ("read", 0)})).validity is Validity.INVALID


def test_search_gives_up_as_unknown_past_its_state_bound():
    events = [invoke(op, R) for op in range(12)] + [ok(op, R, "-", 1) for op in range(12)]
    script = {op: ("write", op) for op in range(11)} | {11: ("read", 99)}  # Impossible, but only after searching.
    result = search(History(events).operations(), Register(script), max_states=50)
    assert result.validity is Validity.UNKNOWN and result.explored_states > 50


# ----------------------------------------------------------------- generated histories


@st.composite
def linearizable_histories(draw) -> History:
    """Histories produced by a real verdict log: every operation takes effect at a point inside its interval.

    Operation i takes effect at time 10*i+5 (if at all); its invoke and
    completion lie up to ``spread`` points either side.  The first operation on
    a key that takes effect executes it with the next seq; later ones return it.
    """
    chooser = random.Random(draw(st.integers(0, 2**32 - 1)))
    count, spread = draw(st.integers(1, 40)), draw(st.integers(0, 4))
    executed: dict[tuple[str, int], tuple[str, int]] = {}
    keys: list[tuple[str, int]] = []
    rows = []
    for op in range(count):
        if keys and chooser.random() < 0.3:
            key = chooser.choice(keys)  # A retry of an earlier request.
        else:
            key = (chooser.choice(("alice", "bob")), len(keys) + 1)
            keys.append(key)
        point = 10 * op + 5
        start, end = point - 1 - 10 * chooser.randint(0, spread), point + 1 + 10 * chooser.randint(0, spread)
        outcome = chooser.choice(("ok", "ok", "ok", "info", "fail"))
        if outcome == "fail":
            rows += [(start, 0, invoke(op, key, start)), (end, 1, fail(op, key, end))]
            continue
        if outcome == "ok" or chooser.random() < 0.5:  # An info operation may or may not have executed.
            executed.setdefault(key, (chooser.choice(("ALLOW", "DENY")), len(executed) + 1))
        completion = ok(op, key, *executed[key], end) if outcome == "ok" else info(op, key, end)
        rows += [(start, 0, invoke(op, key, start)), (end, 1, completion)]
    rows.sort(key=lambda row: (row[0], row[1]))
    return History(event for _, _, event in rows)


@settings(max_examples=150, deadline=None)
@given(linearizable_histories())
def test_generated_linearizable_histories_are_valid(history: History):
    results = check_history(history)
    assert results["per_key"].validity is Validity.VALID, results["per_key"].counterexample
    assert results["real_time_order"].validity is Validity.VALID, results["real_time_order"].counterexample
    assert History.from_jsonl(history.to_jsonl()).events == history.events


@settings(max_examples=100, deadline=None)
@given(linearizable_histories(), st.integers(0, 2**32 - 1))
def test_generated_histories_with_one_verdict_flipped_are_invalid(history: History, seed: int):
    oks_by_key: dict[tuple[str, int], list[int]] = {}
    for index, event in enumerate(history.events):
        if event.type is EventType.OK:
            oks_by_key.setdefault(event.key, []).append(index)
    repeated = [indices for indices in oks_by_key.values() if len(indices) >= 2]
    if not repeated:
        return  # Nothing to contradict: one observation of a key is always consistent with itself.
    index = random.Random(seed).choice(random.Random(seed).choice(repeated))
    events = list(history.events)
    flipped = "DENY" if events[index].verdict == "ALLOW" else "ALLOW"
    events[index] = dataclasses.replace(events[index], verdict=flipped)
    assert check_keys(History(events)).validity is Validity.INVALID


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 60), st.integers(0, 2**32 - 1))
def test_sequential_histories_are_valid(count: int, seed: int):
    """Strictly sequential clients: each request answered before the next, seqs rising; retries repeat."""
    chooser = random.Random(seed)
    events, answers, time_ms = [], {}, 0
    for op in range(count):
        key = chooser.choice(list(answers)) if answers and chooser.random() < 0.25 else ("alice", op + 1)
        answers.setdefault(key, (chooser.choice(("ALLOW", "DENY")), len(answers) + 1))
        events += [invoke(op, key, time_ms), ok(op, key, *answers[key], time_ms + 3)]
        time_ms += 5
    assert validity(*events) == (Validity.VALID, Validity.VALID)
