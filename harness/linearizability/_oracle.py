"""A brute-force linearizability oracle for tiny histories, to test the search against.

It tries every subset of the indeterminate operations (those left out never
took effect) and every order of the chosen operations, keeps the orders in
which no operation comes before one that returned before it was invoked, and
runs the model along each.  Partitioned models are run over the whole history
with one state per key, so the oracle also checks that splitting by key is
sound.  Exponential: histories of at most ``OPERATIONS_MAX`` operations.
"""

from __future__ import annotations

import itertools
from typing import Hashable, Sequence

from ._models import Model
from ._ops import Op

OPERATIONS_MAX = 7


def brute_force_linearizable(ops: Sequence[Op], model: Model) -> bool:
    """Does some order of some choice of the indeterminate ops respect real time and the model?"""
    assert len(ops) <= OPERATIONS_MAX, f"the oracle is exponential: at most {OPERATIONS_MAX} operations"
    determinate = [op for op in ops if op.ret is not None]
    indeterminate = [op for op in ops if op.ret is None]
    for size in range(len(indeterminate) + 1):
        for chosen in itertools.combinations(indeterminate, size):
            for order in itertools.permutations(determinate + list(chosen)):
                if _respects_real_time(order) and _model_accepts(order, model):
                    return True
    return False


def _respects_real_time(order: Sequence[Op]) -> bool:
    for position, later in enumerate(order):
        for earlier in order[:position]:
            if later.ret is not None and later.ret < earlier.call:
                return False  # ``later`` returned before ``earlier`` was invoked, yet is ordered after it.
    return True


def _model_accepts(order: Sequence[Op], model: Model) -> bool:
    """Run the model along ``order``, one state per partition key, following every nondeterministic branch."""
    key_of = getattr(model, "partition_key", lambda op: None)
    worlds: list[dict[Hashable, Hashable]] = [{}]
    for op in order:
        key = key_of(op)
        following = []
        for world in worlds:
            for state in model.step(world.get(key, model.initial()), op):
                following.append({**world, key: state})
        if not following:
            return False
        worlds = following
    return True
