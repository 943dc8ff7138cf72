"""Proves the loop-only JSON shape measures agree with the real nesting of any JSON value (brackets and escaped quotes inside strings ignored), never under-estimate on malformed text, and end on self-containing values."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bft.core._json_shape import text_depth, value_shape_problem

TRICKY_TEXT = st.text(alphabet=st.sampled_from('[]{}"\\ab\n,:'), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | TRICKY_TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TRICKY_TEXT, children, max_size=3),
    max_leaves=30)


def depth_of(value) -> int:
    """The nesting of containers, by recursion (the values here are shallow)."""
    if isinstance(value, dict):
        return 1 + max((depth_of(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(item) for item in value), default=0)
    return 0


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(value=json_values, indent=st.sampled_from([None, 2]))
def test_the_text_depth_is_the_nesting_of_the_value_it_encodes(value, indent) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    assert text_depth(text) == depth_of(value)
    depth = depth_of(value)
    if depth:
        assert value_shape_problem(value, depth, 10_000) is None
    if depth > 1:
        assert value_shape_problem(value, depth - 1, 10_000) == f"nests deeper than {depth - 1} levels"


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(value=json_values, cut=st.integers(min_value=0, max_value=200))
def test_truncated_text_is_never_measured_shallower_than_what_json_would_parse(value, cut) -> None:
    text = json.dumps(value)[:cut]
    try:
        parsed = json.loads(text)
    except ValueError:
        return
    assert text_depth(text) >= depth_of(parsed)


def test_self_containing_and_huge_values_end_with_a_reason() -> None:
    loop: list = []
    loop.append(loop)
    assert value_shape_problem(loop, 32, 1_000_000) == "nests deeper than 32 levels"
    assert value_shape_problem({"a": list(range(100))}, 32, 50) == "holds more than 50 values"
    assert text_depth('{"a": "[[[[", "b": "\\"[["}') == 1
