"""``CapabilityDenyList`` ("deny-list"): capabilities never allowed, and dangerous fragments per capability."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ..policy import PolicyContext, PolicyDecision
from ._inspect import _compile, _strings, _TooComplex, capability_of, normalize_text


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
