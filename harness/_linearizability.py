"""The cluster's checks over a harness ``History``: per-key linearizability and the verdict log's order.

The search itself lives in ``harness.linearizability`` (Wing & Gong with
Lowe's memoisation, indeterminate operations by construction, shrunk
counterexamples); this module adapts it to the harness's ``History`` and
``Validity`` and keeps the cross-key check.

The history is P-compositional (Horn & Kroening 2015): operations on different
request keys touch disjoint parts of the state, so each key is checked alone
against ``VerdictRegister``.  What does cross keys, the order of the verdict
log, has its own linear check (``check_real_time_order``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Protocol, Sequence

from ._history import EventType, History, Operation
from .linearizability import Op, Outcome, Result, VerdictRegister, check, verdict_ops

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


class OperationModel(Protocol):
    """A model over the harness's own ``Operation`` values (what ``search`` takes)."""

    def initial(self) -> Hashable: ...

    def step(self, state: Hashable, operation: Operation) -> tuple[Hashable, ...]:
        """Every state ``operation`` could lead to from ``state``; empty if its result is impossible."""


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


_VALIDITY = {Outcome.OK: Validity.VALID, Outcome.ILLEGAL: Validity.INVALID, Outcome.UNKNOWN: Validity.UNKNOWN}


class _OnOperations:
    """Adapts an ``OperationModel`` to ``check``: each op carries its harness ``Operation`` as payload."""

    def __init__(self, model: OperationModel) -> None:
        self.model = model

    def initial(self) -> Hashable:
        return self.model.initial()

    def step(self, state: Hashable, op: Op) -> tuple[Hashable, ...]:
        return tuple(self.model.step(state, op.payload))


def search(operations: Sequence[Operation], model: OperationModel, max_states: int = DEFAULT_MAX_STATES) -> CheckResult:
    """Is there a total order of ``operations`` that respects real time and the model?"""
    assert max_states >= 1
    return _check_result(check(verdict_ops(operations), _OnOperations(model), max_states=max_states))


def check_keys(history: History, max_states: int = DEFAULT_MAX_STATES) -> CheckResult:
    """Check each request key's operations against ``VerdictRegister`` independently."""
    return _check_result(check(verdict_ops(history.operations()), VerdictRegister(), max_states=max_states))


def _check_result(result: Result) -> CheckResult:
    notes = [f"{reason}: unknown" for reason in result.reasons]
    failure = result.failure
    counterexample = None if failure is None else {
        "key": list(failure.partition) if isinstance(failure.partition, tuple) else failure.partition,
        "operations": [_describe(op) for op in failure.sub_history],
        "longest_linearizable_prefix": [_describe(op) for op in failure.longest_prefix],
        "problem": f"{_describe(failure.unplaceable)} cannot be placed after the longest linearizable prefix "
                   f"(state {failure.state_after_prefix!r}) nor anywhere in an order of the other operations "
                   f"listed",
    }
    return CheckResult(_VALIDITY[result.outcome], result.states, result.partitions, counterexample, notes)


def _describe(op: Op) -> str:
    return op.payload.describe() if isinstance(op.payload, Operation) else op.describe()


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
