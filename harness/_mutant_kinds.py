"""The two kinds the planted mutants are made of: a ``PatchPoint`` (a seam of the core) and a ``Mutant`` (a named
bug built from patches of seams).  Kept apart from the catalogue (``_mutants``, ``_mutants_epochs``) so that both
parts of the catalogue can use them without importing each other."""

from __future__ import annotations

import contextlib
import importlib
import types
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator
from unittest import mock


@dataclass(frozen=True, slots=True)
class PatchPoint:
    """One seam of the core that mutants patch, as ``"module:Owner.attribute"``, and what it decides.

    Targets are resolved when a mutant is switched on, so a seam that a
    refactor removed fails then, loudly, and importing this module never does.
    """

    target: str
    role: str

    def resolve(self) -> tuple[object, str]:
        module_name, _, path = self.target.partition(":")
        owner: object = importlib.import_module(module_name)
        *owners, attribute = path.split(".")
        for name in owners:
            owner = getattr(owner, name)
        if not hasattr(owner, attribute):
            raise AttributeError(f"patch point {self.target} no longer exists; update PATCH_POINTS")
        return owner, attribute

    def original(self):
        owner, attribute = self.resolve()
        return getattr(owner, attribute)

    def patch(self, replacement) -> ContextManager:
        owner, attribute = self.resolve()
        if isinstance(replacement, types.FunctionType):
            # Keep the patched name, so bound methods still pickle (the model checker clones replicas).
            replacement.__name__ = attribute
            replacement.__qualname__ = f"{getattr(owner, '__qualname__', '')}.{attribute}".lstrip(".")
        return mock.patch.object(owner, attribute, replacement)


@dataclass(frozen=True, slots=True)
class Mutant:
    """A named planted bug: what it breaks, and how it is switched on (``activate()`` is a context manager)."""

    name: str
    breaks: str
    patch_points: tuple[str, ...]
    build: Callable[[], list[ContextManager]]

    @contextlib.contextmanager
    def activate(self) -> Iterator["Mutant"]:
        with contextlib.ExitStack() as stack:
            for patcher in self.build():
                stack.enter_context(patcher)
            yield self
