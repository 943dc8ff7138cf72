"""``IncidentMemory`` ("incident-memory"): denies what repeats a serious incident it denied."""

from __future__ import annotations

import hashlib
import posixpath
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from ..policy import PolicyContext, PolicyDecision
from ._deny_list import _DOWNLOAD_PIPED_TO_SHELL, _SECRET_VALUES, DEFAULT_DENIED_CAPABILITIES
from ._inspect import _canonical_text, _compile, _names, _strings, _TooComplex, capability_of, normalize_text
from ._pattern_matcher import CREDENTIAL_PATH_PATTERNS, DESTRUCTIVE_PATTERNS, INJECTION_PATTERNS


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
