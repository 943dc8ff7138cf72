"""Byzantine-fault-tolerant consensus on safety verdicts (ALLOW / DENY).

The names below load on first use (PEP 562), so ``import bft.core`` (the sans-IO core) pays for no
event loop, sockets, SQLite or metrics: only the client and runtime names bring those in.
"""

import typing as _typing

from ._lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "BlockingClient": ".client", "Client": ".client", "ClientInUseError": ".client", "ConfigFileError": ".client",
    "ClusterConfig": ".core", "Decision": ".core", "KeyPair": ".core", "Limits": ".core", "Risk": ".core",
    "VerdictCertificate": ".core", "VerdictRule": ".core",
    "Policy": ".policy", "PolicyContext": ".policy", "PolicyDecision": ".policy", "evaluate_fail_safe": ".policy",
    "Outcome": ".runtime",
}

__all__ = sorted(_EXPORTS)

if _typing.TYPE_CHECKING:
    from .client import BlockingClient, Client, ClientInUseError, ConfigFileError
    from .core import ClusterConfig, Decision, KeyPair, Limits, Risk, VerdictCertificate, VerdictRule
    from .policy import Policy, PolicyContext, PolicyDecision, evaluate_fail_safe
    from .runtime import Outcome


__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
