"""Byzantine-fault-tolerant consensus on safety verdicts (ALLOW / DENY)."""

from .client import BlockingClient, Client, ClientInUseError, ConfigFileError
from .core import (ClusterConfig, Decision, KeyPair, Limits, Risk, VerdictCertificate, VerdictRule)
from .policy import Policy, PolicyContext, PolicyDecision, evaluate_fail_safe
from .runtime import Outcome

__all__ = [
    "BlockingClient", "Client", "ClientInUseError", "ClusterConfig", "ConfigFileError", "Decision", "KeyPair",
    "Limits", "Outcome", "Policy", "PolicyContext", "PolicyDecision", "Risk", "VerdictCertificate", "VerdictRule",
    "evaluate_fail_safe",
]
