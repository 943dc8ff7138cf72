"""``check``: split a history by the model's partition key, search each part, shrink a failure.

A failure is explained by a sub-history of the failing partition:

1. Truncated: the search never tried an operation invoked after the latest
   return it reached, so dropping those operations fails the same way.
2. Shrunk: runs of operations, halving in length down to single ones, are
   dropped (latest first) while the rest still cannot be linearized.  When
   every single-operation test finishes within the limits the result is
   1-minimal: without any one of its operations the sub-history *is*
   linearizable.

The search over that sub-history reports its longest linearizable prefix and
the operation the model rejects after it.  Since the sub-history without that
operation is linearizable (1-minimality) and with it is not, the operation
really cannot be placed in any order of the others.
"""

from __future__ import annotations

import enum
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Sequence

from ._models import Model
from ._ops import Event, HistoryInputError, Op, pair_events
from ._search import Budget, LimitReached, SearchOutcome, search

SHRINK_SECONDS_MAX = 10.0  # Time spent shrinking a failure when the caller set no deadline.


class Outcome(enum.Enum):
    OK = "ok"
    ILLEGAL = "illegal"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Failure:
    """Why a partition is not linearizable: a failing sub-history, its longest prefix, the op that cannot go."""

    partition: Hashable
    sub_history: tuple[Op, ...]
    minimal: bool  # Every single-operation removal was tested within the limits, so it is 1-minimal.
    longest_prefix: tuple[Op, ...]
    state_after_prefix: Hashable
    unplaceable: Op

    def describe(self) -> list[str]:
        where = f" on key {self.partition!r}" if self.partition is not None else ""
        lines = [f"not linearizable{where}: {self.unplaceable.describe()} cannot be placed",
                 f"  the model state after the longest linearizable prefix is {self.state_after_prefix!r}, "
                 f"where that operation's result is impossible, and no other order of the "
                 f"{'minimal ' if self.minimal else ''}failing sub-history below does better",
                 f"  longest linearizable prefix ({len(self.longest_prefix)} operations):"]
        lines += [f"    {op.describe()}" for op in self.longest_prefix]
        lines.append(f"  {'minimal ' if self.minimal else ''}failing sub-history ({len(self.sub_history)} operations):")
        lines += [f"    {op.describe()}" for op in self.sub_history]
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"partition": repr(self.partition), "unplaceable": self.unplaceable.describe(),
                "state_after_prefix": repr(self.state_after_prefix), "minimal": self.minimal,
                "longest_prefix": [op.describe() for op in self.longest_prefix],
                "sub_history": [op.describe() for op in self.sub_history]}


@dataclass(frozen=True)
class Result:
    """The verdict, the states explored, and for unknown partitions the longest prefix each reached."""

    outcome: Outcome
    states: int
    partitions: int
    failure: Failure | None = None
    partial: dict[Hashable, tuple[Op, ...]] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        assert (self.failure is not None) == (self.outcome is Outcome.ILLEGAL)

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome.value, "states": self.states, "partitions": self.partitions,
                "failure": self.failure.to_json() if self.failure else None, "reasons": list(self.reasons),
                "partial": {repr(key): [op.describe() for op in prefix] for key, prefix in self.partial.items()}}


def check(history: Sequence[Op] | Sequence[Event], model: Model, *, timeout_s: float | None = None,
          max_states: int | None = None) -> Result:
    """Is ``history`` linearizable with respect to ``model``?

    ``history`` is a list of ``Op`` (from a reader or ``pair_events``) or of
    ``Event`` in real-time order.  ``max_states`` bounds the (linearized set,
    state) pairs explored in any one partition; ``timeout_s`` the whole check.
    Either limit ends the answer as unknown, never as ok.
    """
    assert timeout_s is None or timeout_s > 0
    ops = as_ops(history)
    validate(ops, model)
    budget = Budget(max_states, None if timeout_s is None else time.monotonic() + timeout_s)
    groups = partition(ops, model)
    states, partial, reasons = 0, {}, []
    for key, part in groups.items():
        try:
            outcome = search(part, model.initial(), transitions(part, model), budget)
        except LimitReached as limit:
            states += limit.states
            partial[key] = limit.prefix
            reasons.append(f"partition {key!r}: {limit.reason}" if key is not None else limit.reason)
            if budget.over_time():
                break
            continue
        states += outcome.states
        if not outcome.linearizable:
            failure = explain(key, part, outcome, model, budget)
            return Result(Outcome.ILLEGAL, states, len(groups), failure, partial, tuple(reasons))
    checked_all = len(reasons) == 0
    return Result(Outcome.OK if checked_all else Outcome.UNKNOWN, states, len(groups), None, partial,
                  tuple(reasons))


def as_ops(history: Sequence[Op] | Sequence[Event]) -> list[Op]:
    items = list(history)
    if items and all(isinstance(item, Event) for item in items):
        return pair_events(items)
    if not all(isinstance(item, Op) for item in items):
        raise TypeError("a history is a list of Op or a list of Event, not a mixture")
    return items


def validate(ops: Iterable[Op], model: Model) -> None:
    """Raise ``HistoryInputError`` for the first operation the model cannot interpret."""
    check_op = getattr(model, "validate", None)
    for op in ops if check_op is not None else ():
        reason = check_op(op)
        if reason is not None:
            raise HistoryInputError(op.call_line, reason)


def partition(ops: Sequence[Op], model: Model) -> dict[Hashable, list[Op]]:
    key_of = getattr(model, "partition_key", None)
    if key_of is None:
        return {None: list(ops)}
    groups: dict[Hashable, list[Op]] = defaultdict(list)
    for op in ops:
        groups[key_of(op)].append(op)
    return dict(groups) if groups else {None: []}


def transitions(ops: Sequence[Op], model: Model) -> list:
    compile_op = getattr(model, "transition", None)
    if compile_op is not None:
        return [compile_op(op) for op in ops]
    step = model.step
    return [lambda state, op=op: tuple(step(state, op)) for op in ops]


def explain(key: Hashable, ops: Sequence[Op], failed: SearchOutcome, model: Model, budget: Budget) -> Failure:
    """Truncate, then shrink while the rest still fails (see the module doc)."""
    kept = [op for op in ops if op.call < failed.furthest]
    compiled = dict(zip((op.number for op in kept), transitions(kept, model)))
    deadline = time.monotonic() + SHRINK_SECONDS_MAX
    shrink_budget = Budget(budget.max_states, deadline if budget.deadline is None else min(deadline, budget.deadline))
    chunk = max(1, len(kept) // 2)
    while True:
        size = len(kept)
        kept, failed, finished = _drop_chunks(kept, failed, chunk, model, compiled, shrink_budget)
        if chunk == 1 and (len(kept) == size or not finished):
            break  # A pass of single removals changed nothing: each one was tested against the final set.
        chunk = max(1, chunk // 2)
    minimal = finished
    assert failed.unplaceable is not None and failed.unplaceable in kept
    return Failure(key, tuple(kept), minimal, failed.order, failed.state_after, failed.unplaceable)


def _drop_chunks(kept: list[Op], failed: SearchOutcome, chunk: int, model: Model, compiled: dict,
                 budget: Budget) -> tuple[list[Op], SearchOutcome, bool]:
    """Drop each run of ``chunk`` operations, latest first, whose absence still fails; finished if no limit hit.

    Big runs first (as in delta debugging) because a failure's core is usually
    a handful of operations, so most of a long history goes in a few searches.
    """
    finished = True
    end = len(kept)
    while end > 0:
        start = max(0, end - chunk)
        candidate = kept[:start] + kept[end:]
        end = start
        try:
            outcome = search(candidate, model.initial(), [compiled[op.number] for op in candidate], budget)
        except LimitReached:
            finished = False
            if budget.over_time():
                break
            continue
        if not outcome.linearizable:
            kept, failed = candidate, outcome
    return kept, failed, finished
