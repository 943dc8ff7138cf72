"""History files: Jepsen EDN, JSON Lines, and the Jepsen log lines of porcupine's etcd suite.

JSON Lines (one event per line; ``#`` starts a comment line)::

    {"process": 0, "type": "invoke", "f": "write", "value": 3}
    {"process": 0, "type": "ok", "f": "write", "value": 3}
    {"process": 1, "type": "invoke", "f": "get", "key": "x", "value": null}
    {"process": 1, "type": "info", "f": "get", "key": "x"}

``process`` pairs an invoke with the next completion of the same process;
``type`` is invoke, ok, fail or info; ``f`` names the model's operation;
``value`` is the input on an invoke and the result on an ok; ``key`` (for
partitioned models) and ``time`` (any number, shown in reports) are optional,
and other fields are ignored.  The harness's own ``history.jsonl`` (lines with
an ``operation_id``) is read as the verdict model's history.

EDN: a vector of Jepsen operation maps, or one map per top-level form, with
the same fields as keywords (``:process :type :f :value :key :time``).  Events
of the ``:nemesis`` process are skipped.

Jepsen log lines (``INFO jepsen.util - 3 :invoke :cas [1 4]``): as porcupine
reads them, a ``:fail`` cas was observed to fail its comparison (``ok`` with
result ``false`` for the cas-register model); other ``:fail``s took no effect.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

from . import _edn
from ._ops import Event, HistoryInputError, Keyword, Op, Status, freeze, pair_events

FORMATS = ("edn", "jsonl", "jepsen-log")
FILE_BYTES_MAX = 1 << 30  # One gibibyte: larger than any history a search could finish.
NEMESIS = Keyword("nemesis")
_LOG_LINE = re.compile(r"^INFO\s+jepsen\.util\s+-\s+(\S+)\s+:(\w+)\s+:([\w\-]+)\s*(.*?)\s*$")


def read_file(path: Path, format: str | None = None) -> list[Op]:
    """The operations in the history file at ``path``; ``format`` is guessed from the content when None."""
    if path.stat().st_size > FILE_BYTES_MAX:
        raise HistoryInputError(None, f"{path} is larger than {FILE_BYTES_MAX} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise HistoryInputError(None, f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    return read_text(text, format or guess_format(text))


def read_text(text: str, format: str) -> list[Op]:
    if format not in FORMATS:
        raise HistoryInputError(None, f"unknown history format {format!r} (known: {', '.join(FORMATS)})")
    if format == "jsonl" and _is_cluster_history(text):
        return cluster_history_ops(text)
    reader = {"edn": edn_events, "jsonl": jsonl_events, "jepsen-log": jepsen_log_events}[format]
    return pair_events(reader(text))


def guess_format(text: str) -> str:
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith((";", "#")):
            continue
        if stripped.startswith("INFO"):
            return "jepsen-log"
        if stripped.startswith("{") and '"' in stripped.split(":", 1)[0]:
            return "jsonl"
        return "edn"
    return "jsonl"


# ----------------------------------------------------------------- EDN


def edn_events(text: str) -> Iterable[Event]:
    forms = list(_edn.read_all(text))
    if len(forms) == 1 and isinstance(forms[0][1], list):
        line, items = forms[0]
        forms = list(zip(getattr(items, "lines", [line] * len(items)), items))
    for line, form in forms:
        if not isinstance(form, dict):
            raise HistoryInputError(line, f"an operation is a map, not {form!r}")
        fields = {name.name if isinstance(name, Keyword) else name: value for name, value in form.items()}
        event = _event(fields, line)
        if event is not None:
            yield event


def _event(fields: dict[Any, Any], line: int) -> Event | None:
    for name in ("process", "type", "f"):
        if name not in fields:
            raise HistoryInputError(line, f"the operation has no {name}")
    if fields["process"] == NEMESIS or fields["process"] == "nemesis":
        return None
    time = fields.get("time")
    if time is not None and (isinstance(time, bool) or not isinstance(time, (int, float))):
        raise HistoryInputError(line, f"time must be a number, not {time!r}")
    return Event(process=freeze(fields["process"]), type=_name(fields["type"], line, "type"),
                 f=_name(fields["f"], line, "f"), value=fields.get("value"), key=freeze(fields.get("key")),
                 time=time, line=line)


def _name(value: Any, line: int, what: str) -> str:
    if isinstance(value, Keyword):
        return value.name
    if isinstance(value, str) and value:
        return value
    raise HistoryInputError(line, f"{what} must be a name, not {value!r}")


# ----------------------------------------------------------------- JSON Lines


def jsonl_events(text: str) -> Iterable[Event]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            fields = json.loads(line)
        except ValueError as error:
            raise HistoryInputError(number, f"not JSON: {error}") from None
        if not isinstance(fields, dict):
            raise HistoryInputError(number, f"an event is a JSON object, not {type(fields).__name__}")
        event = _event(fields, number)
        if event is not None:
            yield event


def _is_cluster_history(text: str) -> bool:
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        fields = json.loads(first)
    except ValueError:
        return False
    return isinstance(fields, dict) and "operation_id" in fields


def cluster_history_ops(text: str) -> list[Op]:
    """The harness's ``history.jsonl`` as verdict-model operations (see ``verdict_ops``)."""
    from .._history import History, HistoryError
    try:
        history = History.from_jsonl(text)
    except HistoryError as error:
        raise HistoryInputError(None, str(error)) from None
    return verdict_ops(history.operations())


def verdict_ops(operations: Iterable[Any]) -> list[Op]:
    """Harness ``Operation``s (one per request attempt) as ops of the verdict model; failed ones dropped."""
    from .._history import EventType
    ops = []
    for operation in sorted(operations, key=lambda op: op.invoke_index):
        if operation.outcome is EventType.FAIL:
            continue  # A failed operation certainly took no effect.
        done = operation.outcome is EventType.OK
        completion = operation.completion
        ops.append(Op(number=len(ops), process=operation.process, f="execute", input=None,
                      output=(operation.verdict, operation.seq) if done else None,
                      status=Status.OK if done else Status.INFO, call=operation.invoke_index,
                      ret=operation.complete_index if done else None, key=operation.key,
                      call_time=operation.invoke.time_ms, ret_time=completion.time_ms if completion else None,
                      payload=operation))
    return ops


# ----------------------------------------------------------------- Jepsen log lines


def jepsen_log_events(text: str) -> Iterable[Event]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _LOG_LINE.match(line)
        if match is None:
            raise HistoryInputError(number, "not a Jepsen log line (INFO jepsen.util - PROCESS :TYPE :F VALUE)")
        process_text, kind, function, value_text = match.groups()
        if process_text == ":nemesis":
            continue
        value = _log_value(value_text, number)
        if kind == "fail" and function == "cas":
            kind, value = "ok", False  # Porcupine's reading: the comparison failed, observably.
        yield Event(process=_log_process(process_text, number), type=kind, f=function, value=value, line=number)


def _log_value(text: str, line: int) -> Any:
    if not text:
        return None
    forms = list(_edn.read_all(text))
    if len(forms) != 1:
        raise HistoryInputError(line, f"expected one value, found {len(forms)} in {text!r}")
    return forms[0][1]


def _log_process(text: str, line: int) -> int:
    if not text.isdigit():
        raise HistoryInputError(line, f"a client process is a number, not {text!r}")
    return int(text)
