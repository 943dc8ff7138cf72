"""``PatternMatcher`` ("pattern-matcher"): an adversarial text matcher over every string in the action."""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from typing import Any, Iterable, Mapping

from ..policy import PolicyContext, PolicyDecision
from ._inspect import _compile, _strings, _TooComplex, normalize_text


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
