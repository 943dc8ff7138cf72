"""Built-in safety policies, deliberately different so replicas fail differently.

Five honest policies, each looking at an action from its own angle:

- ``CapabilityDenyList`` ("deny-list"): capabilities that are never allowed, and
  dangerous argument fragments per capability (``rm -rf`` in a shell, a key file
  in an upload).
- ``ContextRules`` ("context-rules"): rules over the action's fields and the
  request's risk class: where writes may go, how large an amount may be at each
  risk, which hosts and mail domains are reachable, what critical actions need.
- ``PatternMatcher`` ("pattern-matcher"): an adversarial text matcher over every
  string in the action (prompt injection, secrets, credential paths, destructive
  commands, opaque base64), after normalising case, width, invisible characters
  and whitespace so trivial obfuscation does not slip through.
- ``RatePolicy`` ("rate"): behavioural; per client, over a bounded sliding window
  of the request numbers this policy has seen, it denies bursts of one capability
  or of high-risk requests, and (``max_recent_denials``) high-risk requests from a
  client the cluster keeps denying, judged by the agreed verdict history.
  Deterministic (no clock) and bounded in memory.
- ``IncidentMemory`` ("incident-memory"): history-aware; it remembers the serious
  incidents it denied and, for a bounded number of evaluations, denies what
  repeats one (same capability and target, or the same command once quoting and
  spelling tricks are removed), even when the repeat no longer looks dangerous.

And one that is not honest: ``ApproveEverything`` ("approve-everything") votes
ALLOW on everything.  It models a compromised replica, to show in the demo and
the tests that up to f of them cannot turn an honest majority's DENY into ALLOW.
Never configure it in a real cluster.

Every policy is thread-safe (the runtime may run evaluations in worker threads),
never mutates the action, and treats a field of the wrong type as a reason to
deny rather than an error.  Options are constructor keyword arguments with safe
defaults; ``build_policy(name, **options)`` builds one from the ``POLICIES``
registry, and a bad option is a ``ValueError`` naming it.

Writing a plug-in policy
------------------------
A plug-in is a class whose instances have a ``name`` and an
``evaluate(action, context) -> PolicyDecision`` method (``bft.policy.Policy``).
``action`` is the client's JSON object, decoded; ``context`` is a
``PolicyContext`` (replica id, client id, request number, declared risk,
deadline, and the client's agreed history: its latest verdicts as finalized in
this replica's log).  A replica's entry in the cluster file names it by import path, and
its options are the constructor's keyword arguments::

    [[replicas]]
    id = 0
    policy = "acme.safety:SpendingPolicy"   # or a built-in name, e.g. "incident-memory"
    [replicas.policy_options]
    limit = 500

When the replica starts it imports ``acme.safety`` (it must be importable by
that replica's Python) and calls ``SpendingPolicy(limit=500)``.  An
``ImportError``, a missing class, a constructor that raises ``TypeError`` or
``ValueError`` (name the bad option in it), or an object without ``evaluate``
stops the start with a one-sentence configuration error.  At run time every
evaluation runs in a worker thread under ``[node] policy_deadline_ms`` (default
2000): an overrun, any exception and any return value that is not a
``PolicyDecision`` count as a DENY vote (``bft.policy.evaluate_fail_safe``).  An
overrunning thread is abandoned, not killed, and up to ``[node] policy_threads``
evaluations run at once, so ``evaluate`` should be quick, bounded and thread-safe.
A class attribute ``evaluates_inline = True`` declares ``evaluate`` pure
computation that never waits; the replica then evaluates small actions on its
event loop, without the cost of a thread (``bft.policy.runs_inline``); every
built-in policy declares it.
"""

from __future__ import annotations

from typing import Any

from ..policy import Policy
from ._compromised import ApproveEverything
from ._context_rules import ContextRules
from ._deny_list import CapabilityDenyList
from ._incident_memory import Incident, IncidentMemory, command_fingerprint, normalize_target
from ._inspect import capability_of, normalize_text
from ._pattern_matcher import PatternMatcher
from ._rate import RatePolicy

__all__ = ["POLICIES", "ApproveEverything", "CapabilityDenyList", "ContextRules", "Incident", "IncidentMemory",
           "PatternMatcher", "RatePolicy", "build_policy", "capability_of", "command_fingerprint", "normalize_target",
           "normalize_text"]

POLICIES: dict[str, type] = {
    policy.name: policy
    for policy in (CapabilityDenyList, ContextRules, PatternMatcher, RatePolicy, IncidentMemory, ApproveEverything)
}


def build_policy(name: str, **options: Any) -> Policy:
    """The built-in policy ``name`` configured with ``options``; ValueError names what is wrong."""
    policy_type = POLICIES.get(name)
    if policy_type is None:
        raise ValueError(f"unknown policy {name!r}; the built-in policies are {', '.join(sorted(POLICIES))}")
    try:
        return policy_type(**options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"bad options for policy {name!r}: {error}") from None
