"""The sans-IO consensus core: messages, codec, crypto, quorum arithmetic and the replica.

Nothing here performs I/O, reads a clock or starts a thread; the trio runtime,
the deterministic simulator and the model checker all drive these same objects.
"""

from ._certificate import VerdictCertificate
from ._client import ClientCore, canonical_action
from ._codec import MAX_WIRE_BYTES, decode, encode, request_digest
from ._config import ClusterConfig, ConfigError, Limits
from ._crypto import KeyPair, Signer, Verifier
from ._errors import ActionShapeError, CertificateError, LocalProtocolError, ProtocolError, RemoteProtocolError
from ._execution import GENESIS_HASH, AgreedVerdict, LogEntry, votes_digest
from ._messages import (Batch, BatchEntry, Bundle, Checkpoint, Commit, Decision, Message, NewView, PrePrepare,
                        Prepare, PreparedProof, Refusal, Reply, Request, Risk, ViewChange, Vote)
from ._messages import NO_QUORUM, REFUSAL_REASONS
from ._quorum import max_faulty, primary_of, quorum_size, reply_quorum
from ._driving import (ReadyIO, ReadyOutput, ReadyReactions, apply_ready, persist_then_send,
                       react, send_unguarded)
from ._ready import Ready, Rejection
from ._replica import Replica
from ._verdict import VerdictRule, decide, default_rules, is_settled

__all__ = [
    "ActionShapeError", "AgreedVerdict", "Batch", "BatchEntry", "Bundle", "CertificateError", "Checkpoint",
    "ClientCore", "ClusterConfig", "Commit",
    "ConfigError", "Decision", "GENESIS_HASH", "KeyPair", "Limits", "LocalProtocolError", "LogEntry",
    "MAX_WIRE_BYTES", "Message", "NewView", "PrePrepare", "Prepare", "PreparedProof", "ProtocolError",
    "NO_QUORUM", "REFUSAL_REASONS", "Ready", "Refusal", "Rejection", "RemoteProtocolError", "Replica", "Reply", "Request", "Risk", "Signer",
    "VerdictCertificate", "VerdictRule", "Verifier", "ViewChange", "Vote", "apply_ready",
    "ReadyIO", "ReadyOutput", "ReadyReactions", "persist_then_send", "react", "send_unguarded",
    "canonical_action", "decide", "decode", "default_rules", "encode", "is_settled", "max_faulty",
    "primary_of", "quorum_size", "reply_quorum", "request_digest", "votes_digest",
]

# Accountability (issue 6): commands to the replicated state, equivocation evidence, quarantine-aware rules.
from ._accountability import (CommandError, EquivocationProof, command_vote, endorsement_document,  # noqa: E402
                              is_command_request, operator_document, parse_command)
from ._accountability_state import AccountabilityState  # noqa: E402
from ._config import AccountabilityOptions, operator_signer_id, replica_signer_id  # noqa: E402
from ._verdict import effective_rule  # noqa: E402

__all__ += [
    "AccountabilityOptions", "AccountabilityState", "CommandError", "EquivocationProof", "command_vote",
    "effective_rule", "endorsement_document", "is_command_request", "operator_document", "operator_signer_id",
    "parse_command", "replica_signer_id",
]

# State transfer and restart (issue 3): fetching a certified stable checkpoint from peers.
from ._messages import StateReply, StateRequest  # noqa: E402
from ._ready import LogRead  # noqa: E402
from ._state_transfer import StateAdoption  # noqa: E402

__all__ += ["LogRead", "StateAdoption", "StateReply", "StateRequest"]

from ._catch_up import CATCH_UP_STATES  # noqa: E402

__all__ += ["CATCH_UP_STATES"]
