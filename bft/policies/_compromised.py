"""``ApproveEverything`` ("approve-everything"): the compromised node's policy; never configure it."""

from __future__ import annotations

from typing import Any, Mapping

from ..policy import PolicyContext, PolicyDecision



class ApproveEverything:
    """A compromised replica's policy: ALLOW, always, whatever the action.

    It models the node that "learned to approve everything".  The cluster's
    verdict rules (at least 2f+1 ALLOW votes, vetoes at higher risk) are what
    keep it harmless; the demo and the tests use it to show exactly that.
    """

    name = "approve-everything"
    evaluates_inline = True  # Pure computation, bounded by the action's size: see bft.policy.runs_inline.

    def evaluate(self, action: Mapping[str, Any], context: PolicyContext) -> PolicyDecision:
        return PolicyDecision.allow("approve-everything (compromised node)")
