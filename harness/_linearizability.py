"""Linearizability checking: Wing & Gong's search with Lowe's memoization, split per key.

The search (Wing & Gong 1993, with the state cache of Lowe 2017) walks the
history's call and return entries in real-time order.  At each step it picks
an operation whose call has been seen, applies it to the model, and removes it
from the list ("lifts" it); when it meets the return of an operation it has not
linearized yet, no order consistent with real time exists down this path, so it
undoes the last choice.  A set of (linearized operations, model state) pairs
already explored prunes the repeats, which is what makes the search practical.

The model may be nondeterministic: ``step`` returns every state the operation
could lead to (none if the operation's observed result is impossible).  That is
how ``info`` operations are handled: their response is placed after every
completed one, so they can take effect at any point after their invocation,
and the model offers a "took no effect" successor so they can also be omitted.

The history is P-compositional (Horn & Kroening 2015): operations on different
request keys touch disjoint parts of the state, so each key is checked alone.
What does cross keys, the order of the verdict log, has its own linear check
(``check_real_time_order``).
"""

from __future__ import annotations

import enum
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Protocol, Sequence

from ._history import EventType, History, Operation

DEFAULT_MAX_STATES = 200_000  # Explored (operation set, state) pairs per key before giving up as unknown.


class Validity(enum.Enum):
    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN = "unknown"


def combine(validities: Iterable[Validity]) -> Validity:
    """Invalid beats unknown beats valid, as in Jepsen's result merging."""
    found = set(validities)
    for validity in (Validity.INVALID, Validity.UNKNOWN):
        if validity in found:
            return validity
    return Validity.VALID


class Model(Protocol):
    def initial(self) -> Hashable: ...

    def step(self, state: Hashable, operation: Operation) -> tuple[Hashable, ...]:
        """Every state ``operation`` could lead to from ``state``; empty if its result is impossible."""


class _Unobserved:
    """The register holds a verdict that no client has seen yet (an ``info`` execute took effect)."""

    def __repr__(self) -> str:
        return "executed-unobserved"


EXECUTED_UNOBSERVED = _Unobserved()


class VerdictRegister:
    """One request key's verdict: unset until the first execute linearizes, then fixed forever.

    An ``ok`` execute returns (verdict, seq): the first one fixes the register,
    every later one must return exactly that value.  An ``info`` execute either
    took no effect or fixed the register to a value nobody has observed, which
    the next ``ok`` reveals.
    """

    def initial(self) -> Hashable:
        return None

    def step(self, state: Hashable, operation: Operation) -> tuple[Hashable, ...]:
        if operation.outcome is EventType.OK:
            value = (operation.verdict, operation.seq)
            if state is None or state is EXECUTED_UNOBSERVED:
                return (value,)
            return (state,) if state == value else ()
        assert operation.outcome is EventType.INFO, "fail operations are removed before the search"
        return (None, EXECUTED_UNOBSERVED) if state is None else (state,)


@dataclass
class CheckResult:
    validity: Validity
    explored_states: int = 0
    partitions: int = 0
    counterexample: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"validity": self.validity.value, "explored_states": self.explored_states,
                "partitions": self.partitions, "counterexample": self.counterexample, "notes": self.notes}


# ----------------------------------------------------------------- the search


class _Entry:
    """A call or return entry in the doubly linked list the search lifts operations out of."""

    __slots__ = ("operation", "number", "is_call", "match", "previous", "next")

    def __init__(self, operation: Operation | None, number: int, is_call: bool) -> None:
        self.operation = operation
        self.number = number
        self.is_call = is_call
        self.match: _Entry | None = None
        self.previous: _Entry | None = None
        self.next: _Entry | None = None


def _build_entries(operations: Sequence[Operation]) -> _Entry:
    """Link call and return entries in real-time order; ``info`` returns go after everything."""
    infinity = 1 + max((op.complete_index or 0 for op in operations), default=0) + len(operations)
    rows = []
    for number, operation in enumerate(operations):
        call, response = _Entry(operation, number, True), _Entry(operation, number, False)
        call.match, response.match = response, call
        returns_at = operation.complete_index if operation.outcome is EventType.OK else infinity
        assert returns_at is not None and returns_at > operation.invoke_index
        rows.append(((operation.invoke_index, 0, number), call))
        rows.append(((returns_at, 1, number), response))
    rows.sort(key=lambda row: row[0])
    head = _Entry(None, -1, True)
    previous = head
    for _, entry in rows:
        previous.next, entry.previous = entry, previous
        previous = entry
    return head


def _lift(call: _Entry) -> None:
    """Unlink a call and its return (the operation is linearized)."""
    for entry in (call, call.match):
        entry.previous.next = entry.next
        if entry.next is not None:
            entry.next.previous = entry.previous


def _unlift(call: _Entry) -> None:
    """Relink a call and its return, in reverse order of ``_lift``."""
    for entry in (call.match, call):
        entry.previous.next = entry
        if entry.next is not None:
            entry.next.previous = entry


@dataclass
class _Frame:
    call: _Entry
    state_before: Hashable
    successors: tuple[Hashable, ...]
    chosen: int


@dataclass
class _Search:
    model: Model
    max_states: int
    cache: set = field(default_factory=set)
    stack: list[_Frame] = field(default_factory=list)
    deepest: list[int] = field(default_factory=list)

    def choose(self, call: _Entry, linearized: int, successors: tuple[Hashable, ...], start: int) -> int | None:
        """The first successor from ``start`` on whose (operations, state) pair is new."""
        with_call = linearized | (1 << call.number)
        for position in range(start, len(successors)):
            pair = (with_call, successors[position])
            if pair not in self.cache:
                self.cache.add(pair)
                return position
        return None

    def note_depth(self) -> None:
        if len(self.stack) > len(self.deepest):
            self.deepest = [frame.call.number for frame in self.stack]


def search(operations: Sequence[Operation], model: Model, max_states: int = DEFAULT_MAX_STATES) -> CheckResult:
    """Is there a total order of ``operations`` that respects real time and the model?"""
    assert max_states >= 1
    live = [op for op in operations if op.outcome is not EventType.FAIL]  # A failed op took no effect.
    head = _build_entries(live)
    run = _Search(model, max_states)
    state, linearized, entry = model.initial(), 0, head.next
    while head.next is not None:
        if len(run.cache) > max_states:
            return CheckResult(Validity.UNKNOWN, len(run.cache), 1, notes=[f"search passed {max_states} states"])
        if entry.is_call:
            successors = model.step(state, entry.operation)
            chosen = run.choose(entry, linearized, successors, 0)
            if chosen is None:
                entry = entry.next
                continue
            run.stack.append(_Frame(entry, state, successors, chosen))
        else:
            if not run.stack:
                return CheckResult(Validity.INVALID, len(run.cache), 1, _counterexample(live, run, entry))
            frame = run.stack.pop()
            _unlift(frame.call)
            state, linearized = frame.state_before, linearized & ~(1 << frame.call.number)
            chosen = run.choose(frame.call, linearized, frame.successors, frame.chosen + 1)
            if chosen is None:
                entry = frame.call.next
                continue
            run.stack.append(_Frame(frame.call, frame.state_before, frame.successors, chosen))
        top = run.stack[-1]
        state, linearized = top.successors[top.chosen], linearized | (1 << top.call.number)
        _lift(top.call)
        run.note_depth()
        entry = head.next
    assert len(run.stack) == len(live)
    return CheckResult(Validity.VALID, len(run.cache), 1)


def _counterexample(operations: Sequence[Operation], run: _Search, stuck: _Entry) -> dict[str, Any]:
    prefix = [operations[number].describe() for number in run.deepest]
    return {
        "key": list(operations[0].key) if operations else None,
        "operations": [op.describe() for op in operations],
        "longest_linearizable_prefix": prefix,
        "problem": f"no order consistent with real time explains {stuck.operation.describe()}",
    }


# ----------------------------------------------------------------- whole histories


def check_keys(history: History, max_states: int = DEFAULT_MAX_STATES) -> CheckResult:
    """Check each request key's operations against ``VerdictRegister`` independently."""
    by_key: dict[tuple[str, int], list[Operation]] = defaultdict(list)
    for operation in history.operations():
        by_key[operation.key].append(operation)
    total = CheckResult(Validity.VALID, partitions=len(by_key))
    for key in sorted(by_key):
        result = search(by_key[key], VerdictRegister(), max_states)
        total.explored_states += result.explored_states
        if result.validity is Validity.UNKNOWN:
            total.notes.append(f"key {key[0]}#{key[1]}: unknown ({'; '.join(result.notes)})")
        total.validity = combine((total.validity, result.validity))
        if result.validity is Validity.INVALID:
            total.counterexample = result.counterexample
            return total
    return total


def check_real_time_order(history: History) -> CheckResult:
    """If request key A was certified before key B's request was first sent, A's seq < B's seq.

    A's certificate proves a correct replica executed every sequence number up
    to A's before any client held it, so a request first signed afterwards can
    only be ordered at a later number.  Only a key's *first* invocation counts:
    a retry re-sends an old request, which may well have been ordered long ago.
    Each key is summarized once (first invoke, first ``ok``, its seq), then one
    sweep keeps the highest seq among keys certified so far.
    """
    first_invoke: dict[tuple[str, int], Operation] = {}
    first_ok: dict[tuple[str, int], Operation] = {}
    for operation in history.operations():
        if operation.key not in first_invoke or operation.invoke_index < first_invoke[operation.key].invoke_index:
            first_invoke[operation.key] = operation
        if operation.outcome is EventType.OK and (operation.key not in first_ok or
                                                  operation.complete_index < first_ok[operation.key].complete_index):
            first_ok[operation.key] = operation
    by_completion = sorted(first_ok.values(), key=lambda op: op.complete_index)
    highest: Operation | None = None
    position = 0
    for key in sorted(first_ok, key=lambda k: first_invoke[k].invoke_index):
        invoked = first_invoke[key]
        while position < len(by_completion) and by_completion[position].complete_index < invoked.invoke_index:
            candidate = by_completion[position]
            highest = candidate if highest is None or candidate.seq > highest.seq else highest
            position += 1
        assert highest is None or highest.key != key, "a key cannot be certified before it is first sent"
        if highest is not None and highest.seq >= first_ok[key].seq:
            return CheckResult(Validity.INVALID, partitions=len(first_ok), counterexample={
                "earlier": highest.describe(), "later": first_ok[key].describe(),
                "later_first_invoked": invoked.describe(),
                "problem": f"{key[0]}#{key[1]} got seq {first_ok[key].seq}, not above seq {highest.seq} of "
                           f"{highest.key[0]}#{highest.key[1]}, certified before {key[0]}#{key[1]} was first sent",
            })
    return CheckResult(Validity.VALID, partitions=len(first_ok))


def check_history(history: History, max_states: int = DEFAULT_MAX_STATES) -> dict[str, CheckResult]:
    """Both checks; the caller combines them (``combine``)."""
    return {"per_key": check_keys(history, max_states), "real_time_order": check_real_time_order(history)}
