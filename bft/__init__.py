"""Byzantine-fault-tolerant consensus on safety verdicts (ALLOW / DENY).

The names below load on first use (PEP 562), so ``import bft.core`` (the sans-IO core) pays for no
event loop, sockets, SQLite or metrics: only the client and runtime names bring those in.
"""

import importlib as _importlib
import typing as _typing

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


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bft' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value  # Loaded once; later lookups do not come here.
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
