"""Byzantine-fault-tolerant consensus on safety verdicts (ALLOW / DENY)."""

from .core import (ClusterConfig, Decision, KeyPair, Limits, Risk, VerdictCertificate, VerdictRule)
from .policy import Policy, PolicyContext, PolicyDecision, evaluate_fail_safe

__all__ = [
    "ClusterConfig", "Decision", "KeyPair", "Limits", "Policy", "PolicyContext", "PolicyDecision", "Risk",
    "VerdictCertificate", "VerdictRule", "evaluate_fail_safe",
]
