"""The sans-IO consensus core: messages, codec, crypto, quorum arithmetic and the replica.

Nothing here performs I/O, reads a clock or starts a thread; the trio runtime,
the deterministic simulator and the model checker all drive these same objects.
"""

from ._certificate import VerdictCertificate
from ._client import ClientCore, canonical_action
from ._codec import MAX_WIRE_BYTES, decode, encode, request_digest
from ._config import ClusterConfig, ConfigError, Limits
from ._crypto import KeyPair, Signer, Verifier
from ._errors import CertificateError, LocalProtocolError, ProtocolError, RemoteProtocolError
from ._execution import GENESIS_HASH, LogEntry, votes_digest
from ._messages import (Batch, BatchEntry, Checkpoint, Commit, Decision, Message, NewView, PrePrepare,
                        Prepare, PreparedProof, Reply, Request, Risk, ViewChange, Vote)
from ._quorum import max_faulty, primary_of, quorum_size, reply_quorum
from ._ready import Ready, Rejection, apply_ready
from ._replica import Replica
from ._verdict import VerdictRule, decide, default_rules, is_settled

__all__ = [
    "Batch", "BatchEntry", "CertificateError", "Checkpoint", "ClientCore", "ClusterConfig", "Commit",
    "ConfigError", "Decision", "GENESIS_HASH", "KeyPair", "Limits", "LocalProtocolError", "LogEntry",
    "MAX_WIRE_BYTES", "Message", "NewView", "PrePrepare", "Prepare", "PreparedProof", "ProtocolError",
    "Ready", "Rejection", "RemoteProtocolError", "Replica", "Reply", "Request", "Risk", "Signer",
    "VerdictCertificate", "VerdictRule", "Verifier", "ViewChange", "Vote", "apply_ready",
    "canonical_action", "decide", "decode", "default_rules", "encode", "is_settled", "max_faulty",
    "primary_of", "quorum_size", "reply_quorum", "request_digest", "votes_digest",
]
