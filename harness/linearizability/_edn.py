"""A small strict reader for the part of EDN that Jepsen histories use.

It reads nil, booleans, integers (an ``N`` suffix allowed), floats (``M``
allowed), strings, characters, keywords, symbols, vectors, lists, maps, sets,
comments, ``#_`` discards and tagged values (``#inst "..."``, Jepsen's
``#jepsen.history.Op{...}``; the tag is dropped, the value kept).  Keywords
become ``Keyword``; vectors and lists Python lists; maps dicts; sets
frozensets; a list remembers its items' lines.  Anything else raises ``HistoryInputError`` with the line.

Why not a registry library: the one well-known package parses with a
generated grammar that reports no line numbers, and the command line must name
the line of bad input.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from ._ops import HistoryInputError, Keyword, freeze

DEPTH_MAX = 64  # Nesting deeper than this is not a history.
_TOKEN = re.compile(r"""
    (?P<space>[\s,]+|;[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<open>\#\{|[\[({])
  | (?P<close>[\])}])
  | (?P<discard>\#_)
  | (?P<tag>\#[A-Za-z][\w.\-/*+!?<>=]*)
  | (?P<char>\\(?:newline|space|tab|return|u[0-9a-fA-F]{4}|.))
  | (?P<atom>[^\s,;"\[\](){}\\]+)
""", re.VERBOSE | re.DOTALL)
_INTEGER = re.compile(r"[+-]?\d+N?")
_FLOAT = re.compile(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?M?")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "b": "\b", "f": "\f"}
_CHARACTERS = {"newline": "\n", "space": " ", "tab": "\t", "return": "\r"}
_CLOSERS = {"[": "]", "(": ")", "{": "}", "#{": "}"}


class LinedList(list):
    """A vector or list that remembers the line each of its items starts on (for error messages)."""

    lines: list[int]


def read_all(text: str) -> Iterator[tuple[int, Any]]:
    """Every top-level value in ``text`` with the line it starts on."""
    tokens = _tokens(text)
    while True:
        token = next(tokens, None)
        if token is None:
            return
        line, _, _ = token
        yield line, _value(token, tokens, 0)


def _tokens(text: str) -> Iterator[tuple[int, str, str]]:
    position, line = 0, 1
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise HistoryInputError(line, f"cannot read EDN at {text[position:position + 20]!r}")
        kind, token = match.lastgroup, match.group()
        if kind != "space":
            yield line, kind, token
        line += token.count("\n")
        position = match.end()


def _value(token: tuple[int, str, str], tokens: Iterator[tuple[int, str, str]], depth: int) -> Any:
    line, kind, text = token
    if depth > DEPTH_MAX:
        raise HistoryInputError(line, f"values nested deeper than {DEPTH_MAX}")
    if kind == "open":
        return _collection(line, text, tokens, depth)
    if kind in ("tag", "discard"):
        inner = _next(tokens, line, f"a value after {text}")
        value = _value(inner, tokens, depth + 1)
        return _value(_next(tokens, line, "a value after the discarded one"), tokens, depth) \
            if kind == "discard" else value
    if kind == "close":
        raise HistoryInputError(line, f"unexpected {text!r}")
    if kind == "string":
        return _string(line, text[1:-1])
    if kind == "char":
        name = text[1:]
        return _CHARACTERS.get(name) or (chr(int(name[1:], 16)) if len(name) == 5 and name[0] == "u" else name)
    return _atom(line, text)


def _next(tokens: Iterator[tuple[int, str, str]], line: int, wanted: str) -> tuple[int, str, str]:
    token = next(tokens, None)
    if token is None:
        raise HistoryInputError(line, f"the input ends where {wanted} was expected")
    return token


def _collection(line: int, opener: str, tokens: Iterator[tuple[int, str, str]], depth: int) -> Any:
    items, lines = [], []
    while True:
        token = _next(tokens, line, f"{_CLOSERS[opener]!r} to close the {opener!r} of line {line}")
        if token[1] == "close":
            if token[2] != _CLOSERS[opener]:
                raise HistoryInputError(token[0], f"{token[2]!r} closes the {opener!r} of line {line}")
            break
        if token[1] == "discard":
            _value(_next(tokens, token[0], "a value after #_"), tokens, depth + 1)
            continue
        items.append(_value(token, tokens, depth + 1))
        lines.append(token[0])
    if opener == "{":
        if len(items) % 2:
            raise HistoryInputError(line, "a map needs an even number of forms")
        return {freeze(items[i]): items[i + 1] for i in range(0, len(items), 2)}
    if opener == "#{":
        return frozenset(freeze(item) for item in items)
    listed = LinedList(items)
    listed.lines = lines
    return listed


def _string(line: int, body: str) -> str:
    if "\\" not in body:
        return body
    out, position = [], 0
    while position < len(body):
        character = body[position]
        if character != "\\":
            out.append(character)
            position += 1
            continue
        escape = body[position + 1]
        if escape == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[position + 2:position + 6]):
            out.append(chr(int(body[position + 2:position + 6], 16)))
            position += 6
            continue
        if escape not in _ESCAPES:
            raise HistoryInputError(line, f"unknown string escape \\{escape}")
        out.append(_ESCAPES[escape])
        position += 2
    return "".join(out)


def _atom(line: int, text: str) -> Any:
    if text == "nil":
        return None
    if text in ("true", "false"):
        return text == "true"
    if text[0] == ":":
        if len(text) == 1:
            raise HistoryInputError(line, "a keyword needs a name")
        return Keyword(text[1:])
    if _INTEGER.fullmatch(text):
        return int(text.rstrip("N"))
    if _FLOAT.fullmatch(text):
        return float(text.rstrip("M"))
    if text[0].isdigit() or (text[0] in "+-" and len(text) > 1 and text[1].isdigit()):
        raise HistoryInputError(line, f"{text!r} is not a number")
    return text  # A symbol: kept as its name.
