"""Proves the quorum arithmetic: q = ceil((n+f+1)/2), any two q-sets share f+1 replicas, q stays reachable, and the helpers agree."""

from __future__ import annotations

import itertools
import math

import pytest

from bft.core import max_faulty, primary_of, quorum_size, reply_quorum


def every_valid_shape(replica_count_max: int):
    """Every (n, f) with 1 <= n <= replica_count_max and 0 <= f <= (n-1)//3."""
    for n in range(1, replica_count_max + 1):
        for f in range(0, (n - 1) // 3 + 1):
            yield n, f


@pytest.mark.parametrize("n", range(1, 101))
def test_quorum_formula_and_bounds_for_every_n_up_to_100(n: int) -> None:
    for f in range(0, max_faulty(n) + 1):
        q = quorum_size(n, f)
        assert q == math.ceil((n + f + 1) / 2)
        assert 2 * q - n >= f + 1, "two quorums must share a correct replica"
        assert q <= n - f, "a quorum must be reachable with f replicas down"
        # q is the smallest such size: one less would let two quorums meet in only f replicas.
        assert 2 * (q - 1) - n < f + 1


@pytest.mark.parametrize("n", range(1, 101))
def test_max_faulty_is_the_largest_tolerable_f(n: int) -> None:
    f = max_faulty(n)
    assert n >= 3 * f + 1
    assert n < 3 * (f + 1) + 1


@pytest.mark.parametrize("n, f, expected", [
    (1, 0, 1), (2, 0, 2), (3, 0, 2), (4, 1, 3), (5, 1, 4), (6, 1, 4), (7, 2, 5), (10, 3, 7), (13, 4, 9),
    (100, 33, 67), (100, 0, 51),
])
def test_quorum_table(n: int, f: int, expected: int) -> None:
    assert quorum_size(n, f) == expected


def test_five_replicas_with_one_fault_need_four_not_three() -> None:
    # 2f+1 = 3 would let two quorums of 3 out of 5 share a single, possibly faulty, replica.
    assert quorum_size(5, 1) == 4
    assert min(len(set(a) & set(b)) for a in itertools.combinations(range(5), 3)
               for b in itertools.combinations(range(5), 3)) == 1


@pytest.mark.parametrize("n, f", list(every_valid_shape(7)))
def test_any_two_quorums_intersect_in_f_plus_one_by_brute_force(n: int, f: int) -> None:
    q = quorum_size(n, f)
    quorums = [frozenset(combination) for combination in itertools.combinations(range(n), q)]
    smallest = min(len(a & b) for a in quorums for b in quorums)
    assert smallest >= f + 1
    # And q - 1 is not enough (unless even q - 1 sets are forced to overlap by f+1, which minimality forbids).
    if q > 1:
        smaller = [frozenset(c) for c in itertools.combinations(range(n), q - 1)]
        assert min(len(a & b) for a in smaller for b in smaller) < f + 1
    # Any f crashed replicas still leave a full quorum of live ones.
    for crashed in itertools.combinations(range(n), f):
        assert n - len(crashed) >= q


def test_quorum_refuses_unsafe_shapes() -> None:
    with pytest.raises(AssertionError):
        quorum_size(3, 1)
    with pytest.raises(AssertionError):
        max_faulty(0)


def test_reply_quorum_is_f_plus_one() -> None:
    assert [reply_quorum(f) for f in range(5)] == [1, 2, 3, 4, 5]


def test_primary_rotates_round_robin() -> None:
    assert [primary_of(view, 4) for view in range(9)] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert primary_of(2**63 - 1, 7) == (2**63 - 1) % 7
