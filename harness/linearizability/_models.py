"""The models a history is checked against: small objects with an initial state and a step.

A model's ``step(state, op)`` returns every state ``op`` could lead to from
``state``, given what was observed of it: for an ``ok`` operation, the states
its observed result allows (none if the result is impossible there); for an
indeterminate one, the states it could lead to *if it took effect*.  That it
may also never take effect is the search's business, not the model's, so a
model may leave out "nothing changed" for an indeterminate operation.

States are plain hashable values (None, numbers, strings, tuples, frozensets):
the search memoises on (linearized operations, state), so equal states must
compare and hash equal.  ``partition_key`` splits a history into independent
parts (Horn & Kroening's P-compositionality): operations on different keys of
a map touch disjoint state, so each key is checked alone.

For speed each shipped model compiles an operation once (``transition``) into
a function of the state; ``step`` is that function applied, so the two cannot
disagree.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Protocol

from ._ops import Op, Status

Transition = Callable[[Hashable], tuple]
NOTHING: tuple = ()


class Model(Protocol):
    """What ``check`` needs; ``partition_key`` and ``validate`` are optional."""

    def initial(self) -> Hashable: ...

    def step(self, state: Hashable, op: Op) -> tuple: ...


class CompiledModel:
    """Base for the shipped models: subclasses write ``transition``; ``step`` applies it."""

    name = ""
    functions: tuple[str, ...] = ()

    def initial(self) -> Hashable:
        return None

    def transition(self, op: Op) -> Transition:
        raise NotImplementedError

    def step(self, state: Hashable, op: Op) -> tuple:
        return self.transition(op)(state)

    def partition_key(self, op: Op) -> Hashable:
        return None

    def validate(self, op: Op) -> str | None:
        """Why ``op`` is not an operation of this model, or None when it is."""
        if op.f not in self.functions:
            return f"the {self.name} model has no operation {op.f!r} (it knows {', '.join(self.functions)})"
        return self.validate_values(op)

    def validate_values(self, op: Op) -> str | None:
        return None


def _reads(expected: Any) -> Transition:
    return lambda state: (state,) if state == expected else NOTHING


def _writes(value: Any) -> Transition:
    written = (value,)
    return lambda state: written


def _ignored(state: Hashable) -> tuple:
    return NOTHING  # An indeterminate read changes nothing and observed nothing: it may as well never happen.


class Register(CompiledModel):
    """A read/write register, initially ``initial`` (nil in Jepsen's histories)."""

    name = "register"
    functions = ("read", "write")

    def __init__(self, initial: Hashable = None) -> None:
        self._initial = initial

    def initial(self) -> Hashable:
        return self._initial

    def transition(self, op: Op) -> Transition:
        if op.f == "write":
            return _writes(op.input)
        return _reads(op.output) if op.status is Status.OK else _ignored


class CASRegister(Register):
    """A register with compare-and-set: ``cas`` takes ``[expected new]``.

    An ``ok`` cas succeeded, unless its result is ``false``: then it was
    observed to fail its comparison (porcupine's etcd logs record this as a
    ``:fail``), which took no effect but says the register did not hold the
    expected value at that point.
    """

    name = "cas-register"
    functions = ("read", "write", "cas")

    def validate_values(self, op: Op) -> str | None:
        if op.f == "cas" and not (isinstance(op.input, tuple) and len(op.input) == 2):
            return f"a cas takes [expected new], not {op.input!r}"
        return None

    def transition(self, op: Op) -> Transition:
        if op.f != "cas":
            return super().transition(op)
        expected, new = op.input
        if op.status is Status.OK and op.output is False:
            return lambda state: (state,) if state != expected else NOTHING
        swapped = (new,)
        return lambda state: swapped if state == expected else NOTHING


class KeyValue(CompiledModel):
    """A map from keys to strings (porcupine's key-value model): get, put, append; partitioned by key."""

    name = "kv"
    functions = ("get", "put", "append")

    def __init__(self, initial: str = "") -> None:
        self._initial = initial

    def initial(self) -> Hashable:
        return self._initial

    def partition_key(self, op: Op) -> Hashable:
        return op.key

    def validate_values(self, op: Op) -> str | None:
        if op.key is None:
            return f"a {op.f} needs a key"
        if op.f in ("put", "append") and not isinstance(op.input, str):
            return f"{op.f} takes a string, not {op.input!r}"
        if op.f == "get" and op.status is Status.OK and not isinstance(op.output, str):
            return f"a get returns a string, not {op.output!r}"
        return None

    def transition(self, op: Op) -> Transition:
        if op.f == "put":
            return _writes(op.input)
        if op.f == "append":
            suffix = op.input
            return lambda state: (state + suffix,)
        return _reads(op.output) if op.status is Status.OK else _ignored


class Set(CompiledModel):
    """A grow-only set: ``add`` an element, ``read`` the whole set (any collection; order ignored)."""

    name = "set"
    functions = ("add", "read")

    def initial(self) -> Hashable:
        return frozenset()

    def validate_values(self, op: Op) -> str | None:
        if op.f == "read" and op.status is Status.OK and not isinstance(op.output, (tuple, frozenset)):
            return f"a read of a set returns a collection, not {op.output!r}"
        return None

    def transition(self, op: Op) -> Transition:
        if op.f == "add":
            element = op.input
            if op.status is Status.OK:
                return lambda state: (state if element in state else state | {element},)
            return lambda state: NOTHING if element in state else (state | {element},)
        return _reads(frozenset(op.output)) if op.status is Status.OK else _ignored


class Mutex(CompiledModel):
    """A lock: ``acquire`` needs it free, ``release`` needs it held."""

    name = "mutex"
    functions = ("acquire", "release")

    def initial(self) -> Hashable:
        return False

    def transition(self, op: Op) -> Transition:
        if op.f == "acquire":
            return lambda held: NOTHING if held else (True,)
        return lambda held: (False,) if held else NOTHING


class MultiRegister(CompiledModel):
    """Registers by name, used in transactions (Knossos's multi-register): ``txn`` of ``[f name value]``.

    Each micro-operation is a ``read`` or a ``write`` of one register; registers
    start as nil.  An ``ok`` transaction's result is the transaction with the
    values its reads saw; an indeterminate one applies its writes, if at all.
    The state is the set of (name, value) pairs of registers written so far.
    """

    name = "multi-register"
    functions = ("txn",)

    def initial(self) -> Hashable:
        return frozenset()

    def validate_values(self, op: Op) -> str | None:
        for value in (op.input, op.output if op.status is Status.OK else ()):
            if not isinstance(value, tuple) or not all(_is_micro_op(micro) for micro in value):
                return f"a txn is a list of [read|write name value], not {value!r}"
        if op.status is Status.OK and len(op.input) != len(op.output):
            return "an ok txn returns as many micro-operations as it was given"
        return None

    def transition(self, op: Op) -> Transition:
        micro_ops = tuple((_micro_name(f), name, value) for f, name, value in
                          (op.output if op.status is Status.OK else op.input))
        observed = op.status is Status.OK
        if not observed and all(f in ("read", "r") for f, _, _ in micro_ops):
            return _ignored

        def run(state: Hashable) -> tuple:
            registers = dict(state)
            for f, name, value in micro_ops:
                if f in ("write", "w"):
                    registers[name] = value
                elif observed and registers.get(name) != value:
                    return NOTHING
            return (frozenset(registers.items()),)
        return run


def _micro_name(f: Any) -> str:
    return f.name if hasattr(f, "name") else str(f)


def _is_micro_op(micro: Any) -> bool:
    return isinstance(micro, tuple) and len(micro) == 3 and _micro_name(micro[0]) in ("read", "write", "r", "w")


class _Unobserved:
    """The register holds a verdict no client has seen yet (an indeterminate execute took effect)."""

    def __repr__(self) -> str:
        return "executed-unobserved"


EXECUTED_UNOBSERVED = _Unobserved()


class VerdictRegister(CompiledModel):
    """One request key's verdict: unset until the first execute takes effect, then fixed forever.

    An ``ok`` execute returns [verdict seq]: the first one to take effect fixes
    the register, every later one must return exactly that.  An indeterminate
    execute either took no effect or fixed the register to a value nobody has
    observed, which the next ``ok`` reveals.  Partitioned by request key.
    """

    name = "verdict"
    functions = ("execute",)

    def partition_key(self, op: Op) -> Hashable:
        return op.key

    def validate_values(self, op: Op) -> str | None:
        if op.key is None:
            return "an execute needs the request key"
        if op.status is Status.OK and not (isinstance(op.output, tuple) and len(op.output) == 2):
            return f"an ok execute returns [verdict seq], not {op.output!r}"
        return None

    def transition(self, op: Op) -> Transition:
        if op.status is not Status.OK:
            return lambda state: (EXECUTED_UNOBSERVED,) if state is None else NOTHING
        value = op.output
        fixed = (value,)
        return lambda state: fixed if state is None or state is EXECUTED_UNOBSERVED or state == value else NOTHING


MODELS: dict[str, Callable[[], CompiledModel]] = {
    "register": Register, "cas-register": CASRegister, "kv": KeyValue, "set": Set, "mutex": Mutex,
    "multi-register": MultiRegister, "verdict": VerdictRegister,
}
