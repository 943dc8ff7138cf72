"""Field kinds for the strict wire schema.

Every message field declares one of these kinds.  Each kind turns a Python
value into plain msgpack data (``to_wire``) and checks plain data coming off
the wire (``from_wire``), raising ``RemoteProtocolError`` with the field path
on the first violation.  Only arrays, ints, bytes and str are used on the wire:
no maps and no floats, so msgpack's encoding of a value is unique (canonical).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, Callable

from ._errors import RemoteProtocolError

UINT64_MAX = 2**64 - 1


def _reject(path: str, detail: str) -> RemoteProtocolError:
    return RemoteProtocolError("schema", f"{path}: {detail}")


@dataclass(frozen=True, slots=True)
class Int:
    minimum: int = 0
    maximum: int = UINT64_MAX

    def to_wire(self, value: int) -> int:
        return value

    def from_wire(self, data: Any, path: str) -> int:
        if type(data) is not int:
            raise _reject(path, f"expected int, got {type(data).__name__}")
        if not self.minimum <= data <= self.maximum:
            raise _reject(path, f"{data} outside [{self.minimum}, {self.maximum}]")
        return data


@dataclass(frozen=True, slots=True)
class Bytes:
    min_length: int = 0
    max_length: int = 64

    def to_wire(self, value: bytes) -> bytes:
        return value

    def from_wire(self, data: Any, path: str) -> bytes:
        if type(data) is not bytes:
            raise _reject(path, f"expected bytes, got {type(data).__name__}")
        if not self.min_length <= len(data) <= self.max_length:
            raise _reject(path, f"length {len(data)} outside [{self.min_length}, {self.max_length}]")
        return data


@dataclass(frozen=True, slots=True)
class Text:
    max_length: int
    min_length: int = 0
    check: Callable[[str], str | None] | None = None

    def to_wire(self, value: str) -> str:
        return value

    def from_wire(self, data: Any, path: str) -> str:
        if type(data) is not str:
            raise _reject(path, f"expected str, got {type(data).__name__}")
        if not self.min_length <= len(data.encode()) <= self.max_length:
            raise _reject(path, f"length outside [{self.min_length}, {self.max_length}] bytes")
        problem = self.check(data) if self.check else None
        if problem:
            raise _reject(path, problem)
        return data


@dataclass(frozen=True, slots=True)
class Enum:
    enum_type: type[enum.Enum]

    def to_wire(self, value: enum.Enum) -> Any:
        return value.value

    def from_wire(self, data: Any, path: str) -> enum.Enum:
        for member in self.enum_type:
            if type(member.value) is type(data) and member.value == data:
                return member
        shown = repr(data)[:40] if type(data) in (int, str, bytes) else type(data).__name__
        raise _reject(path, f"not a valid {self.enum_type.__name__}: {shown}")


@dataclass(frozen=True, slots=True)
class Nested:
    """A nested record: any class with a ``SCHEMA`` of (name, kind) pairs."""

    record_type: type

    def to_wire(self, value: Any) -> list:
        return record_to_wire(value)

    def from_wire(self, data: Any, path: str) -> Any:
        return record_from_wire(self.record_type, data, path)


@dataclass(frozen=True, slots=True)
class ListOf:
    item: Any
    max_length: int
    min_length: int = 0

    def to_wire(self, value: tuple) -> list:
        return [self.item.to_wire(element) for element in value]

    def from_wire(self, data: Any, path: str) -> tuple:
        if type(data) is not list:
            raise _reject(path, f"expected array, got {type(data).__name__}")
        if not self.min_length <= len(data) <= self.max_length:
            raise _reject(path, f"{len(data)} items outside [{self.min_length}, {self.max_length}]")
        return tuple(self.item.from_wire(element, f"{path}[{index}]") for index, element in enumerate(data))


def record_to_wire(record: Any) -> list:
    return [kind.to_wire(getattr(record, name)) for name, kind in record.SCHEMA]


def record_from_wire(record_type: type, data: Any, path: str) -> Any:
    schema = record_type.SCHEMA
    if type(data) is not list:
        raise _reject(path, f"expected array for {record_type.__name__}")
    if len(data) != len(schema):
        raise _reject(path, f"{record_type.__name__} needs {len(schema)} fields, got {len(data)}")
    values = {name: kind.from_wire(item, f"{path}.{name}") for (name, kind), item in zip(schema, data)}
    return record_type(**values)


def check_schema_matches_fields(record_type: type) -> None:
    """Assert at import time that a record's SCHEMA lists exactly its dataclass fields, in order."""
    field_names = tuple(field.name for field in dataclasses.fields(record_type))
    schema_names = tuple(name for name, _ in record_type.SCHEMA)
    assert field_names == schema_names, (record_type.__name__, field_names, schema_names)
