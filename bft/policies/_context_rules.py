"""``ContextRules`` ("context-rules"): rules over the action's fields and the request's risk class."""

from __future__ import annotations

import math
import posixpath
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from ..core import Risk
from ..policy import PolicyContext, PolicyDecision
from ._deny_list import NETWORK_TOOLS, SHELL_TOOLS
from ._inspect import capability_of, normalize_text


DEFAULT_AMOUNT_LIMITS = {Risk.LOW: 100.0, Risk.MEDIUM: 1_000.0, Risk.HIGH: 10_000.0, Risk.CRITICAL: 50_000.0}
DEFAULT_WRITE_TOOLS = ("write_file", "delete_file", "move_file", "fs.write", "fs.delete", *SHELL_TOOLS)
DEFAULT_SENSITIVE_PATHS = ("/etc/shadow", "/etc/sudoers", "/etc/passwd", "/root/", "/.ssh/", "/.aws/",
                           "/.gnupg/", "/proc/", "/sys/", "/boot/")


class ContextRules:
    """Rules that depend on the action's fields and on the risk class the client declared."""

    name = "context-rules"
    evaluates_inline = True  # Pure computation, bounded by the action's size: see bft.policy.runs_inline.

    def __init__(self, *, allowed_write_prefixes: Iterable[str] = ("/workspace/", "/tmp/"),
                 write_tools: Iterable[str] = DEFAULT_WRITE_TOOLS,
                 path_fields: Iterable[str] = ("path", "cwd", "destination", "target"),
                 sensitive_paths: Iterable[str] = DEFAULT_SENSITIVE_PATHS,
                 amount_limits: Mapping[Risk | str, float] | None = None,
                 network_tools: Iterable[str] = NETWORK_TOOLS,
                 allowed_hosts: Iterable[str] = ("docs.example.com", "api.internal.example"),
                 allowed_email_domains: Iterable[str] = ("corp.example",),
                 max_recipients: int = 20, critical_requires: str = "approval_ticket") -> None:
        limits = {Risk(key) if isinstance(key, str) else key: float(value)
                  for key, value in (amount_limits or DEFAULT_AMOUNT_LIMITS).items()}
        if set(limits) != set(Risk) or any(not math.isfinite(v) or v < 0 for v in limits.values()):
            raise ValueError("amount_limits needs a finite, non-negative limit for every risk class")
        if max_recipients < 1:
            raise ValueError("max_recipients must be at least 1")
        self.allowed_write_prefixes = tuple(allowed_write_prefixes)
        self.write_tools = frozenset(normalize_text(t) for t in write_tools)
        self.path_fields = tuple(path_fields)
        self.sensitive_paths = tuple(sensitive_paths)
        self.amount_limits = limits
        self.network_tools = frozenset(normalize_text(t) for t in network_tools)
        self.allowed_hosts = frozenset(host.lower() for host in allowed_hosts)
        self.allowed_email_domains = frozenset(domain.lower() for domain in allowed_email_domains)
        self.max_recipients = max_recipients
        self.critical_requires = critical_requires

    def evaluate(self, action: Mapping[str, Any], context: PolicyContext) -> PolicyDecision:
        capability = capability_of(action) or ""
        checks = (self._critical_problem(action, context), self._path_problem(action, capability),
                  self._amount_problem(action, context), self._network_problem(action, capability),
                  self._recipient_problem(action))
        problem = next((p for p in checks if p), None)
        if problem:
            return PolicyDecision.deny(f"context-rules: {problem}")
        return PolicyDecision.allow(f"context-rules: within the limits for {context.risk.value} risk")

    def _critical_problem(self, action: Mapping[str, Any], context: PolicyContext) -> str | None:
        ticket = action.get(self.critical_requires)
        if context.risk is Risk.CRITICAL and not (isinstance(ticket, str) and ticket.strip()):
            return f"a critical action needs a {self.critical_requires!r}"
        return None

    def _path_problem(self, action: Mapping[str, Any], capability: str) -> str | None:
        paths = [action[name] for name in self.path_fields if name in action]
        if capability in self.write_tools and not paths:
            return f"{capability!r} must name the path it works in"
        for raw in paths:
            if not isinstance(raw, str) or "\x00" in raw or not raw.startswith(("/", "~")):
                return f"path {raw!r} must be an absolute path"
            path = posixpath.normpath("/home/user" + raw[1:] if raw.startswith("~") else raw)
            if any(fragment in path + "/" for fragment in self.sensitive_paths):
                return f"path {path!r} is sensitive"
            if capability in self.write_tools and not (path + "/").startswith(self.allowed_write_prefixes):
                return f"{capability!r} outside the allowed prefixes: {path!r}"
        return None

    def _amount_problem(self, action: Mapping[str, Any], context: PolicyContext) -> str | None:
        if "amount" not in action:
            return None
        amount = action["amount"]
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount) or amount < 0:
            return f"amount {amount!r} is not a non-negative number"
        limit = self.amount_limits[context.risk]
        if amount > limit:
            return f"amount {amount} exceeds the {context.risk.value}-risk limit of {limit:g}"
        return None

    def _network_problem(self, action: Mapping[str, Any], capability: str) -> str | None:
        if capability not in self.network_tools or capability == "send_email":
            return None
        url = action.get("url")
        if not isinstance(url, str):
            return f"{capability!r} needs a url"
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
        except ValueError:
            return f"url {url!r} does not parse"
        if parts.scheme not in ("http", "https") or host not in self.allowed_hosts:
            return f"host {host or url!r} is not an allowed destination"
        return None

    def _recipient_problem(self, action: Mapping[str, Any]) -> str | None:
        if "to" not in action:
            return None
        recipients = action["to"]
        recipients = [recipients] if isinstance(recipients, str) else recipients
        if not isinstance(recipients, list) or not recipients or len(recipients) > self.max_recipients:
            return f"between 1 and {self.max_recipients} recipients are allowed"
        for recipient in recipients:
            domain = recipient.rpartition("@")[2].lower() if isinstance(recipient, str) else ""
            if domain not in self.allowed_email_domains:
                return f"recipient {recipient!r} is outside the allowed domains"
        return None
