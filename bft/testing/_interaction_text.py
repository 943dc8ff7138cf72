"""One readable line per protocol message or log entry, for the golden interaction scripts.

Digests are shown as their first six hex digits and signatures never: a line must
stay the same from run to run and say what a reader needs to follow the protocol.
Requests are named ``client#number``; a vote or reply names the request it is about
through ``RequestNames``, which learns every request the driver sees.
"""

from __future__ import annotations

import json

from ..core import (Batch, Bundle, Checkpoint, Commit, LogEntry, Message, NewView, PrePrepare, Prepare, Refusal, Reply,
                    Request, StateReply, StateRequest, ViewChange, Vote, request_digest)
from ..core._codec import record_digest

SHORT_HEX_CHARS = 6


def short(data: bytes) -> str:
    return data.hex()[:SHORT_HEX_CHARS]


def quoted(text: str) -> str:
    """A reason or action as one JSON string, so spaces and quotes inside it stay unambiguous."""
    return json.dumps(text, ensure_ascii=False)


class RequestNames:
    """Maps request digests to ``client#number`` for every request the driver has seen."""

    def __init__(self, cluster_id: str) -> None:
        self.cluster_id = cluster_id
        self._by_digest: dict[bytes, str] = {}

    def learn(self, request: Request) -> str:
        name = f"{request.client_id}#{request.request_number}"
        self._by_digest[request_digest(self.cluster_id, request)] = name
        return name

    def of(self, digest: bytes) -> str:
        return self._by_digest.get(digest, f"request:{short(digest)}")

    def batch(self, batch: Batch) -> str:
        names = [self.learn(entry.request) for entry in batch.entries]
        return "[" + " ".join(names) + "]"

    def describe(self, message: Message | LogEntry) -> str:
        describer = _DESCRIBERS.get(type(message))
        assert describer is not None, f"no description for {type(message).__name__}"
        return describer(self, message)


ACTION_CHARS_SHOWN = 60


def _action(action: str) -> str:
    """Short actions in full; a long one (an evidence command carries two messages) cut, with its length."""
    if len(action) <= ACTION_CHARS_SHOWN:
        return action
    return f"{action[:ACTION_CHARS_SHOWN]}...({len(action)} chars)"


def _request(names: RequestNames, request: Request) -> str:
    return (f"REQUEST {names.learn(request)} {request.risk.value} {_action(request.action)} "
            f"deadline={request.deadline_ms}")


def _vote(names: RequestNames, vote: Vote) -> str:
    return f"VOTE {names.of(vote.request_digest)} {vote.decision.value} {quoted(vote.reason)}"


def _votes_text(batch: Batch) -> str:
    """Who voted what on each entry, e.g. "allow=r0,r1,r2 deny=r3"; entries separated by " / "."""
    def of(entry) -> str:
        allow = ",".join(f"r{v.replica_id}" for v in entry.votes if v.decision.value == "ALLOW") or "-"
        deny = ",".join(f"r{v.replica_id}" for v in entry.votes if v.decision.value == "DENY") or "-"
        return f"allow={allow} deny={deny}"
    return " / ".join(of(entry) for entry in batch.entries)


def _preprepare(names: RequestNames, preprepare: PrePrepare) -> str:
    votes = _votes_text(preprepare.batch)
    return (f"PRE-PREPARE v={preprepare.view} seq={preprepare.seq} digest={short(record_digest(preprepare.batch))} "
            f"{names.batch(preprepare.batch)}" + (f" {votes}" if votes else ""))


def _phase(name: str):
    def describe(names: RequestNames, message: Prepare | Commit) -> str:
        return f"{name} v={message.view} seq={message.seq} digest={short(message.batch_digest)}"
    return describe


def _bundle(names: RequestNames, bundle: Bundle) -> str:
    def of(name: str, parts: tuple[Prepare, ...] | tuple[Commit, ...]) -> str:
        slots = sorted({(part.view, part.seq, short(part.batch_digest)) for part in parts})
        authors = ",".join(f"r{part.replica_id}" for part in parts)
        return f"{name} " + " ".join(f"v={v} seq={s} digest={d}" for v, s, d in slots) + f" from={authors}"
    phases = [of(name, parts) for name, parts in (("PREPAREs", bundle.prepares), ("COMMITs", bundle.commits)) if parts]
    return "BUNDLE " + " + ".join(phases or ["empty"])


def _checkpoint(names: RequestNames, checkpoint: Checkpoint) -> str:
    return f"CHECKPOINT seq={checkpoint.seq} state={short(checkpoint.state_digest)}"


def _prepared_text(view_change: ViewChange) -> str:
    return " ".join(f"seq={proof.preprepare.seq}/v={proof.preprepare.view}/"
                    f"{short(record_digest(proof.preprepare.batch))}" for proof in view_change.prepared)


def _view_change(names: RequestNames, view_change: ViewChange) -> str:
    return (f"VIEW-CHANGE v={view_change.new_view} stable={view_change.stable_seq} "
            f"prepared=[{_prepared_text(view_change)}]")


def _new_view(names: RequestNames, new_view: NewView) -> str:
    senders = ",".join(f"r{vc.replica_id}" for vc in new_view.view_changes)
    reproposals = " ".join(f"seq={pp.seq}/{short(record_digest(pp.batch))}{names.batch(pp.batch)}"
                           for pp in new_view.preprepares)
    return f"NEW-VIEW v={new_view.view} view-changes={senders} reproposals=[{reproposals}]"


def _reply(names: RequestNames, reply: Reply) -> str:
    return (f"REPLY {reply.client_id}#{reply.request_number} seq={reply.seq} {reply.decision.value} "
            f"{quoted(reply.reason)}")


def _refusal(names: RequestNames, refusal: Refusal) -> str:
    return f"REFUSAL {refusal.client_id}#{refusal.request_number} {quoted(refusal.reason)}"


def _state_request(names: RequestNames, request: StateRequest) -> str:
    return (f"STATE-REQUEST checkpoint={request.checkpoint_seq} "
            f"positions={request.first_position}..{request.last_position}")


def _state_reply(names: RequestNames, reply: StateReply) -> str:
    if reply.entries:
        return f"STATE-REPLY log-chunk from={reply.first_position} bytes={len(reply.entries)}"
    return (f"STATE-REPLY snapshot checkpoint={reply.checkpoint_seq} "
            f"state={short(reply.stable_proof[0].state_digest) if reply.stable_proof else '-'}")


def _log_entry(names: RequestNames, entry: LogEntry) -> str:
    events = f" events={entry.events}" if entry.events else ""
    uncounted = f" uncounted={entry.uncounted_voters}" if entry.uncounted_voters else ""
    return (f"LOG pos={entry.position} seq={entry.seq} {entry.client_id}#{entry.request_number} "
            f"{entry.decision.value} allow={entry.allow_voters or '-'} deny={entry.deny_voters or '-'}{uncounted} "
            f"hash={short(entry.entry_hash)}{events}")


_DESCRIBERS = {
    Request: _request, Vote: _vote, PrePrepare: _preprepare, Prepare: _phase("PREPARE"),
    Commit: _phase("COMMIT"), Checkpoint: _checkpoint, ViewChange: _view_change, NewView: _new_view,
    Reply: _reply, Refusal: _refusal, StateRequest: _state_request, StateReply: _state_reply, LogEntry: _log_entry,
    Bundle: _bundle,
}

TYPE_NAMES = {Request: "REQUEST", Vote: "VOTE", PrePrepare: "PRE-PREPARE", Prepare: "PREPARE", Commit: "COMMIT",
              Checkpoint: "CHECKPOINT", ViewChange: "VIEW-CHANGE", NewView: "NEW-VIEW", Reply: "REPLY",
              Refusal: "REFUSAL", StateRequest: "STATE-REQUEST", StateReply: "STATE-REPLY", Bundle: "BUNDLE"}


def final_line(entry: LogEntry) -> str:
    return (f"FINAL seq={entry.seq} {entry.client_id}#{entry.request_number} {entry.decision.value} "
            f"{quoted(entry.reason)}")
