"""Per-sequence-number consensus state, kept only between the water marks.

A ``Slot`` holds, for the current view, the accepted pre-prepare and the
prepares and commits received (keyed by sender, so duplicates cannot count
twice).  Prepares and commits may arrive before the pre-prepare; they wait in
the slot and count once a pre-prepare with a matching digest is accepted.
"""

from __future__ import annotations

from ._messages import Commit, PrePrepare, Prepare, PreparedProof


class Slot:
    __slots__ = ("seq", "view", "preprepare", "batch_digest", "request_digests",
                 "prepares", "commits", "prepared", "committed", "late")

    def __init__(self, seq: int, view: int) -> None:
        self.seq = seq
        self.view = view
        self.preprepare: PrePrepare | None = None
        self.batch_digest: bytes | None = None
        self.request_digests: tuple[bytes, ...] = ()
        self.prepares: dict[int, Prepare] = {}
        self.commits: dict[int, Commit] = {}
        self.prepared = False
        self.committed = False
        # The first PREPARE or COMMIT of each sender that arrived after its quorum, held unverified
        # (``NormalCase.adds_nothing``): at most one per (phase, replica) of the configuration.
        self.late: dict[tuple[str, int], Prepare | Commit] = {}

    def matching_prepares(self) -> tuple[Prepare, ...]:
        return tuple(p for _, p in sorted(self.prepares.items()) if p.batch_digest == self.batch_digest)

    def matching_prepare_count(self) -> int:
        return sum(1 for prepare in self.prepares.values() if prepare.batch_digest == self.batch_digest)

    def matching_commits(self) -> tuple[Commit, ...]:
        return tuple(c for _, c in sorted(self.commits.items()) if c.batch_digest == self.batch_digest)

    def matching_commit_count(self) -> int:
        return sum(1 for commit in self.commits.values() if commit.batch_digest == self.batch_digest)

    def prepared_proof(self, quorum: int) -> PreparedProof:
        assert self.prepared and self.preprepare is not None
        prepares = self.matching_prepares()[:quorum]
        assert len(prepares) == quorum
        return PreparedProof(self.preprepare, prepares)
