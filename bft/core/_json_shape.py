"""Bounds on the shape of JSON (nesting depth, item count), measured without recursion.

Python's ``json`` module parses and writes nested values recursively, so a
hostile text ten thousand brackets deep raises ``RecursionError`` (or, called
from an already deep stack, fails at a depth well below the interpreter's
limit).  Everything that parses JSON someone else wrote, or writes JSON a
caller handed in, measures the shape here first, with loops only, and hands
``json`` only values whose depth is bounded by a small constant.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Mapping

# A JSON string: quotes around any run of plain characters and backslash escapes.  The pattern has
# no nested repetition that can backtrack, so it runs in time linear in the text.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_OPENING = frozenset("[{")


def text_depth(text: str) -> int:
    """The deepest bracket nesting of JSON ``text`` (a top-level object is 1), brackets in strings skipped.

    For text that is not JSON (an unclosed string, say) this may over-estimate, never
    under-estimate: it can only make a caller refuse text that ``json`` would refuse anyway.
    """
    brackets = _BRACKET.findall(_STRING.sub('""', text))
    steps = (1 if bracket in _OPENING else -1 for bracket in brackets)
    return max(itertools.accumulate(steps), default=0)


def value_shape_problem(value: Any, depth_max: int, items_max: int) -> str | None:
    """Why ``value`` (dicts, lists and scalars) is too deep or too large, or None if it is within bounds.

    A value that contains itself is reported as too deep, so this ends on any input.
    """
    assert depth_max >= 1 and items_max >= 1
    stack: list[tuple[Any, int]] = [(value, 1)]
    items = 0
    while stack:
        current, depth = stack.pop()
        items += 1
        if items > items_max:
            return f"holds more than {items_max} values"
        if isinstance(current, Mapping):
            children = list(current.values())
        elif isinstance(current, (list, tuple)):
            children = list(current)
        else:
            continue
        if depth > depth_max:
            return f"nests deeper than {depth_max} levels"
        stack.extend((child, depth + 1) for child in children)
    return None
