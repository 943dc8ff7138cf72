"""Jepsen-style histories of client operations, built from what clients observed.

Every client operation appears twice: an ``invoke`` event when the client sent
the request, and one completion event:

- ``ok``: the client holds a verified certificate; the event carries the
  verdict, the sequence number and the certificate itself (canonical bytes in
  base64) so the history can be re-checked offline.
- ``fail``: the request certainly never took effect.  A BFT client can rarely
  prove this: a refusal after the deadline is *not* such proof, because the
  request may still have been ordered (an expired request is ordered as DENY).
  The simulator's client never proves it, so simulated histories contain no
  ``fail``; hand-written and real-process histories may.
- ``info``: the outcome is unknown (refused at the deadline, or no answer by the
  end of the run).  The checker lets such an operation take effect at any point
  after its invocation, or never.

Events are ordered as they happened: the position in ``History.events`` is the
real-time order the checkers rely on, and ``time_ms`` is the simulated clock.
"""

from __future__ import annotations

import base64
import enum
import json
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator, Protocol

from bft.core import Request, VerdictCertificate


class EventType(enum.Enum):
    INVOKE = "invoke"
    OK = "ok"
    FAIL = "fail"
    INFO = "info"


COMPLETIONS = (EventType.OK, EventType.FAIL, EventType.INFO)
MAX_EVENTS = 1_000_000  # A history larger than this is a harness bug, not a workload.


class HistoryError(ValueError):
    """A history is malformed: unpaired events, a completion before its invoke, bad JSON."""


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a history; ``operation_id`` pairs an invoke with its completion."""

    type: EventType
    operation_id: int
    process: str
    client_id: str
    request_number: int
    time_ms: int
    risk: str | None = None
    verdict: str | None = None
    seq: int | None = None
    reason: str | None = None
    signers: tuple[int, ...] = ()
    votes: tuple[tuple[int, str], ...] = ()
    certificate: str | None = None
    note: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.client_id, self.request_number)

    def to_json(self) -> str:
        plain = asdict(self)
        plain["type"] = self.type.value
        plain["signers"] = list(self.signers)
        plain["votes"] = [list(vote) for vote in self.votes]
        return json.dumps({name: value for name, value in plain.items() if value not in (None, [], ())},
                          sort_keys=True, separators=(",", ":"))

    @staticmethod
    def from_json(line: str) -> "Event":
        try:
            plain = json.loads(line)
            plain["type"] = EventType(plain["type"])
            plain["signers"] = tuple(plain.get("signers", ()))
            plain["votes"] = tuple((int(replica), str(decision)) for replica, decision in plain.get("votes", ()))
            return Event(**plain)
        except (ValueError, KeyError, TypeError) as error:
            raise HistoryError(f"malformed history line: {error}") from None

    def certificate_object(self) -> VerdictCertificate:
        """The certificate this ``ok`` event carries; raises ``CertificateError`` if malformed."""
        assert self.type is EventType.OK and self.certificate is not None
        return VerdictCertificate.from_bytes(base64.b64decode(self.certificate, validate=True))


@dataclass(frozen=True, slots=True)
class Operation:
    """An invoke paired with its completion; indices are positions in the history (real-time order)."""

    operation_id: int
    process: str
    key: tuple[str, int]
    invoke_index: int
    complete_index: int | None
    outcome: EventType
    invoke: Event
    completion: Event | None

    @property
    def verdict(self) -> str | None:
        return self.completion.verdict if self.outcome is EventType.OK else None

    @property
    def seq(self) -> int | None:
        return self.completion.seq if self.outcome is EventType.OK else None

    def describe(self) -> str:
        client_id, number = self.key
        what = f"op {self.operation_id} [{self.process}] {client_id}#{number} invoked at {self.invoke.time_ms} ms"
        if self.outcome is EventType.OK:
            return f"{what}, ok {self.verdict} at seq {self.seq} at {self.completion.time_ms} ms"
        ended = f" at {self.completion.time_ms} ms" if self.completion else ""
        return f"{what}, {self.outcome.value}{ended}"


class History:
    """An ordered list of events with the pairing rules checked on every append."""

    def __init__(self, events: Iterable[Event] = ()) -> None:
        self.events: list[Event] = []
        self._open: dict[int, Event] = {}
        self._closed: set[int] = set()
        for event in events:
            self.append(event)

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def append(self, event: Event) -> None:
        if len(self.events) >= MAX_EVENTS:
            raise HistoryError(f"a history is limited to {MAX_EVENTS} events")
        if event.type is EventType.INVOKE:
            if event.operation_id in self._open or event.operation_id in self._closed:
                raise HistoryError(f"operation {event.operation_id} is invoked twice")
            self._open[event.operation_id] = event
        else:
            invoke = self._open.pop(event.operation_id, None)
            if invoke is None:
                raise HistoryError(f"operation {event.operation_id} completes without an open invoke")
            if invoke.key != event.key or event.time_ms < invoke.time_ms:
                raise HistoryError(f"operation {event.operation_id} completes for another key or before its invoke")
            if event.type is EventType.OK and (event.verdict is None or event.seq is None or event.certificate is None):
                raise HistoryError(f"ok operation {event.operation_id} lacks its verdict, seq or certificate")
            self._closed.add(event.operation_id)
        self.events.append(event)

    def operations(self) -> list[Operation]:
        """Pair invokes with completions; an operation still open at the end counts as ``info``."""
        invoked: dict[int, tuple[int, Event]] = {}
        completed: dict[int, tuple[int, Event]] = {}
        for index, event in enumerate(self.events):
            (invoked if event.type is EventType.INVOKE else completed)[event.operation_id] = (index, event)
        operations = []
        for operation_id, (invoke_index, invoke) in invoked.items():
            complete_index, completion = completed.get(operation_id, (None, None))
            outcome = completion.type if completion is not None else EventType.INFO
            operations.append(Operation(operation_id, invoke.process, invoke.key, invoke_index,
                                        complete_index, outcome, invoke, completion))
        assert len(operations) == len(invoked) and len(completed) <= len(invoked)
        return operations

    def to_jsonl(self) -> str:
        return "".join(event.to_json() + "\n" for event in self.events)

    @staticmethod
    def from_jsonl(text: str) -> "History":
        return History(Event.from_json(line) for line in text.splitlines() if line.strip())


# ----------------------------------------------------------------- building from the simulator


class ObservedOperation(Protocol):
    """What a driver saw of one operation; ``bft.testing``'s ``ClientRecord`` has this shape."""

    request: Request
    invoked_ms: int
    certificate: VerdictCertificate | None
    completed_ms: int | None
    refused: bool


def ok_event(operation_id: int, process: str, certificate: VerdictCertificate, time_ms: int) -> Event:
    client_id, number = certificate.request.key
    return Event(EventType.OK, operation_id, process, client_id, number, time_ms,
                 verdict=certificate.decision.value, seq=certificate.seq, reason=certificate.reason,
                 signers=tuple(reply.replica_id for reply in certificate.replies),
                 votes=tuple((vote.replica_id, vote.decision.value) for vote in certificate.votes),
                 certificate=base64.b64encode(certificate.to_bytes()).decode())


def _completion(operation_id: int, process: str, observed: ObservedOperation, end_ms: int) -> Event:
    client_id, number = observed.request.key
    if observed.certificate is not None:
        assert observed.completed_ms is not None
        return ok_event(operation_id, process, observed.certificate, observed.completed_ms)
    if observed.refused:
        return Event(EventType.INFO, operation_id, process, client_id, number, observed.completed_ms or end_ms,
                     note="refused at the deadline: the request may still have been ordered")
    return Event(EventType.INFO, operation_id, process, client_id, number, end_ms,
                 note="no answer by the end of the run")


def build_history(observed: Iterable[tuple[str, ObservedOperation]], end_ms: int) -> History:
    """A history from (process, observed operation) pairs, in real-time order.

    Events are sorted by simulated time; at equal times completions come before
    invocations.  That is the simulator's true order: every delivery and
    expiry at time t happens inside ``run`` before the driver, back in control
    at t, submits anything new.
    """
    rows = []
    for operation_id, (process, record) in enumerate(observed):
        client_id, number = record.request.key
        invoke = Event(EventType.INVOKE, operation_id, process, client_id, number, record.invoked_ms,
                       risk=record.request.risk.value)
        completion = _completion(operation_id, process, record, end_ms)
        assert completion.time_ms >= invoke.time_ms, (completion, invoke)
        rows.append(((invoke.time_ms, 1, operation_id), invoke))
        # An operation answered in the instant it was invoked stays after its own invoke.
        completion_phase = 0 if completion.time_ms > invoke.time_ms else 2
        rows.append(((completion.time_ms, completion_phase, operation_id), completion))
    rows.sort(key=lambda row: row[0])
    return History(event for _, event in rows)


def history_from_cluster(cluster) -> History:
    """The history of a ``SimCluster`` (or a ``HarnessCluster``, whose retries it includes) at its current time."""
    observed = getattr(cluster, "observed_operations", None)
    pairs = observed() if observed is not None else [(r.request.client_id, r) for r in cluster.operations.values()]
    return build_history(pairs, cluster.now_ms)
