"""The sans-IO client: signs requests, collects replies, builds certificates.

A verdict is accepted only with f+1 matching, validly signed replies (so at
least one comes from a correct replica), and only after the resulting
certificate verifies in full.  Anything else is a refusal, which callers must
treat as DENY.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from ._certificate import VerdictCertificate
from ._codec import request_digest
from ._config import ClusterConfig
from ._crypto import KeyPair, Signer, Verifier
from ._errors import ActionShapeError, CertificateError, LocalProtocolError, RemoteProtocolError
from ._json_shape import value_shape_problem
from ._messages import MAX_ACTION_BYTES, MAX_ACTION_DEPTH, Refusal, Reply, Request, Risk, action_shape_problem


def canonical_action(action: Mapping[str, Any] | str, depth_max: int = MAX_ACTION_DEPTH,
                     bytes_max: int = MAX_ACTION_BYTES) -> str:
    """The one JSON text for an action object: sorted keys, no spaces.

    Raises ``ActionShapeError`` (a ``LocalProtocolError`` and a ``ValueError``) for anything
    that is not a JSON object of at most ``depth_max`` levels and ``bytes_max`` bytes.  The
    shape is measured with loops before ``json`` parses or writes it, so a value ten thousand
    levels deep, or one that contains itself, is refused rather than crashing the caller.
    """
    if isinstance(action, str):
        problem = action_shape_problem(action, depth_max, len(action.encode()))
        value = _parsed(action) if problem is None else None
    else:
        problem = value_shape_problem(action, depth_max, bytes_max)
        problem = problem and f"the action {problem}"
        value = action
    if problem:
        raise ActionShapeError(problem)
    if not isinstance(value, Mapping):
        raise ActionShapeError("an action must be a JSON object")
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as error:  # Sets, bytes, mixed key types: not JSON.
        raise ActionShapeError(f"the action cannot be written as JSON ({error})") from None
    problem = action_shape_problem(text, depth_max, bytes_max)
    if problem:
        raise ActionShapeError(problem)
    return text


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise ActionShapeError(f"the action is not valid JSON ({error})") from None


@dataclass(slots=True)
class _Outstanding:
    request: Request
    digest: bytes
    replies: dict[int, Reply]
    refused_by: set[int] = field(default_factory=set)


class ClientCore:
    def __init__(self, config: ClusterConfig, client_id: str, seed: bytes, first_request_number: int = 1) -> None:
        if client_id not in config.client_keys:
            raise LocalProtocolError(f"client {client_id!r} is not in the cluster configuration")
        assert first_request_number >= 1
        self.config = config
        self.client_id = client_id
        self._signer = Signer(config.cluster_id, seed)
        self._verifier = Verifier(config.cluster_id, config.replica_keys, dict(config.client_keys))
        # The configuration epochs this client knows (specs/RECONFIGURATION.md): (seq after which it governs,
        # configuration, verifier).  A reply is judged by the epoch of its seq.
        self._epochs: list[tuple[int, ClusterConfig, Verifier]] = [(0, config, self._verifier)]
        self._next_number = first_request_number
        self._outstanding: dict[int, _Outstanding] = {}
        self.rejected_replies = 0

    def learn_epoch(self, starts_after: int, config: ClusterConfig) -> None:
        """A later epoch of the configuration chain: replies for seqs above ``starts_after`` are judged by its
        keys and f."""
        if starts_after <= self._epochs[-1][0] or config.cluster_id != self.config.cluster_id:
            raise LocalProtocolError("epochs are learned in order, for this cluster")
        if self.client_id not in config.client_keys:
            raise LocalProtocolError(f"client {self.client_id!r} is not in the new configuration")
        self._epochs.append((starts_after, config, Verifier(config.cluster_id, config.replica_keys,
                                                            dict(config.client_keys))))

    def rotate_key(self, seed: bytes) -> None:
        """Sign with ``seed`` from now on: this client's key in an epoch that is now active."""
        _, config, _ = self._epochs[-1]
        if config.client_keys.get(self.client_id) != KeyPair.from_seed(seed).public_key:
            raise LocalProtocolError("the newest known epoch does not list this key for this client")
        self._signer = Signer(config.cluster_id, seed)

    def _epoch_of_seq(self, seq: int) -> tuple[ClusterConfig, Verifier]:
        _, config, verifier = next(epoch for epoch in reversed(self._epochs) if epoch[0] < max(seq, 1))
        return config, verifier

    @property
    def outstanding(self) -> tuple[Request, ...]:
        return tuple(entry.request for entry in self._outstanding.values())

    def new_request(self, action: Mapping[str, Any] | str, risk: Risk, deadline_ms: int) -> Request:
        """A signed request with a fresh number; the caller sends it to every replica."""
        text = canonical_action(action, self.config.limits.action_depth_max, self.config.limits.action_bytes_max)
        request = self._signer.sign(Request(self.client_id, self._next_number, risk, text, deadline_ms, bytes(64)))
        self._next_number += 1
        digest = request_digest(self.config.cluster_id, request)
        self._outstanding[request.request_number] = _Outstanding(request, digest, {})
        return request

    def on_reply(self, reply: Reply) -> VerdictCertificate | None:
        """Record a reply; return a verified certificate once f+1 replicas agree."""
        entry = self._outstanding.get(reply.request_number)
        if entry is None or reply.client_id != self.client_id or reply.request_digest != entry.digest:
            return None
        config, verifier = self._epoch_of_seq(reply.seq)
        try:
            verifier.verify(reply)
        except RemoteProtocolError:
            self.rejected_replies += 1
            return None
        entry.replies.setdefault(reply.replica_id, reply)
        matching = tuple(r for _, r in sorted(entry.replies.items()) if r.outcome() == reply.outcome())
        if len(matching) < config.reply_quorum:
            return None
        certificate = VerdictCertificate(entry.request, matching)
        try:
            certificate.verify(config, verifier=verifier)  # The replies were checked just above.
        except CertificateError:
            self.rejected_replies += len(matching)
            return None
        del self._outstanding[reply.request_number]
        return certificate

    def on_refusal(self, refusal: Refusal) -> bool:
        """Record a replica's signed refusal; True once f+1 distinct replicas refused this request.

        One Byzantine replica could refuse everything, so a single refusal never ends a
        request: f+1 include at least one correct replica.  A request that ends this way
        is forgotten, like an expired one, and the caller answers REFUSED (never a verdict).
        """
        entry = self._outstanding.get(refusal.request_number)
        if entry is None or refusal.client_id != self.client_id or refusal.request_digest != entry.digest:
            return False
        _, config, verifier = self._epochs[-1]  # A refusal names no seq: the newest known epoch judges it.
        try:
            verifier.verify(refusal)
        except RemoteProtocolError:
            self.rejected_replies += 1
            return False
        entry.refused_by.add(refusal.replica_id)
        if len(entry.refused_by) < config.reply_quorum:
            return False
        del self._outstanding[refusal.request_number]
        return True

    def forget(self, request: Request) -> None:
        """Stop waiting for ``request``: its caller gave up before it was sent (it is refused)."""
        del self._outstanding[request.request_number]

    def expire(self, now_ms: int) -> tuple[Request, ...]:
        """Forget and return requests whose deadline passed without a certificate: they are refused."""
        expired = tuple(e.request for e in self._outstanding.values() if e.request.deadline_ms < now_ms)
        for request in expired:
            del self._outstanding[request.request_number]
        return expired
