"""Events as a history file records them, and the operations the checker searches over.

A history is a list of events in real-time order: each ``invoke`` is later
closed by a completion from the same process, as in Jepsen:

- ``ok``: the operation took effect and its observed result is known;
- ``fail``: it certainly took no effect, so the checker drops it;
- ``info`` (or no completion at all by the end of the history): indeterminate.
  It may have taken effect at any point after its invocation, or never; it has
  no return point, so nothing that happens later is ordered after it.

``pair_events`` turns events into ``Op`` values.  Malformed input raises
``HistoryInputError`` naming the line and the reason; it never asserts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable

EVENT_TYPES = ("invoke", "ok", "fail", "info")
EVENTS_MAX = 2_000_000  # A history file larger than this is not a history a search could finish anyway.


class HistoryInputError(ValueError):
    """A history that cannot be read: the line (1-based, when known) and the reason."""

    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__(f"line {line}: {reason}" if line is not None else reason)
        self.line = line
        self.reason = reason


class Status(enum.Enum):
    OK = "ok"
    INFO = "info"  # Indeterminate: may take effect at any point after its call, or never.


@dataclass(frozen=True, slots=True)
class Keyword:
    """An EDN keyword such as ``:read`` when it appears as a value (function names become plain strings)."""

    name: str

    def __repr__(self) -> str:
        return f":{self.name}"


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a history: ``type`` is invoke/ok/fail/info; ``value`` the input (invoke) or result."""

    process: Hashable
    type: str
    f: str
    value: Any = None
    key: Hashable = None
    time: float | None = None
    line: int | None = None

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise HistoryInputError(self.line, f"event type {self.type!r} is not one of {', '.join(EVENT_TYPES)}")
        if not isinstance(self.f, str) or not self.f:
            raise HistoryInputError(self.line, f"the operation's function must be a name, not {self.f!r}")


@dataclass(frozen=True, slots=True)
class Op:
    """An invocation and what became of it; ``call``/``ret`` are positions in real-time order.

    ``ret`` is None for an indeterminate operation, and then ``output`` means
    nothing.  At equal positions calls come before returns (such operations
    are concurrent).  ``number`` identifies the operation in reports.
    """

    number: int
    process: Hashable
    f: str
    input: Any
    output: Any
    status: Status
    call: int
    ret: int | None
    key: Hashable = None
    call_line: int | None = None
    ret_line: int | None = None
    call_time: float | None = None
    ret_time: float | None = None
    payload: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if (self.ret is None) != (self.status is Status.INFO):
            raise ValueError(f"an operation has no return exactly when it is indeterminate: {self}")
        if self.ret is not None and self.ret < self.call:
            raise ValueError(f"an operation returns before its call: {self}")

    def describe(self) -> str:
        key = f" key {self.key!r}" if self.key is not None else ""
        where = f" (line {self.call_line})" if self.call_line is not None else ""
        given = f" {_show(self.input)}" if self.input is not None else ""
        result = f" -> {_show(self.output)}" if self.status is Status.OK else " -> unknown (indeterminate)"
        return f"op {self.number} process {self.process}: {self.f}{key}{given}{result}{where}"


def _show(value: Any) -> str:
    return "nil" if value is None else repr(value)


def freeze(value: Any) -> Hashable:
    """Values as hashable Python: lists and vectors become tuples, maps frozensets of pairs, sets frozensets."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(item) for item in value)
    if isinstance(value, dict):
        return frozenset((freeze(name), freeze(item)) for name, item in value.items())
    if isinstance(value, (set, frozenset)):
        return frozenset(freeze(item) for item in value)
    return value


def pair_events(events: Iterable[Event]) -> list[Op]:
    """Operations from events in real-time order; each process has at most one open invocation."""
    open_calls: dict[Hashable, tuple[int, Event]] = {}
    rows: list[tuple[int, Event, int | None, Event | None]] = []
    position = -1
    for position, event in enumerate(events):
        if position >= EVENTS_MAX:
            raise HistoryInputError(event.line, f"a history is limited to {EVENTS_MAX} events")
        _check_hashable(event)
        if event.type == "invoke":
            if event.process in open_calls:
                opened = open_calls[event.process][1]
                raise HistoryInputError(event.line, f"process {event.process!r} invokes again while its "
                                                    f"{opened.f} from line {opened.line} is still open")
            open_calls[event.process] = (position, event)
            continue
        if event.process not in open_calls:
            raise HistoryInputError(event.line, f"a {event.type} for process {event.process!r}, which has no "
                                                f"open invocation")
        call_position, invoke = open_calls.pop(event.process)
        if invoke.f != event.f:
            raise HistoryInputError(event.line, f"process {event.process!r} invoked {invoke.f} (line "
                                                f"{invoke.line}) but completes {event.f}")
        if invoke.key != event.key:
            raise HistoryInputError(event.line, f"the completion's key {event.key!r} differs from the "
                                                f"invocation's {invoke.key!r} (line {invoke.line})")
        rows.append((call_position, invoke, position, event))
    rows += [(call_position, invoke, None, None) for call_position, invoke in open_calls.values()]
    rows.sort(key=lambda row: row[0])
    kept = [row for row in rows if row[3] is None or row[3].type != "fail"]  # A failed op took no effect.
    return [_op(number, *row) for number, row in enumerate(kept)]


def _check_hashable(event: Event) -> None:
    for what, value in (("process", event.process), ("key", event.key)):
        try:
            hash(value)
        except TypeError:
            raise HistoryInputError(event.line, f"the {what} {value!r} is not a plain value") from None


def _op(number: int, call: int, invoke: Event, ret: int | None, completion: Event | None) -> Op:
    status = "info" if completion is None else completion.type
    common = dict(number=number, process=invoke.process, f=invoke.f, input=freeze(invoke.value), call=call,
                  key=invoke.key, call_line=invoke.line, call_time=invoke.time)
    if status == "info":
        return Op(output=None, status=Status.INFO, ret=None, ret_line=completion.line if completion else None,
                  ret_time=completion.time if completion else None, **common)
    assert completion is not None and ret is not None
    assert status == "ok", "failed operations are dropped before"
    return Op(output=freeze(completion.value), status=Status.OK, ret=ret, ret_line=completion.line,
              ret_time=completion.time, **common)
