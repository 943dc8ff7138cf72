"""Quorum arithmetic, pure and separate so it can be checked exhaustively.

Two quorums of size q out of n must intersect in at least f+1 replicas, so that
they share at least one correct replica: 2q - n >= f + 1, hence
q = ceil((n + f + 1) / 2).  With n = 3f+1 this is the familiar 2f+1, but for
n = 5, f = 1 it is 4: 2f+1 = 3 would let two quorums of 3 share a single
(possibly faulty) replica.
"""

from __future__ import annotations


def max_faulty(replica_count: int) -> int:
    """The largest f with replica_count >= 3f + 1."""
    assert replica_count >= 1, replica_count
    return (replica_count - 1) // 3


def quorum_size(replica_count: int, faulty_max: int) -> int:
    """Smallest q such that any two q-sets of n replicas share f+1 members."""
    assert replica_count >= 3 * faulty_max + 1, (replica_count, faulty_max)
    quorum = (replica_count + faulty_max + 2) // 2
    assert 2 * quorum - replica_count >= faulty_max + 1
    assert quorum <= replica_count - faulty_max, "a quorum must be reachable with f replicas down"
    return quorum


def reply_quorum(faulty_max: int) -> int:
    """Matching replies a client needs: f+1 guarantees one comes from a correct replica."""
    assert faulty_max >= 0
    return faulty_max + 1


def primary_of(view: int, replica_count: int) -> int:
    """Round-robin primary of ``view``."""
    assert view >= 0 and replica_count >= 1
    return view % replica_count
