"""Five built-in safety policies, deliberately different so replicas fail differently.

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
  or of high-risk requests.  Deterministic (no clock) and bounded in memory.
- ``ApproveEverything`` ("approve-everything"): a deliberately *compromised*
  policy that votes ALLOW on everything.  It exists to show, in the demo and the
  tests, that up to f such replicas cannot turn an honest majority's DENY into
  ALLOW.  Never configure it in a real cluster.

Every policy is thread-safe (the runtime may run evaluations in worker threads),
never mutates the action, and treats a field of the wrong type as a reason to
deny rather than an error.  Options are constructor keyword arguments with safe
defaults; ``build_policy(name, **options)`` builds one from the ``POLICIES`` registry.
"""

from __future__ import annotations

import base64
import binascii
import math
import posixpath
import re
import threading
import unicodedata
from collections import OrderedDict
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from .core import Risk
from .policy import Policy, PolicyContext, PolicyDecision

# How much of an action a policy inspects; anything larger or deeper is denied, not skipped.
MAX_INSPECT_DEPTH = 16
MAX_INSPECT_STRINGS = 4096
CAPABILITY_FIELDS = ("capability", "tool")
RISK_ORDER = {Risk.LOW: 0, Risk.MEDIUM: 1, Risk.HIGH: 2, Risk.CRITICAL: 3}


class _TooComplex(Exception):
    """The action nests deeper or holds more strings than a policy is willing to inspect."""


def _strings(value: Any, depth: int = 0, found: list[str] | None = None) -> list[str]:
    """Every string in a JSON value, keys included, up to the inspection bounds."""
    found = [] if found is None else found
    if depth > MAX_INSPECT_DEPTH:
        raise _TooComplex(f"nested deeper than {MAX_INSPECT_DEPTH} levels")
    if isinstance(value, str):
        found.append(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _strings(key, depth + 1, found)
            _strings(item, depth + 1, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _strings(item, depth + 1, found)
    if len(found) > MAX_INSPECT_STRINGS:
        raise _TooComplex(f"more than {MAX_INSPECT_STRINGS} strings")
    return found


def normalize_text(text: str) -> str:
    """Fold the tricks that make two texts look different to a matcher but alike to a reader:
    compatibility forms (full-width letters), invisible format characters (zero-width
    spaces), case, and runs of whitespace."""
    folded = unicodedata.normalize("NFKC", text)
    visible = "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")
    return " ".join(visible.casefold().split())


def capability_of(action: Mapping[str, Any]) -> str | None:
    """The normalised capability an action asks for, or None if it names none (or not as a string)."""
    for field_name in CAPABILITY_FIELDS:
        value = action.get(field_name)
        if isinstance(value, str) and value.strip():
            return normalize_text(value)
    return None


def _compile(patterns: Iterable[str]) -> tuple[re.Pattern, ...]:
    return tuple(re.compile(pattern) for pattern in patterns)


# ---------------------------------------------------------------------------- deny list

SHELL_TOOLS = ("shell", "bash", "sh", "exec", "terminal", "powershell", "subprocess")
NETWORK_TOOLS = ("http_get", "http_post", "http_request", "fetch", "upload", "webhook", "send_email",
                 "browser.fill_form", "browser.open")
DEFAULT_DENIED_CAPABILITIES = (
    "credentials.read", "secrets.read", "keychain.read", "password_manager.export", "ssh.keys",
    "disable_logging", "disable_monitoring", "policy.modify", "self_replicate", "raw_socket",
    "dns_tunnel", "payments.crypto_withdraw", "iam.grant_admin",
)
_DESTRUCTIVE_SHELL = (r"\brm\s+-(rf|fr|r\s+-f|f\s+-r)\b", r"\bmkfs(\.\w+)?\b", r"\bdd\s+if=", r":\(\)\s*\{",
                      r"\bchmod\s+(-r\s+)?777\s+/", r">\s*/dev/sd", r"\b(shutdown|reboot|halt)\b",
                      r"\b(curl|wget)\b[^|\n]{0,200}\|\s*(sudo\s+)?(sh|bash)\b", r"\|\s*base64\s+-d\s*\|\s*(sh|bash)\b")
_SECRET_MATERIAL = (r"\.ssh/", r"\bid_(rsa|ed25519|ecdsa)\b", r"/etc/(shadow|sudoers)", r"\.aws/credentials",
                    r"\baws_secret_access_key\b", r"\bakia[0-9a-z]{16}\b", r"-----begin [a-z ]*private key-----")
DEFAULT_DANGEROUS_ARGUMENTS: dict[str, tuple[str, ...]] = {
    **{tool: _DESTRUCTIVE_SHELL + _SECRET_MATERIAL for tool in SHELL_TOOLS},
    **{tool: _SECRET_MATERIAL for tool in NETWORK_TOOLS},
    # Applies to every capability: piping a download into a shell is never a safe argument.
    "*": (r"\b(curl|wget)\b[^|\n]{0,200}\|\s*(sudo\s+)?(sh|bash)\b",),
}


class CapabilityDenyList:
    """Deny capabilities on a list, and arguments matching a capability's dangerous fragments.

    An action that names no capability is denied: a deny list cannot vouch for
    what it cannot classify.
    """

    name = "deny-list"

    def __init__(self, *, denied_capabilities: Iterable[str] = DEFAULT_DENIED_CAPABILITIES,
                 dangerous_arguments: Mapping[str, Iterable[str]] | None = None) -> None:
        self.denied_capabilities = frozenset(normalize_text(c) for c in denied_capabilities)
        arguments = DEFAULT_DANGEROUS_ARGUMENTS if dangerous_arguments is None else dangerous_arguments
        self.dangerous_arguments = {normalize_text(c): _compile(p) for c, p in arguments.items()}

    def evaluate(self, action: Mapping[str, Any], context: PolicyContext) -> PolicyDecision:
        capability = capability_of(action)
        if capability is None:
            return PolicyDecision.deny("deny-list: the action names no capability")
        if capability in self.denied_capabilities:
            return PolicyDecision.deny(f"deny-list: capability {capability!r} is denied")
        try:
            text = normalize_text(" ".join(_strings(action)))
        except _TooComplex as error:
            return PolicyDecision.deny(f"deny-list: action too complex to inspect ({error})")
        patterns = self.dangerous_arguments.get(capability, ()) + self.dangerous_arguments.get("*", ())
        for pattern in patterns:
            match = pattern.search(text)
            if match:
                return PolicyDecision.deny(f"deny-list: {capability!r} with dangerous argument {match.group(0)!r}")
        return PolicyDecision.allow(f"deny-list: {capability!r} is not denied")


# ---------------------------------------------------------------------------- context rules

DEFAULT_AMOUNT_LIMITS = {Risk.LOW: 100.0, Risk.MEDIUM: 1_000.0, Risk.HIGH: 10_000.0, Risk.CRITICAL: 50_000.0}
DEFAULT_WRITE_TOOLS = ("write_file", "delete_file", "move_file", "fs.write", "fs.delete", *SHELL_TOOLS)
DEFAULT_SENSITIVE_PATHS = ("/etc/shadow", "/etc/sudoers", "/etc/passwd", "/root/", "/.ssh/", "/.aws/",
                           "/.gnupg/", "/proc/", "/sys/", "/boot/")


class ContextRules:
    """Rules that depend on the action's fields and on the risk class the client declared."""

    name = "context-rules"

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


# ---------------------------------------------------------------------------- pattern matcher

INJECTION_PATTERNS = (
    r"\b(ignore|forget|override)\s+(all\s+|any\s+)?(the\s+|your\s+)?(previous|prior|above|earlier|system)\s+"
    r"(instructions|rules|directions|prompts?)",
    r"\bdisregard\s+(all\s+|the\s+|your\s+)?(previous|prior|above|system|safety)\b",
    r"\byou\s+are\s+now\s+(dan|in\s+developer\s+mode|unrestricted|jailbroken)",
    r"\b(reveal|print|show|leak|repeat)\s+(me\s+)?(your|the)\s+(system\s+prompt|hidden\s+instructions)",
    r"\bjailbreak", r"\bdo\s+anything\s+now\b",
)
# Injection phrases with every non-letter removed: catches "i.g.n.o.r.e previous-instructions".
SQUEEZED_INJECTION_PHRASES = ("ignorepreviousinstructions", "ignoreallpreviousinstructions",
                              "disregardpreviousinstructions", "ignoreallinstructions")
# Secrets are matched before case folding, since their alphabets are case sensitive.
SECRET_PATTERNS = (
    ("AWS access key", r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), ("private key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    ("GitHub token", r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"), ("Slack token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    ("API secret key", r"\bsk-[A-Za-z0-9]{32,}"),
)
CREDENTIAL_PATH_PATTERNS = (r"\.ssh/(id_|authorized_keys)", r"\.aws/credentials", r"/etc/(shadow|sudoers)",
                            r"\.gnupg/", r"\bid_(rsa|ed25519|ecdsa)\b")
DESTRUCTIVE_PATTERNS = (r"\brm\s+-(rf|fr)\b", r"\bdrop\s+(table|database)\b", r"\bmkfs\b", r":\(\)\s*\{",
                        r"\bformat\s+c:", r"--no-preserve-root")


def _looks_opaque(candidate: str) -> bool:
    """A long base64-alphabet run is opaque data unless it is plainly something else: a hex
    digest (one case, no mixed alphabet) or a path (many slashes)."""
    has_mixed_alphabet = (any(c.isupper() for c in candidate) and any(c.islower() for c in candidate)
                          and any(c.isdigit() for c in candidate))
    return has_mixed_alphabet and candidate.count("/") * 16 <= len(candidate)


class PatternMatcher:
    """Deny any action whose text carries injection, secrets, credential paths or hidden payloads."""

    name = "pattern-matcher"

    def __init__(self, *, extra_patterns: Iterable[str] = (), base64_min_chars: int = 64,
                 inspect_base64: bool = True) -> None:
        if base64_min_chars < 16:
            raise ValueError("base64_min_chars must be at least 16, or ordinary words would match")
        self.folded_patterns = (
            [("prompt injection", p) for p in _compile(INJECTION_PATTERNS)]
            + [("credential path", p) for p in _compile(CREDENTIAL_PATH_PATTERNS)]
            + [("destructive command", p) for p in _compile(DESTRUCTIVE_PATTERNS)]
            + [("configured pattern", p) for p in _compile(normalize_text(e) for e in extra_patterns)])
        self.secret_patterns = tuple((label, re.compile(pattern)) for label, pattern in SECRET_PATTERNS)
        self.base64_blob = re.compile(rf"[A-Za-z0-9+/]{{{base64_min_chars},}}={{0,2}}")
        self.inspect_base64 = inspect_base64

    def evaluate(self, action: Mapping[str, Any], context: PolicyContext) -> PolicyDecision:
        try:
            texts = _strings(action)
        except _TooComplex as error:
            return PolicyDecision.deny(f"pattern-matcher: action too complex to inspect ({error})")
        for text in texts:
            finding = self._finding(text, decoded=False)
            if finding:
                return PolicyDecision.deny(f"pattern-matcher: {finding}")
        return PolicyDecision.allow("pattern-matcher: no known pattern")

    def _finding(self, text: str, decoded: bool) -> str | None:
        compatible = unicodedata.normalize("NFKC", text)
        for label, pattern in self.secret_patterns:
            if pattern.search(compatible):
                return f"secret material ({label})"
        folded = normalize_text(text)
        for label, pattern in self.folded_patterns:
            match = pattern.search(folded)
            if match:
                return f"{label}: {match.group(0)!r}"
        squeezed = "".join(ch for ch in folded if ch.isalpha())
        for phrase in SQUEEZED_INJECTION_PHRASES:
            if phrase in squeezed:
                return f"prompt injection (obfuscated): {phrase!r}"
        return None if decoded else self._base64_finding(compatible)

    def _base64_finding(self, text: str) -> str | None:
        blobs = (m.group(0) for m in self.base64_blob.finditer(text.replace("\n", "")))
        blob = next((candidate for candidate in blobs if _looks_opaque(candidate)), None)
        if blob is None:
            return None
        if self.inspect_base64:
            try:
                inner = base64.b64decode(blob + "=" * (-len(blob) % 4)).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                inner = ""
            finding = self._finding(inner, decoded=True) if inner else None
            if finding:
                return f"base64-encoded {finding}"
        return f"opaque base64 blob of {len(blob)} characters"


# ---------------------------------------------------------------------------- rate / behaviour


class RatePolicy:
    """Deny bursts per client, measured over the last ``window_requests`` request numbers.

    Request numbers are the client's own logical clock, so the policy needs no
    wall clock and gives the same answers for the same sequence of requests.
    Memory is bounded: at most ``window_requests`` entries per client and
    ``max_clients`` clients (least recently seen forgotten first).  A retried
    request number replaces its earlier entry instead of counting twice.
    """

    name = "rate"

    def __init__(self, *, window_requests: int = 20, max_per_capability: int = 8, max_high_risk: int = 6,
                 max_clients: int = 1024) -> None:
        if min(window_requests, max_per_capability, max_high_risk, max_clients) < 1:
            raise ValueError("window_requests, max_per_capability, max_high_risk and max_clients must be positive")
        self.window_requests = window_requests
        self.max_per_capability = max_per_capability
        self.max_high_risk = max_high_risk
        self.max_clients = max_clients
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, dict[int, tuple[Risk, str]]] = OrderedDict()

    def evaluate(self, action: Mapping[str, Any], context: PolicyContext) -> PolicyDecision:
        capability = capability_of(action) or "<none>"
        with self._lock:
            window = self._record(context.client_id, context.request_number, context.risk, capability)
        same = sum(1 for _, cap in window if cap == capability)
        high = sum(1 for risk, _ in window if RISK_ORDER[risk] >= RISK_ORDER[Risk.HIGH])
        span = f"the last {self.window_requests} requests"
        if same > self.max_per_capability:
            return PolicyDecision.deny(f"rate: burst of {same} {capability!r} requests in {span}")
        if RISK_ORDER[context.risk] >= RISK_ORDER[Risk.HIGH] and high > self.max_high_risk:
            return PolicyDecision.deny(f"rate: burst of {high} high-risk requests in {span}")
        return PolicyDecision.allow(f"rate: {same} {capability!r} and {high} high-risk in {span}")

    def _record(self, client_id: str, number: int, risk: Risk, capability: str) -> list[tuple[Risk, str]]:
        history = self._clients.get(client_id)
        if history is None:
            history = self._clients[client_id] = {}
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        self._clients.move_to_end(client_id)
        newest = max(number, max(history, default=number))
        if number > newest - self.window_requests:
            history[number] = (risk, capability)
        for old in [n for n in history if n <= newest - self.window_requests]:
            del history[old]
        assert len(history) <= self.window_requests and len(self._clients) <= self.max_clients
        return list(history.values()) if number in history else [*history.values(), (risk, capability)]


# ---------------------------------------------------------------------------- the compromised node


class ApproveEverything:
    """A compromised replica's policy: ALLOW, always, whatever the action.

    It models the node that "learned to approve everything".  The cluster's
    verdict rules (at least 2f+1 ALLOW votes, vetoes at higher risk) are what
    keep it harmless; the demo and the tests use it to show exactly that.
    """

    name = "approve-everything"

    def evaluate(self, action: Mapping[str, Any], context: PolicyContext) -> PolicyDecision:
        return PolicyDecision.allow("approve-everything (compromised node)")


POLICIES: dict[str, type] = {
    policy.name: policy for policy in (CapabilityDenyList, ContextRules, PatternMatcher, RatePolicy, ApproveEverything)
}


def build_policy(name: str, **options: Any) -> Policy:
    """The built-in policy ``name`` configured with ``options``; ValueError names what is wrong."""
    policy_type = POLICIES.get(name)
    if policy_type is None:
        raise ValueError(f"unknown policy {name!r}; the built-in policies are {', '.join(sorted(POLICIES))}")
    try:
        return policy_type(**options)
    except TypeError as error:
        raise ValueError(f"bad options for policy {name!r}: {error}") from None
