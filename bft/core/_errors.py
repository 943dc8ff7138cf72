"""The two kinds of protocol error, kept apart on purpose.

A ``RemoteProtocolError`` is an expected event: a peer or client sent something
malformed, unsigned, stale or contradictory.  The core rejects it, counts it and
reports it in ``Ready.rejected``; it never changes state because of it.

A ``LocalProtocolError`` means the caller misused the API (a bug on our side of
the boundary).  It is raised loudly and never swallowed.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every protocol error raised by the core."""


class LocalProtocolError(ProtocolError):
    """The local caller broke the API contract."""


class RemoteProtocolError(ProtocolError):
    """A remote party sent input that must be rejected.

    ``reason`` is a short stable token (used as a metric label); ``detail`` is
    the human sentence for logs.
    """

    def __init__(self, reason: str, detail: str = "", sender: str = "?", *, evidence: object = None) -> None:
        self.reason = reason
        self.detail = detail
        self.sender = sender
        self.evidence = evidence  # An ``EquivocationProof`` when the input proves its sender Byzantine.
        super().__init__(f"rejected message from {sender}: {reason}" + (f" ({detail})" if detail else ""))

    def from_sender(self, sender: str) -> "RemoteProtocolError":
        """The same error, attributed to ``sender`` once the caller knows who it is."""
        return RemoteProtocolError(self.reason, self.detail, sender, evidence=self.evidence)


class ActionShapeError(LocalProtocolError, ValueError):
    """The caller's action is not a JSON object within the cluster's depth and size limits; nothing was signed."""


class CertificateError(Exception):
    """A verdict certificate failed offline verification; the message says why."""
