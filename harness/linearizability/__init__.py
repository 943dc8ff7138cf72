"""Linearizability checking for any history: ``check(history, model)``.

A history is a list of invocations and completions (Jepsen's ``:invoke``,
``:ok``, ``:fail``, ``:info``); a model says what a sequential object does.
``check`` answers ok, illegal (with the failing sub-history, the longest
linearizable prefix and the operation that cannot be placed) or unknown
(a limit was reached).  ``python -m harness check FILE --model M`` is the
command-line face; the README's checker section shows a worked example.
"""

from ._checker import Failure, Outcome, Result, check
from ._models import (MODELS, CASRegister, CompiledModel, KeyValue, Model, MultiRegister, Mutex, Register, Set,
                      VerdictRegister, EXECUTED_UNOBSERVED)
from ._oracle import brute_force_linearizable
from ._ops import Event, HistoryInputError, Keyword, Op, Status, pair_events
from ._readers import FORMATS, read_file, read_text, verdict_ops

__all__ = [
    "CASRegister", "CompiledModel", "EXECUTED_UNOBSERVED", "Event", "FORMATS", "Failure", "HistoryInputError",
    "KeyValue", "Keyword", "MODELS", "Model", "MultiRegister", "Mutex", "Op", "Outcome", "Register", "Result", "Set", "Status",
    "VerdictRegister", "brute_force_linearizable", "check", "pair_events", "read_file", "read_text", "verdict_ops",
]
