"""Wing & Gong's search with Lowe's memoisation, over flat arrays.

The search walks the call and return entries of one partition in real-time
order.  At a call it tries to linearize that operation next: the model gives
the states it could lead to, and the first (linearized set, state) pair not
seen before is taken; the operation's entries are unlinked from the list and
the walk restarts from the head.  At the return of an operation it has not
linearized, no order down this path respects real time, so it undoes the last
choice (relinking is the undo: the list cells still point at their old
neighbours).  The memo of pairs, the linearized set as an int bitset, prunes
every repeat.

An indeterminate operation has a call entry and no return entry: nothing is
ever forced to wait for it, so it can be linearized at any point after its
call, and when the walk reaches the end of the list every operation with a
return is linearized, so the ones left over simply never took effect.

``search`` runs one partition; ``_checker`` runs partitions and shrinks a
failure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

from ._ops import Op

LIMIT_CHECK_EVERY = 4096  # New states between two looks at the clock.


class LimitReached(Exception):
    """The search passed its state or time budget; the answer is unknown."""

    def __init__(self, reason: str, states: int, prefix: tuple[Op, ...]) -> None:
        super().__init__(reason)
        self.reason, self.states, self.prefix = reason, states, prefix


@dataclass(frozen=True)
class Budget:
    """``max_states`` bounds one partition's search; ``deadline`` (time.monotonic) the whole check."""

    max_states: int | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        assert self.max_states is None or self.max_states >= 1

    def over_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


@dataclass(frozen=True)
class SearchOutcome:
    """``linearizable`` with the order found; or not, with the deepest prefix and what stopped it."""

    linearizable: bool
    states: int
    order: tuple[Op, ...]  # The linearization (ok) or the longest linearizable prefix found (not ok).
    state_after: Hashable  # The model state after ``order``.
    unplaceable: Op | None  # Not ok: the earliest-returning op the model rejects after ``order``.
    furthest: int  # Not ok: the latest return position the search reached; no op invoked after it was tried.


class _Entries:
    """The doubly linked list of call (2i) and return (2i+1) entries; head 2n, tail 2n+1."""

    def __init__(self, ops: Sequence[Op]) -> None:
        count = len(ops)
        self.head, self.tail = 2 * count, 2 * count + 1
        # At equal positions calls come first, so operations that touch are concurrent, not ordered.
        rows = [(op.call, 0, 2 * i) for i, op in enumerate(ops)]
        rows += [(op.ret, 1, 2 * i + 1) for i, op in enumerate(ops) if op.ret is not None]
        rows.sort()
        self.next = [self.tail] * (2 * count + 2)
        self.previous = [self.head] * (2 * count + 2)
        self.rank = [0] * (2 * count + 2)
        previous = self.head
        for rank, (_, _, entry) in enumerate(rows):
            self.next[previous], self.previous[entry], self.rank[entry] = entry, previous, rank
            previous = entry
        self.next[previous], self.previous[self.tail] = self.tail, previous
        self.times = [position for position, _, _ in rows]


def search(ops: Sequence[Op], initial: Hashable, transitions: Sequence[Callable[[Hashable], tuple]],
           budget: Budget) -> SearchOutcome:
    """Is there an order of ``ops`` that respects real time and the model (``transitions[i]`` is op i's)?

    The loop is written for CPython's speed, and kept in one function on
    purpose (every call in it costs): everything it touches per entry is a
    local list indexed by the entry number, and the common case (one
    successor state, already seen or not) takes no inner loop.
    """
    assert len(transitions) == len(ops)
    entries = _Entries(ops)
    following, preceding, rank = entries.next, entries.previous, entries.rank
    head, tail = entries.head, entries.tail
    step_at: list = [None] * len(following)
    bit_at = [0] * len(following)
    cells_at: list = [()] * len(following)  # The entries a call's lift unlinks, in order.
    for i, op in enumerate(ops):
        step_at[2 * i], bit_at[2 * i] = transitions[i], 1 << i
        cells_at[2 * i] = (2 * i, 2 * i + 1) if op.ret is not None else (2 * i,)
    relink_at = [cells[::-1] for cells in cells_at]  # Undo relinks in the reverse order.
    cache: set = set()
    stack: list[tuple] = []  # (call entry, state before, successors, chosen index, linearized before)
    state, linearized, states, depth = initial, 0, 0, 0
    limit = budget.max_states if budget.max_states is not None else float("inf")
    next_look = min(LIMIT_CHECK_EVERY, limit + 1)
    deepest, deepest_depth, deepest_state, stuck, stuck_pending, furthest = [], 0, initial, None, True, -1
    entry = following[head]
    while True:
        if entry & 1:  # The return of an operation not yet linearized (undo the last choice), or the tail.
            if entry == tail:
                break
            if stuck_pending:
                stuck, stuck_pending = entry >> 1, False
            if rank[entry] > furthest:
                furthest = rank[entry]
            if not depth:
                assert stuck is not None, "a failed search met a return, so it noted one at its deepest prefix"
                return SearchOutcome(False, states, tuple(ops[e >> 1] for e in deepest), deepest_state,
                                     ops[stuck], entries.times[furthest])
            call, state, successors, chosen, linearized = stack.pop()
            depth -= 1
            for cell in relink_at[call]:
                following[preceding[cell]] = cell
                preceding[following[cell]] = cell
            with_op = linearized | bit_at[call]
            chosen = _first_unseen(cache, with_op, successors, chosen + 1)
            if chosen < 0:
                entry = following[call]
                continue
            pair = (with_op, successors[chosen])
        else:
            successors = step_at[entry](state)
            if not successors:
                entry = following[entry]
                continue
            call, with_op, chosen = entry, linearized | bit_at[entry], 0
            pair = (with_op, successors[0])
            if pair in cache:
                chosen = _first_unseen(cache, with_op, successors, 1)
                if chosen < 0:
                    entry = following[entry]
                    continue
                pair = (with_op, successors[chosen])
        cache.add(pair)
        states += 1
        if states >= next_look:
            reason = _limit_passed(states, limit, budget)
            if reason is not None:
                raise LimitReached(reason, states, tuple(ops[e >> 1] for e in deepest))
            next_look = min(states + LIMIT_CHECK_EVERY, limit + 1)
        stack.append((call, state, successors, chosen, linearized))
        depth += 1
        for cell in cells_at[call]:
            following[preceding[cell]] = following[cell]
            preceding[following[cell]] = preceding[cell]
        linearized, state = pair
        if depth > deepest_depth:
            deepest, deepest_depth, deepest_state, stuck_pending = [frame[0] for frame in stack], depth, state, True
        entry = following[head]
    assert depth >= sum(1 for op in ops if op.ret is not None)
    return SearchOutcome(True, states, tuple(ops[frame[0] >> 1] for frame in stack), state, None, -1)


def _first_unseen(cache: set, with_op: int, successors: tuple, start: int) -> int:
    """The first successor from ``start`` on whose pair is not in the cache, or -1."""
    for position in range(start, len(successors)):
        if (with_op, successors[position]) not in cache:
            return position
    return -1


def _limit_passed(states: int, limit: float, budget: Budget) -> str | None:
    if states > limit:
        return f"passed {budget.max_states} states"
    return "ran out of time" if budget.over_time() else None
