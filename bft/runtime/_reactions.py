"""The node's side of the driving contract's steps that need no disk (``bft.core.react``).

The node applies each ``Ready`` in two places: here, on the core's task, as it
is produced (rejections are counted and logged, evidence goes back to the core,
policies start), and in the ``Persister``, which runs steps 1 to 4 (persist,
then send, finalize, forget dead votes) for a whole round at once and reads the
log for step 6.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..core import Ready, Rejection, Request

if TYPE_CHECKING:  # The node imports this module; the name is only an annotation here.
    from ._node import ReplicaNode

logger = logging.getLogger("bft.runtime")


class NodeReactions:
    """``ReadyReactions`` for one node: count, log, evaluate, and feed follow-ups back to the node."""

    __slots__ = ("node",)

    def __init__(self, node: ReplicaNode) -> None:
        self.node = node

    def rejected(self, rejection: Rejection) -> None:
        node = self.node
        node.counters[f"rejected:{rejection.reason}"] += 1
        node.metrics.rejected(rejection.reason)
        logger.debug("replica %d rejected input from %s: %s %s", node.replica_id, rejection.sender,
                     rejection.reason, rejection.detail,
                     extra={"replica_id": node.replica_id, "peer": rejection.sender, "reason": rejection.reason})

    def evaluate(self, request: Request) -> None:
        self.node._start_evaluation(request)

    def feed(self, ready: Ready) -> None:
        self.node._apply(ready)
