"""Field kinds for the strict wire schema.

Every message field declares one of these kinds.  Each kind turns a Python
value into plain msgpack data (``to_wire``) and checks plain data coming off
the wire (``from_wire``), raising ``RemoteProtocolError`` with the field path
on the first violation.  Only arrays, ints, bytes and str are used on the wire:
no maps and no floats, so msgpack's encoding of a value is unique (canonical).

Coding is on every replica's hot path (each message it receives or sends, and
every request and vote nested in a batch), so both directions run a plan
prepared once per record type, and a check builds nothing for valid input: a
violation carries only its detail, and each enclosing record or list adds its
step to the path while the violation travels up to the ``from_wire`` that
started the check.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
from dataclasses import dataclass
from typing import Any, Callable

import msgpack

from ._errors import RemoteProtocolError

UINT64_MAX = 2**64 - 1


def pack(plain: Any) -> bytes:
    """The canonical msgpack encoding of plain data (arrays, ints, bytes, str)."""
    return msgpack.packb(plain, use_bin_type=True)


def _reject(path: str, detail: str) -> RemoteProtocolError:
    return RemoteProtocolError("schema", f"{path}: {detail}")


class _Violation(Exception):
    """Plain data broke a kind's rule; ``steps`` collects the path from the innermost field outwards."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.steps: list[str] = []

    def at(self, path: str) -> RemoteProtocolError:
        return _reject(path + "".join(reversed(self.steps)), self.detail)


class _Kind:
    """What every kind shares: ``from_wire`` runs the kind's ``validate`` and names the path on failure."""

    __slots__ = ()

    def validate(self, data: Any) -> Any:
        """The value ``data`` stands for, or ``_Violation``."""
        raise NotImplementedError

    def from_wire(self, data: Any, path: str) -> Any:
        try:
            return self.validate(data)
        except _Violation as violation:
            raise violation.at(path) from None


@dataclass(frozen=True, slots=True)
class Int(_Kind):
    minimum: int = 0
    maximum: int = UINT64_MAX

    def to_wire(self, value: int) -> int:
        return value

    def validate(self, data: Any) -> int:
        if type(data) is not int:
            raise _Violation(f"expected int, got {type(data).__name__}")
        if not self.minimum <= data <= self.maximum:
            raise _Violation(f"{data} outside [{self.minimum}, {self.maximum}]")
        return data


@dataclass(frozen=True, slots=True)
class Bytes(_Kind):
    min_length: int = 0
    max_length: int = 64

    def to_wire(self, value: bytes) -> bytes:
        return value

    def validate(self, data: Any) -> bytes:
        if type(data) is not bytes:
            raise _Violation(f"expected bytes, got {type(data).__name__}")
        if not self.min_length <= len(data) <= self.max_length:
            raise _Violation(f"length {len(data)} outside [{self.min_length}, {self.max_length}]")
        return data


@dataclass(frozen=True, slots=True)
class Text(_Kind):
    max_length: int
    min_length: int = 0
    check: Callable[[str], str | None] | None = None

    def to_wire(self, value: str) -> str:
        return value

    def validate(self, data: Any) -> str:
        if type(data) is not str:
            raise _Violation(f"expected str, got {type(data).__name__}")
        # ASCII text has one UTF-8 byte per character, so only other text needs encoding to be measured.
        size = len(data) if data.isascii() else len(data.encode())
        if not self.min_length <= size <= self.max_length:
            raise _Violation(f"length outside [{self.min_length}, {self.max_length}] bytes")
        problem = self.check(data) if self.check else None
        if problem:
            raise _Violation(problem)
        return data


@dataclass(frozen=True, slots=True)
class Enum(_Kind):
    enum_type: type[enum.Enum]

    def to_wire(self, value: enum.Enum) -> Any:
        return value._value_  # The documented attribute behind ``value``, without the descriptor's cost.

    def validate(self, data: Any) -> enum.Enum:
        if type(data) in (int, str, bytes):  # Scalars only: a peer's nested arrays never reach the lookup.
            try:
                member = self.enum_type(data)
            except ValueError:
                member = None
            if member is not None and type(member._value_) is type(data):  # No True for 1, no 1 for True.
                return member
        shown = repr(data)[:40] if type(data) in (int, str, bytes) else type(data).__name__
        raise _Violation(f"not a valid {self.enum_type.__name__}: {shown}")


@dataclass(frozen=True, slots=True)
class Nested(_Kind):
    """A nested record: any class with a ``SCHEMA`` of (name, kind) pairs."""

    record_type: type

    def to_wire(self, value: Any) -> list:
        return record_to_wire(value)

    def validate(self, data: Any) -> Any:
        return _validate_record(self.record_type, data)


@dataclass(frozen=True, slots=True)
class ListOf(_Kind):
    item: Any
    max_length: int
    min_length: int = 0

    def to_wire(self, value: tuple) -> list:
        return [self.item.to_wire(element) for element in value]

    def validate(self, data: Any) -> tuple:
        if type(data) is not list:
            raise _Violation(f"expected array, got {type(data).__name__}")
        if not self.min_length <= len(data) <= self.max_length:
            raise _Violation(f"{len(data)} items outside [{self.min_length}, {self.max_length}]")
        validate, values = self.item.validate, []
        for index, element in enumerate(data):
            try:
                values.append(validate(element))
            except _Violation as violation:
                violation.steps.append(f"[{index}]")
                raise
        return tuple(values)


# ----------------------------------------------------------------- records

# Kinds whose ``to_wire`` returns the value itself: encoding skips the call for them.
_IDENTITY_KINDS = (Int, Bytes, Text)


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to code one record type, prepared once from its ``SCHEMA``."""

    names: tuple[str, ...]
    positional: bool  # The constructor takes every field by position (none is keyword-only).
    validators: tuple[Callable[[Any], Any], ...]
    read_fields: Callable[[Any], tuple]  # The field values in SCHEMA order, read in one call.
    converters: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, to_wire) of the kinds that convert.
    after_decode: Callable[[Any, list], None] | None


_PLANS: dict[type, _Plan] = {}
# Called with (record, validated plain data) after a record of that type is decoded; see ``on_decode``.
_DECODE_HOOKS: dict[type, Callable[[Any, list], None]] = {}


def on_decode(record_type: type, hook: Callable[[Any, list], None]) -> None:
    """Have ``hook(record, plain)`` run on every ``record_type`` decoded, with the plain data it came from
    (the codec keeps signed messages' canonical bytes this way).  Register before the first decode."""
    assert record_type not in _PLANS, f"{record_type.__name__} was decoded before its hook was registered"
    _DECODE_HOOKS[record_type] = hook


def _plan(record_type: type) -> _Plan:
    plan = _PLANS.get(record_type)
    if plan is None:
        schema = record_type.SCHEMA
        names = tuple(name for name, _ in schema)
        getter = operator.attrgetter(*names)
        read_fields = getter if len(names) > 1 else (lambda record: (getter(record),))
        converters = tuple((position, kind.to_wire) for position, (_, kind) in enumerate(schema)
                           if not isinstance(kind, _IDENTITY_KINDS))
        positional = dataclasses.is_dataclass(record_type) and \
            not any(field.kw_only for field in dataclasses.fields(record_type))
        plan = _PLANS[record_type] = _Plan(names, positional, tuple(kind.validate for _, kind in schema),
                                           read_fields, converters, _DECODE_HOOKS.get(record_type))
    return plan


def record_to_wire(record: Any) -> list:
    plan = _plan(type(record))
    plain = list(plan.read_fields(record))
    for position, to_wire in plan.converters:
        plain[position] = to_wire(plain[position])
    return plain


def record_from_wire(record_type: type, data: Any, path: str) -> Any:
    try:
        return _validate_record(record_type, data)
    except _Violation as violation:
        raise violation.at(path) from None


def _validate_record(record_type: type, data: Any) -> Any:
    plan = _plan(record_type)
    if type(data) is not list:
        raise _Violation(f"expected array for {record_type.__name__}")
    if len(data) != len(plan.names):
        raise _Violation(f"{record_type.__name__} needs {len(plan.names)} fields, got {len(data)}")
    values = []
    for name, validate, item in zip(plan.names, plan.validators, data):
        try:
            values.append(validate(item))
        except _Violation as violation:
            violation.steps.append(f".{name}")
            raise
    record = record_type(*values) if plan.positional else record_type(**dict(zip(plan.names, values)))
    if plan.after_decode is not None:
        plan.after_decode(record, data)
    return record


def check_schema_matches_fields(record_type: type) -> None:
    """Assert at import time that a record's SCHEMA lists exactly its dataclass fields, in order."""
    field_names = tuple(field.name for field in dataclasses.fields(record_type))
    schema_names = tuple(name for name, _ in record_type.SCHEMA)
    assert field_names == schema_names, (record_type.__name__, field_names, schema_names)
