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

import base64
import binascii
import hashlib
import json
import math
import posixpath
import re
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from .core import Decision, Risk
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


def _compile(patterns: Iterable[str], fold: bool = False) -> tuple[re.Pattern, ...]:
    """Compiled ``patterns`` (folded like the text they will search if ``fold``); a bad one is a ValueError."""
    if isinstance(patterns, str):
        raise ValueError(f"expected a list of patterns, not the single string {patterns!r}")
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(normalize_text(pattern) if fold else pattern))
        except (re.error, TypeError) as error:
            raise ValueError(f"pattern {pattern!r} is not a regular expression ({error})") from None
    return tuple(compiled)


# ---------------------------------------------------------------------------- deny list

SHELL_TOOLS = ("shell", "bash", "sh", "exec", "terminal", "powershell", "subprocess")
NETWORK_TOOLS = ("http_get", "http_post", "http_request", "fetch", "upload", "webhook", "send_email",
                 "browser.fill_form", "browser.open")
DEFAULT_DENIED_CAPABILITIES = (
    "credentials.read", "secrets.read", "keychain.read", "password_manager.export", "ssh.keys",
    "disable_logging", "disable_monitoring", "policy.modify", "self_replicate", "raw_socket",
    "dns_tunnel", "payments.crypto_withdraw", "iam.grant_admin",
)
_DOWNLOAD_PIPED_TO_SHELL = r"\b(curl|wget)\b[^|\n]{0,200}\|\s*(sudo\s+)?(sh|bash)\b"
_DESTRUCTIVE_SHELL = (r"\brm\s+-(rf|fr|r\s+-f|f\s+-r)\b", r"\bmkfs(\.\w+)?\b", r"\bdd\s+if=", r":\(\)\s*\{",
                      r"\bchmod\s+(-r\s+)?777\s+/", r">\s*/dev/sd", r"\b(shutdown|reboot|halt)\b",
                      _DOWNLOAD_PIPED_TO_SHELL, r"\|\s*base64\s+-d\s*\|\s*(sh|bash)\b")
# Secret values, matched in folded text: they are never benign, whatever the capability.
_SECRET_VALUES = (r"\baws_secret_access_key\b", r"\bakia[0-9a-z]{16}\b", r"-----begin [a-z ]*private key-----")
_SECRET_MATERIAL = (r"\.ssh/", r"\bid_(rsa|ed25519|ecdsa)\b", r"/etc/(shadow|sudoers)", r"\.aws/credentials",
                    *_SECRET_VALUES)
DEFAULT_DANGEROUS_ARGUMENTS: dict[str, tuple[str, ...]] = {
    **{tool: _DESTRUCTIVE_SHELL + _SECRET_MATERIAL for tool in SHELL_TOOLS},
    **{tool: _SECRET_MATERIAL for tool in NETWORK_TOOLS},
    # Applies to every capability: piping a download into a shell is never a safe argument.
    "*": (_DOWNLOAD_PIPED_TO_SHELL,),
}


class CapabilityDenyList:
    """Deny capabilities on a list, and arguments matching a capability's dangerous fragments.

    An action that names no capability is denied: a deny list cannot vouch for
    what it cannot classify.
    """

    name = "deny-list"
    evaluates_inline = True  # Pure computation, bounded by the action's size: see bft.policy.runs_inline.

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
    evaluates_inline = True  # Pure computation, bounded by the action's size: see bft.policy.runs_inline.

    def __init__(self, *, extra_patterns: Iterable[str] = (), base64_min_chars: int = 64,
                 inspect_base64: bool = True) -> None:
        if base64_min_chars < 16:
            raise ValueError("base64_min_chars must be at least 16, or ordinary words would match")
        self.folded_patterns = (
            [("prompt injection", p) for p in _compile(INJECTION_PATTERNS)]
            + [("credential path", p) for p in _compile(CREDENTIAL_PATH_PATTERNS)]
            + [("destructive command", p) for p in _compile(DESTRUCTIVE_PATTERNS)]
            + [("configured pattern", p) for p in _compile(extra_patterns, fold=True)])
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

    With ``max_recent_denials`` set it also judges the client by its agreed
    history (``PolicyContext.agreed_history``, the verdicts the cluster
    finalized): a client with more than that many DENY verdicts among its last
    ``window_requests`` request numbers is probing, and its high-risk requests
    are denied until its record clears.
    """

    name = "rate"
    evaluates_inline = True  # Pure computation, bounded by the action's size: see bft.policy.runs_inline.

    def __init__(self, *, window_requests: int = 20, max_per_capability: int = 8, max_high_risk: int = 6,
                 max_clients: int = 1024, max_recent_denials: int | None = None) -> None:
        if min(window_requests, max_per_capability, max_high_risk, max_clients) < 1:
            raise ValueError("window_requests, max_per_capability, max_high_risk and max_clients must be positive")
        if max_recent_denials is not None and (isinstance(max_recent_denials, bool)
                                               or not isinstance(max_recent_denials, int) or max_recent_denials < 0):
            raise ValueError("max_recent_denials must be a non-negative integer")
        self.window_requests = window_requests
        self.max_per_capability = max_per_capability
        self.max_high_risk = max_high_risk
        self.max_clients = max_clients
        self.max_recent_denials = max_recent_denials
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, dict[int, tuple[Risk, str]]] = OrderedDict()

    def evaluate(self, action: Mapping[str, Any], context: PolicyContext) -> PolicyDecision:
        capability = capability_of(action) or "<none>"
        with self._lock:
            window = self._record(context.client_id, context.request_number, context.risk, capability)
        same = sum(1 for _, cap in window if cap == capability)
        high = sum(1 for risk, _ in window if RISK_ORDER[risk] >= RISK_ORDER[Risk.HIGH])
        span = f"the last {self.window_requests} requests"
        is_high_risk = RISK_ORDER[context.risk] >= RISK_ORDER[Risk.HIGH]
        if same > self.max_per_capability:
            return PolicyDecision.deny(f"rate: burst of {same} {capability!r} requests in {span}")
        if is_high_risk and high > self.max_high_risk:
            return PolicyDecision.deny(f"rate: burst of {high} high-risk requests in {span}")
        denied = self._recent_denials(context)
        if is_high_risk and self.max_recent_denials is not None and denied > self.max_recent_denials:
            return PolicyDecision.deny(f"rate: the cluster denied {denied} of this client's requests in {span}")
        return PolicyDecision.allow(f"rate: {same} {capability!r} and {high} high-risk in {span}")

    def _recent_denials(self, context: PolicyContext) -> int:
        oldest = context.request_number - self.window_requests
        return sum(1 for verdict in context.agreed_history
                   if oldest < verdict.request_number < context.request_number and verdict.decision is Decision.DENY)

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


# ---------------------------------------------------------------------------- incident memory

# Serious findings: text that no benign request carries, whatever the capability.  The patterns are the
# ones the other policies use, so the policies agree on what is dangerous and differ in what they do with it.
DEFAULT_INCIDENT_PATTERNS: dict[str, tuple[str, ...]] = {
    "destructive command": (*DESTRUCTIVE_PATTERNS, _DOWNLOAD_PIPED_TO_SHELL),
    "credential access": (*CREDENTIAL_PATH_PATTERNS, *_SECRET_VALUES),
    "prompt injection": INJECTION_PATTERNS,
}
DEFAULT_TARGET_FIELDS = ("path", "file", "target", "destination", "url", "to")
DEFAULT_COMMAND_FIELDS = ("command", "cmd", "code", "script", "query")
# Characters a shell drops or that split a word without changing it: r''m, \rm and "rm" all run rm.
_QUOTING = str.maketrans("", "", "'\"`\\")
# One incident remembers at most this many signatures, so one action naming a thousand targets
# cannot flush the whole memory.
SIGNATURES_PER_INCIDENT_MAX = 8
EVIDENCE_CHARS_MAX = 60
_SIGNATURE_KINDS = {"target": "capability and target", "command": "command", "action": "action"}

# (client id, or "" when incidents are shared; kind; capability; digest of the normalised value)
Signature = tuple[str, str, str, bytes]


@dataclass(frozen=True, slots=True)
class Incident:
    """A remembered incident: its number, its finding, and the evaluation that last matched it."""

    number: int
    finding: str
    last_seen: int


def command_fingerprint(text: str) -> str:
    """A command with what does not change its meaning removed: case, width, invisible
    characters, quoting, backslashes and spacing."""
    return " ".join(normalize_text(text).translate(_QUOTING).split())


def normalize_target(text: str) -> str:
    """One spelling per target: a URL by its host; a path without ``.``, ``..`` and doubled
    slashes; anything else folded like all text.  Folding case over-matches on a
    case-sensitive file system, which errs towards DENY."""
    folded = normalize_text(text)
    if "://" in folded:
        try:
            host = urlsplit(folded).hostname
        except ValueError:
            host = None
        return f"host {host}" if host else folded
    if folded.startswith("/"):
        return "/" + posixpath.normpath(folded).lstrip("/")
    if folded.startswith("~"):
        return posixpath.normpath(folded)
    return folded


def _text_values(value: Any) -> list[str]:
    """A field's text: the string, or the strings of a list; anything else has none."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


class IncidentMemory:
    """Deny serious incidents, remember them, and deny what repeats them for a while.

    An incident is an action with a serious finding: a forbidden capability or text
    matching ``incident_patterns`` (destructive commands, credential access, prompt
    injection).  It is denied and its signatures are remembered: the capability with
    each target it names (``target_fields``, normalised by ``normalize_target``) and
    with each command it runs (``command_fields``, by ``command_fingerprint``), or,
    naming neither, the whole action.  A later action sharing a signature is denied
    as a repeat even if it no longer shows the finding, so the rewording that slips
    past a text matcher (``\\rm -"rf"``, ``/etc/./shadow``) does not slip past this.

    Time is this policy's own count of evaluations: no clock, and the same answers
    for the same sequence of inputs.  A signature is forgotten once
    ``remember_evaluations`` evaluations have passed since it last matched; at most
    ``max_remembered`` signatures are kept, the least recently matched forgotten
    first.  Incidents are shared by all clients unless ``per_client``.  Only what this
    replica evaluated is remembered: the agreed history holds verdicts, not actions.
    """

    name = "incident-memory"
    evaluates_inline = True  # Pure computation, bounded by the action's size: see bft.policy.runs_inline.

    def __init__(self, *, incident_patterns: Mapping[str, Iterable[str]] | None = None,
                 incident_capabilities: Iterable[str] = DEFAULT_DENIED_CAPABILITIES,
                 target_fields: Iterable[str] = DEFAULT_TARGET_FIELDS,
                 command_fields: Iterable[str] = DEFAULT_COMMAND_FIELDS,
                 remember_evaluations: int = 10_000, max_remembered: int = 1024, per_client: bool = False) -> None:
        counts = (remember_evaluations, max_remembered)
        if any(isinstance(count, bool) or not isinstance(count, int) or count < 1 for count in counts):
            raise ValueError("remember_evaluations and max_remembered must be positive integers")
        if not isinstance(per_client, bool):
            raise ValueError(f"per_client must be true or false, not {per_client!r}")
        patterns = DEFAULT_INCIDENT_PATTERNS if incident_patterns is None else incident_patterns
        self.incident_patterns = tuple((str(label), _compile(group, fold=True)) for label, group in patterns.items())
        self.incident_capabilities = frozenset(normalize_text(c) for c in _names(incident_capabilities))
        self.target_fields = _names(target_fields)
        self.command_fields = _names(command_fields)
        self.remember_evaluations = remember_evaluations
        self.max_remembered = max_remembered
        self.per_client = per_client
        self._lock = threading.Lock()
        self._memory: OrderedDict[Signature, Incident] = OrderedDict()  # Oldest last_seen first.
        self._evaluations = 0
        self._incidents = 0

    def evaluate(self, action: Mapping[str, Any], context: PolicyContext) -> PolicyDecision:
        capability = capability_of(action) or "<none>"
        try:
            finding = self._finding(action, capability)
            signatures = self._signatures(action, capability, context.client_id)
        except _TooComplex as error:
            return PolicyDecision.deny(f"incident-memory: action too complex to inspect ({error})")
        with self._lock:
            self._evaluations += 1
            self._forget_expired()
            if finding is not None:
                number = self._remember(finding, signatures)
                return PolicyDecision.deny(f"incident-memory: incident {number}: {finding}")
            repeated = self._recall(signatures)
        if repeated is not None:
            incident, kind = repeated
            return PolicyDecision.deny(f"incident-memory: repeats incident {incident.number} ({incident.finding}) "
                                       f"with the same {_SIGNATURE_KINDS[kind]}")
        return PolicyDecision.allow("incident-memory: repeats no remembered incident")

    def _finding(self, action: Mapping[str, Any], capability: str) -> str | None:
        if capability in self.incident_capabilities:
            return f"forbidden capability {capability!r}"
        text = normalize_text(" ".join(_strings(action)))
        for label, patterns in self.incident_patterns:
            for pattern in patterns:
                match = pattern.search(text)
                if match:
                    return f"{label}: {match.group(0)[:EVIDENCE_CHARS_MAX]!r}"
        return None

    def _signatures(self, action: Mapping[str, Any], capability: str, client_id: str) -> list[Signature]:
        keyed = [("target", normalize_target(text)) for name in self.target_fields
                 for text in _text_values(action.get(name))]
        keyed += [("command", command_fingerprint(" ".join(_text_values(action.get(name)))))
                  for name in self.command_fields if _text_values(action.get(name))]
        keyed = [(kind, text) for kind, text in keyed if text]
        if not keyed:
            keyed = [("action", command_fingerprint(_canonical_text(action)))]
        scope = client_id if self.per_client else ""
        signatures = [(scope, kind, capability, hashlib.blake2b(text.encode(), digest_size=16).digest())
                      for kind, text in keyed]
        return list(dict.fromkeys(signatures))

    def _forget_expired(self) -> None:
        # Every insertion and match moves its signature to the end with the current count, so
        # the oldest last_seen is always first and expiry only ever looks at the front.
        while self._memory:
            oldest = next(iter(self._memory.values()))
            if self._evaluations - oldest.last_seen <= self.remember_evaluations:
                break
            self._memory.popitem(last=False)

    def _remember(self, finding: str, signatures: list[Signature]) -> int:
        self._incidents += 1
        incident = Incident(self._incidents, finding, self._evaluations)
        for signature in signatures[:SIGNATURES_PER_INCIDENT_MAX]:
            self._memory[signature] = incident
            self._memory.move_to_end(signature)
        while len(self._memory) > self.max_remembered:
            self._memory.popitem(last=False)
        assert 0 < len(self._memory) <= self.max_remembered
        return incident.number

    def _recall(self, signatures: list[Signature]) -> tuple[Incident, str] | None:
        for signature in signatures:
            incident = self._memory.get(signature)
            if incident is not None:
                assert self._evaluations - incident.last_seen <= self.remember_evaluations
                self._memory[signature] = replace(incident, last_seen=self._evaluations)
                self._memory.move_to_end(signature)
                return incident, signature[1]
        return None


def _names(values: Iterable[str]) -> tuple[str, ...]:
    """A configured list of names; a bare string is refused, since iterating it would give its letters."""
    if isinstance(values, str):
        raise ValueError(f"expected a list of names, not the single string {values!r}")
    names = tuple(values)
    if not all(isinstance(name, str) for name in names):
        raise ValueError(f"expected a list of names, not {names!r}")
    return names


def _canonical_text(action: Mapping[str, Any]) -> str:
    try:
        return json.dumps(action, sort_keys=True, ensure_ascii=False, default=repr)
    except (TypeError, ValueError) as error:  # Mixed key types or a cycle: not a JSON object.
        raise _TooComplex(f"cannot be written as JSON: {error}") from None


# ---------------------------------------------------------------------------- the compromised node


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
