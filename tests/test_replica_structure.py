"""The replica is composed of components that own their state: no component module assigns, augments or
deletes an attribute (or an item of one) reached through the replica or another component, and what differs by
role is one dispatch table covering both roles (module sizes: tests/test_module_sizes.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bft.core
from bft.core._replica import ROLE_STEPS, Role

CORE = Path(bft.core.__file__).parent
COMPONENT_MODULES = ("_requests.py", "_normal_case.py", "_replica_views.py", "_checkpoints.py", "_catch_up.py",
                     "_replica_execution.py", "_replica_accountability.py")


def _root_and_depth(node: ast.expr) -> tuple[str | None, int]:
    """The name an attribute/item chain starts from, and how many attribute steps it takes."""
    depth = 0
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        depth += isinstance(node, ast.Attribute)
        node = node.value
    return (node.id if isinstance(node, ast.Name) else None), depth


def _targets(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            yield from node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            yield node.target
        elif isinstance(node, ast.Delete):
            yield from node.targets


def foreign_writes(source: str) -> list[str]:
    """Writes through ``self.<component>.<attribute>`` or the ``replica`` back-reference."""
    found = []
    for target in _targets(ast.parse(source)):
        for each in (target.elts if isinstance(target, ast.Tuple) else [target]):
            root, depth = _root_and_depth(each)
            if (root == "self" and depth >= 2) or (root == "replica" and depth >= 1):
                found.append(f"line {each.lineno}: {ast.unparse(each)}")
    return found


@pytest.mark.parametrize("module", COMPONENT_MODULES)
def test_a_component_changes_no_other_components_state(module):
    assert foreign_writes((CORE / module).read_text()) == []


def test_the_check_sees_a_write_into_another_component():
    assert foreign_writes("def f(self):\n    self.replica.view = 3\n") == ["line 2: self.replica.view"]
    assert foreign_writes("def f(self):\n    replica = self.replica\n    replica.pending[1] += 1\n") \
        == ["line 3: replica.pending[1]"]
    assert foreign_writes("def f(self):\n    self.slots[3] = None\n    slot.prepared = True\n") == []


def test_every_role_has_every_step():
    assert set(ROLE_STEPS) == set(Role)
    for steps in ROLE_STEPS.values():
        assert all(callable(step) for step in (steps.on_tick, steps.propose, steps.send_own_vote,
                                               steps.answer_lagging_view_change))
