"""The driving contract (bft.core._driving) hands every field of a Ready to the driver, in the fixed order.

A Ready with one item in every field goes through ``apply_ready`` against a
recording driver: each item must reach the driver, persist must come before any
send, and whatever the core answers (evidence, log reads) must come back to the
driver.  The sample table is keyed by ``dataclasses.fields(Ready)``, so a field
added to ``Ready`` fails these tests until the contract handles it.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from bft.core import Bundle, LogEntry, LogRead, Ready, Rejection, Request
from bft.core import apply_ready, persist_then_send, react
from bft.core._driving import HANDLED_FIELDS

EVIDENCE = SimpleNamespace(accused=3)
LOG_READ = LogRead(replica_id=2, first_position=4, last_position=5)
STORED_ENTRY = SimpleNamespace(position=4)
FOLLOW_UP_TO_EVIDENCE = Ready(to_replicas=((1, "evidence command"),))
FOLLOW_UP_TO_LOG_READ = Ready(to_replicas=((2, "signed log chunk"),))

# One item per Ready field.  A new field needs a sample here, and a step in bft.core._driving.
SAMPLES = {
    "persist": ("vote",),
    "to_replicas": ((1, "prepare"),),
    "to_clients": (("client-0", "reply"),),
    "finalized": (SimpleNamespace(position=1),),
    "evaluate": ("request",),
    "rejected": (Rejection("replica 3", "equivocation", "two pre-prepares", EVIDENCE),),
    "log_reads": (LOG_READ,),
    "dead_votes": (b"d" * 32,),
}


class RecordingDriver:
    """Records every call in order; stores acknowledge everything unless told otherwise."""

    def __init__(self, acknowledge=len) -> None:
        self.calls: list[tuple] = []
        self.acknowledge = acknowledge

    def persist(self, items):
        self.calls.append(("persist", items))
        return self.acknowledge(items)

    def send_to_replica(self, replica_id, message):
        self.calls.append(("send_to_replica", (replica_id, message)))

    def send_to_client(self, client_id, reply):
        self.calls.append(("send_to_client", (client_id, reply)))

    def finalized(self, entries):
        self.calls.append(("finalized", entries))

    def forget_votes(self, request_digests):
        self.calls.append(("forget_votes", request_digests))

    def rejected(self, rejection):
        self.calls.append(("rejected", rejection))

    def read_log(self, read):
        self.calls.append(("read_log", read))
        return (STORED_ENTRY,)

    def evaluate(self, request):
        self.calls.append(("evaluate", request))

    def feed(self, ready):
        self.calls.append(("feed", ready))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]


class AnsweringReplica:
    """The two inputs the contract makes to the core, answered with fixed follow-up Readies."""

    def __init__(self) -> None:
        self.inputs: list[tuple] = []

    def report_equivocation(self, proof):
        self.inputs.append(("report_equivocation", proof))
        return FOLLOW_UP_TO_EVIDENCE

    def answer_log_read(self, read, entries):
        self.inputs.append(("answer_log_read", read, entries))
        return FOLLOW_UP_TO_LOG_READ


def full_ready() -> Ready:
    missing = [field.name for field in dataclasses.fields(Ready) if field.name not in SAMPLES]
    assert not missing, f"Ready gained fields {missing}: give them a step in bft.core._driving and a sample here"
    return Ready(**SAMPLES)


def test_every_ready_field_has_a_step_in_the_contract() -> None:
    assert set(HANDLED_FIELDS) == {field.name for field in dataclasses.fields(Ready)}


def test_every_item_of_every_field_reaches_the_driver_in_the_contract_order() -> None:
    driver, replica = RecordingDriver(), AnsweringReplica()
    apply_ready(full_ready(), replica, driver)
    assert driver.kinds() == ["persist", "send_to_replica", "send_to_client", "finalized", "forget_votes",
                              "rejected", "feed", "read_log", "feed", "evaluate"]
    handed = dict(driver.calls[:6])
    assert handed["persist"] == SAMPLES["persist"]
    assert handed["send_to_replica"] == SAMPLES["to_replicas"][0]
    assert handed["send_to_client"] == SAMPLES["to_clients"][0]
    assert handed["finalized"] == SAMPLES["finalized"]
    assert handed["forget_votes"] == SAMPLES["dead_votes"]
    assert handed["rejected"] == SAMPLES["rejected"][0]
    assert driver.calls[7] == ("read_log", LOG_READ) and driver.calls[9] == ("evaluate", "request")


def test_evidence_and_stored_log_entries_go_back_to_the_core_and_its_answers_to_the_driver() -> None:
    driver, replica = RecordingDriver(), AnsweringReplica()
    apply_ready(full_ready(), replica, driver)
    assert replica.inputs == [("report_equivocation", EVIDENCE), ("answer_log_read", LOG_READ, (STORED_ENTRY,))]
    assert [ready for kind, ready in driver.calls if kind == "feed"] == [FOLLOW_UP_TO_EVIDENCE, FOLLOW_UP_TO_LOG_READ]


def test_a_log_read_the_store_cannot_answer_goes_nowhere() -> None:
    driver, replica = RecordingDriver(), AnsweringReplica()
    driver.read_log = lambda read: ()
    apply_ready(Ready(log_reads=(LOG_READ,)), replica, driver)
    assert replica.inputs == [] and "feed" not in driver.kinds()


def test_the_store_returning_entries_outside_the_read_is_a_broken_invariant() -> None:
    driver = RecordingDriver()
    driver.read_log = lambda read: (SimpleNamespace(position=read.last_position + 1),)
    with pytest.raises(AssertionError, match="outside the positions"):
        apply_ready(Ready(log_reads=(LOG_READ,)), AnsweringReplica(), driver)


def test_nothing_is_sent_when_the_store_fails_or_does_not_acknowledge_everything() -> None:
    def failing(items):
        raise OSError("disk full")

    for acknowledge, error in ((failing, OSError), (lambda items: len(items) - 1, AssertionError)):
        driver = RecordingDriver(acknowledge)
        with pytest.raises(error):
            apply_ready(full_ready(), AnsweringReplica(), driver)
        assert driver.kinds() == ["persist"]


def test_an_empty_ready_still_marks_the_point_for_pruning_and_does_nothing_else() -> None:
    driver = RecordingDriver()
    apply_ready(Ready(), AnsweringReplica(), driver)
    assert driver.calls == [("forget_votes", ())]


def test_the_split_for_batching_drivers_covers_every_field_but_the_log_reads_they_answer_later() -> None:
    """The runtime runs ``persist_then_send`` in its store thread and ``react`` on the core's task."""
    ready = full_ready()
    output, reactions, replica = RecordingDriver(), RecordingDriver(), AnsweringReplica()
    persist_then_send(ready, output)
    react(ready, replica, reactions)
    assert output.kinds() == ["persist", "send_to_replica", "send_to_client", "finalized", "forget_votes"]
    assert reactions.kinds() == ["rejected", "feed", "evaluate"]
    steps_run = {"persist_then_send": {"persist", "to_replicas", "to_clients", "finalized", "dead_votes"},
                 "react": {"rejected", "evaluate"}, "the driver's own log reads": {"log_reads"}}
    assert set().union(*steps_run.values()) == set(HANDLED_FIELDS)


def test_every_driver_applies_readies_through_the_contract() -> None:
    """The simulator, the scripts, the model checker, the bench and the runtime import the contract's steps."""
    import bench._scaling
    import bft.runtime._durability
    import bft.runtime._node
    import bft.testing._interaction_cluster
    import bft.testing._sim
    import harness._modelcheck

    for module in (bench._scaling, bft.testing._interaction_cluster, bft.testing._sim, harness._modelcheck):
        assert module.apply_ready is bft.core.apply_ready, module.__name__
    assert bft.runtime._node.react is bft.core.react
    assert bft.runtime._durability.persist_then_send is bft.core.persist_then_send


class RecordingOutput:
    """Steps 1 to 4 against a recording store and network, for real replicas."""

    def __init__(self, events: list, stored: list) -> None:
        self.events, self.stored = events, stored

    def persist(self, items) -> int:
        self.events.append(("persist", tuple(items)))
        self.stored.extend(items)
        return len(items)

    def send_to_replica(self, replica_id, message) -> None:
        self.events.append(("send", replica_id, message))

    def send_to_client(self, client_id, reply) -> None:
        self.events.append(("reply", client_id, reply))

    def finalized(self, entries) -> None:
        self.events.append(("finalized", entries))

    def forget_votes(self, request_digests) -> None:
        self.events.append(("forget_votes", request_digests))


def test_real_replicas_never_send_a_signed_message_or_reply_before_it_is_durable(kit, make_net) -> None:
    net = make_net(kit)
    events: list = []
    stored: list[list] = [[] for _ in range(kit.n)]
    original_handle = net.handle

    def handle_through_the_contract(replica_id: int, ready: Ready) -> Ready:
        start = len(events)
        persist_then_send(ready, RecordingOutput(events, stored[replica_id]))
        mine = events[start:]
        kinds = [event[0] for event in mine]
        if ready.persist:
            assert kinds[0] == "persist" and "persist" not in kinds[1:], kinds
        for event in mine:
            if event[0] == "send" and isinstance(event[2], Bundle):
                # A bundle is the primary's forward of others' messages: their authors made them durable.
                assert event[2].replica_id == replica_id and all(
                    part in stored[replica_id] for part in (*event[2].prepares, *event[2].commits)
                    if part.replica_id == replica_id), "an own part of a bundle left before it was durable"
            elif event[0] == "send" and not isinstance(event[2], Request):
                assert event[2] in stored[replica_id], "a signed message left before it was durable"
            if event[0] == "reply":
                entries = [item for item in stored[replica_id] if isinstance(item, LogEntry)]
                assert any(entry.request_digest == event[2].request_digest for entry in entries)
        return original_handle(replica_id, ready)

    net.handle = handle_through_the_contract
    for number in (1, 2):
        net.submit(kit.request("alice", number))
    net.deliver_all()
    assert {replica.last_executed for replica in net.replicas} == {2}
    assert any(kind == "send" for kind, *_ in events) and any(kind == "reply" for kind, *_ in events)
    assert any(kind == "finalized" for kind, *_ in events)
