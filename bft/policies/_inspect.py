"""How much of an action a policy inspects, and the text folding every built-in policy shares."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any, Iterable, Mapping

from ..core import Risk

# How much of an action a policy inspects; anything larger or deeper is denied, not skipped.
MAX_INSPECT_DEPTH = 16
MAX_INSPECT_STRINGS = 4096
CAPABILITY_FIELDS = ("capability", "tool")
RISK_ORDER = {Risk.LOW: 0, Risk.MEDIUM: 1, Risk.HIGH: 2, Risk.CRITICAL: 3}


class _TooComplex(Exception):
    """The action nests deeper or holds more strings than a policy is willing to inspect."""


def _strings(value: Any, depth: int = 0, found: list[str] | None = None) -> list[str]:
    """Every string in a JSON value, keys included, up to the inspection bounds."""
    found = [] if found is None else found
    if depth > MAX_INSPECT_DEPTH:
        raise _TooComplex(f"nested deeper than {MAX_INSPECT_DEPTH} levels")
    if isinstance(value, str):
        found.append(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _strings(key, depth + 1, found)
            _strings(item, depth + 1, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _strings(item, depth + 1, found)
    if len(found) > MAX_INSPECT_STRINGS:
        raise _TooComplex(f"more than {MAX_INSPECT_STRINGS} strings")
    return found


def normalize_text(text: str) -> str:
    """Fold the tricks that make two texts look different to a matcher but alike to a reader:
    compatibility forms (full-width letters), invisible format characters (zero-width
    spaces), case, and runs of whitespace."""
    folded = unicodedata.normalize("NFKC", text)
    visible = "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")
    return " ".join(visible.casefold().split())


def capability_of(action: Mapping[str, Any]) -> str | None:
    """The normalised capability an action asks for, or None if it names none (or not as a string)."""
    for field_name in CAPABILITY_FIELDS:
        value = action.get(field_name)
        if isinstance(value, str) and value.strip():
            return normalize_text(value)
    return None


def _compile(patterns: Iterable[str], fold: bool = False) -> tuple[re.Pattern, ...]:
    """Compiled ``patterns`` (folded like the text they will search if ``fold``); a bad one is a ValueError."""
    if isinstance(patterns, str):
        raise ValueError(f"expected a list of patterns, not the single string {patterns!r}")
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(normalize_text(pattern) if fold else pattern))
        except (re.error, TypeError) as error:
            raise ValueError(f"pattern {pattern!r} is not a regular expression ({error})") from None
    return tuple(compiled)



def _names(values: Iterable[str]) -> tuple[str, ...]:
    """A configured list of names; a bare string is refused, since iterating it would give its letters."""
    if isinstance(values, str):
        raise ValueError(f"expected a list of names, not the single string {values!r}")
    names = tuple(values)
    if not all(isinstance(name, str) for name in names):
        raise ValueError(f"expected a list of names, not {names!r}")
    return names


def _canonical_text(action: Mapping[str, Any]) -> str:
    try:
        return json.dumps(action, sort_keys=True, ensure_ascii=False, default=repr)
    except (TypeError, ValueError) as error:  # Mixed key types or a cycle: not a JSON object.
        raise _TooComplex(f"cannot be written as JSON: {error}") from None
