"""``check``: split a history by the model's partition key, search each part, shrink a failure.

A failure is explained by a sub-history of the failing partition:

1. Truncated: the search never tried an operation invoked after the latest
   return it reached, so dropping those operations fails the same way.
2. Relaxed: an operation is *relaxed* by forgetting its result and its return
   (it becomes indeterminate: it may take effect at any point after its call,
   or never).  Relaxing only ever allows more orders, so a relaxed history that
   still fails shows a real conflict.  Runs of observed operations, halving in
   length down to single ones, are relaxed (latest first) while the search
   still fails.  The observed operations left are the conflict: when a whole
   pass of single relaxations finishes within the limits and changes nothing,
   it is 1-minimal, so relaxing any one of them makes the history linearizable.

(Dropping operations instead would invent conflicts: a read without the write
it saw fails on its own.)  The search over the relaxed sub-history reports its
longest linearizable prefix and the operation the model rejects after it,
always one of the observed ones.  Since relaxing that operation makes the
history linearizable (1-minimality) and keeping it does not, its observed
result really cannot be placed in any order of the others.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Sequence

from ._models import Model
from ._ops import Event, HistoryInputError, Op, Status, pair_events
from ._search import Budget, LimitReached, SearchOutcome, search

FIRST_ROUND_STATES, ROUND_GROWTH = 10_000, 8  # Each partition's budget per round (see ``check``).
SHRINK_SECONDS_MAX = 5.0  # Time spent shrinking a failure when the caller set no deadline.
# One shrinking search may explore this many times the states of the search that found the failure (and
# at least SHRINK_STATES_MIN): relaxed operations widen the search, and a shrink step past it is skipped.
SHRINK_STATES_FACTOR, SHRINK_STATES_MIN = 20, 20_000


class Outcome(enum.Enum):
    OK = "ok"
    ILLEGAL = "illegal"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Failure:
    """Why a partition is not linearizable: a failing sub-history, its longest prefix, the op that cannot go."""

    partition: Hashable
    operations: tuple[Op, ...]  # The whole failing partition.
    sub_history: tuple[Op, ...]  # Its operations the search ever reached; all but ``observed`` relaxed.
    observed: tuple[Op, ...]  # The results that cannot all hold, with the others free to happen or not.
    minimal: bool  # Relaxing any one of ``observed`` was tested within the limits, and makes it linearizable.
    longest_prefix: tuple[Op, ...]
    state_after_prefix: Hashable
    unplaceable: Op

    def describe(self) -> list[str]:
        where = f" on key {self.partition!r}" if self.partition is not None else ""
        conflict = f"{'minimal ' if self.minimal else ''}conflict"
        relaxed = len(self.sub_history) - len(self.observed)
        lines = [f"not linearizable{where}: {self.unplaceable.describe()} cannot be placed",
                 f"  after the longest linearizable prefix the model state is {self.state_after_prefix!r}, where "
                 f"its result is impossible, and no other order does better",
                 f"  {conflict}: these {len(self.observed)} results cannot all hold, even with every other operation "
                 f"invoked so far ({relaxed}) free to take effect at any point after its call, or never:"]
        lines += [f"    {op.describe()}" for op in self.observed]
        lines.append(f"  longest linearizable prefix ({len(self.longest_prefix)} operations):")
        lines += [f"    {self.mark(op)}" for op in self.longest_prefix]
        return lines

    def mark(self, op: Op) -> str:
        set_aside = op.status is Status.OK and op not in self.observed
        return op.describe() + (" (result set aside)" if set_aside else "")

    def to_json(self) -> dict[str, Any]:
        return {"partition": repr(self.partition), "unplaceable": self.unplaceable.describe(),
                "state_after_prefix": repr(self.state_after_prefix), "minimal": self.minimal,
                "observed": [op.describe() for op in self.observed],
                "longest_prefix": [self.mark(op) for op in self.longest_prefix],
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
          max_states: int | None = None, explain: bool = True) -> Result:
    """Is ``history`` linearizable with respect to ``model``?

    ``history`` is a list of ``Op`` (from a reader or ``pair_events``) or of
    ``Event`` in real-time order.  ``max_states`` bounds the (linearized set,
    state) pairs explored in any one partition; ``timeout_s`` the whole check.
    Partitions are searched in rounds of growing budgets, so an illegal one is
    found without first exhausting a large legal one.
    Either limit ends the answer as unknown, never as ok.  ``explain=False``
    skips shrinking a failure: the failure then holds the whole partition as
    observed, with the search's own longest prefix.
    """
    assert timeout_s is None or timeout_s > 0
    ops = as_ops(history)
    validate(ops, model)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    groups = partition(ops, model)
    pending, states, partial, reasons = list(groups.items()), 0, {}, []
    round_states = FIRST_ROUND_STATES
    while pending:
        # Escalating budgets: a failing partition is usually cheap to refute, and must not wait behind a
        # valid one that needs millions of states (a partition that passes the bound is searched again).
        final = len(pending) == 1 or (max_states is not None and round_states >= max_states)
        budget = Budget(max_states if final else round_states, deadline)
        still_open = []
        for key, part in pending:
            try:
                outcome = search(part, model.initial(), transitions(part, model), budget)
            except LimitReached as limit:
                states += limit.states
                if final or budget.over_time():
                    partial[key] = limit.prefix
                    reasons.append(f"partition {key!r}: {limit.reason}" if key is not None else limit.reason)
                else:
                    still_open.append((key, part))
                if budget.over_time():
                    return Result(Outcome.UNKNOWN, states, len(groups), None, partial, tuple(reasons))
                continue
            states += outcome.states
            if not outcome.linearizable:
                failure = explain_failure(key, part, outcome, model, Budget(max_states, deadline)) if explain else \
                    Failure(key, tuple(part), tuple(part), tuple(op for op in part if op.status is Status.OK), False,
                            outcome.order, outcome.state_after, outcome.unplaceable)
                return Result(Outcome.ILLEGAL, states, len(groups), failure, partial, tuple(reasons))
        pending, round_states = still_open, round_states * ROUND_GROWTH
    return Result(Outcome.OK if not reasons else Outcome.UNKNOWN, states, len(groups), None, partial, tuple(reasons))


def as_ops(history: Sequence[Op] | Sequence[Event]) -> list[Op]:
    items = list(history)
    if items and all(isinstance(item, Event) for item in items):
        return pair_events(items)
    if not all(isinstance(item, Op) for item in items):
        raise TypeError("a history is a list of Op or a list of Event, not a mixture")
    if len({op.number for op in items}) != len(items):
        raise ValueError("each operation of a history needs its own number")
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


def explain_failure(key: Hashable, ops: Sequence[Op], failed: SearchOutcome, model: Model, budget: Budget) -> Failure:
    """Truncate, then relax observations while the rest still fails (see the module doc)."""
    kept = [op for op in ops if op.call <= failed.furthest]
    loose = {op.number: relaxed(op) for op in kept if op.status is Status.OK}
    compiled = dict(zip((op.number for op in kept), transitions(kept, model)))
    compiled_loose = dict(zip(loose, transitions(list(loose.values()), model)))
    deadline = time.monotonic() + SHRINK_SECONDS_MAX
    states_max = max(SHRINK_STATES_MIN, SHRINK_STATES_FACTOR * failed.states)
    shrink_budget = Budget(min(states_max, budget.max_states or states_max),
                           deadline if budget.deadline is None else min(deadline, budget.deadline))

    def attempt(observed: list[Op]) -> SearchOutcome | None:
        """The search over ``kept`` with only ``observed`` keeping their results; None past a limit."""
        chosen = {op.number for op in observed}
        history = [op if op.number in chosen or op.number not in loose else loose[op.number] for op in kept]
        steps = [compiled[op.number] if op.number in chosen or op.number not in loose else compiled_loose[op.number]
                 for op in kept]
        try:
            return search(history, model.initial(), steps, shrink_budget)
        except LimitReached:
            return None

    observed = [op for op in kept if op.status is Status.OK]
    observed, failed, minimal = _shrink(observed, failed, attempt, shrink_budget)
    original = {op.number: op for op in kept}
    unplaceable = original[failed.unplaceable.number]
    assert unplaceable in observed, "the search stops only at the return of an operation that has one"
    prefix = tuple(original[op.number] for op in failed.order)
    return Failure(key, tuple(ops), tuple(kept), tuple(observed), minimal, prefix, failed.state_after, unplaceable)


def relaxed(op: Op) -> Op:
    """``op`` with its result forgotten: it may take effect at any point after its call, or never."""
    return dataclasses.replace(op, status=Status.INFO, output=None, ret=None)


def _shrink(observed: list[Op], failed: SearchOutcome, attempt, budget: Budget) -> tuple[list[Op], SearchOutcome, bool]:
    """Relax runs of observations, halving down to single ones, earliest first, while the search still fails.

    Big runs first (as in delta debugging) because a failure's core is usually
    a handful of observations, so most of a long history goes in a few searches;
    earliest first because the failure is found at the end of the truncated
    history, so early observations are the likeliest to be irrelevant.  Relaxing
    only ever allows more orders, so every step is sound; the result is
    1-minimal once a whole pass of single relaxations finishes and changes nothing.
    """
    chunk = max(1, len(observed) // 2)
    while True:
        size, finished, start = len(observed), True, 0
        while start < len(observed) and not budget.over_time():
            candidate = observed[:start] + observed[start + chunk:]
            outcome = attempt(candidate)
            finished = finished and outcome is not None
            if outcome is not None and not outcome.linearizable:
                observed, failed = candidate, outcome
            else:
                start += chunk
        finished = finished and start >= len(observed)
        if chunk == 1 and (len(observed) == size or not finished):
            return observed, failed, finished
        chunk = max(1, chunk // 2)
