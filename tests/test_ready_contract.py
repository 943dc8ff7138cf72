"""The driving contract (bft.core._driving) hands every field of a Ready to the driver, in the fixed order.

A Ready with one item in every field goes through ``apply_ready`` against a
recording driver: each item must reach the driver, persist must come before any
send but the forwards and replies (which stand on nothing it persists), and whatever the core answers (evidence, log reads) must come back to the
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
    "forwards": ((2, "bundle"),),
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
    assert driver.calls[:7] == [("send_to_replica", SAMPLES["forwards"][0]), ("send_to_client", SAMPLES["to_clients"][0]),
                                ("persist", SAMPLES["persist"]), ("send_to_replica", SAMPLES["to_replicas"][0]),
                                ("finalized", SAMPLES["finalized"]), ("forget_votes", SAMPLES["dead_votes"]),
                                ("rejected", SAMPLES["rejected"][0])]
    assert driver.kinds()[7:] == ["feed", "read_log", "feed", "evaluate"]
    assert driver.calls[8] == ("read_log", LOG_READ) and driver.calls[10] == ("evaluate", "request")


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


def test_nothing_the_store_guards_is_sent_when_it_fails_or_does_not_acknowledge_everything() -> None:
    def failing(items):
        raise OSError("disk full")

    for acknowledge, error in ((failing, OSError), (lambda items: len(items) - 1, AssertionError)):
        driver = RecordingDriver(acknowledge)
        with pytest.raises(error):
            apply_ready(full_ready(), AnsweringReplica(), driver)
        assert driver.calls[:2] == [("send_to_replica", SAMPLES["forwards"][0]),
                                    ("send_to_client", SAMPLES["to_clients"][0])]
        assert driver.kinds()[2:] == ["persist"]


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
    assert output.kinds() == ["send_to_replica", "send_to_client", "persist", "send_to_replica", "finalized",
                              "forget_votes"]
    assert reactions.kinds() == ["rejected", "feed", "evaluate"]
    steps_run = {"persist_then_send": {"forwards", "to_clients", "persist", "to_replicas", "finalized", "dead_votes"},
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


def test_real_replicas_send_a_signed_message_only_once_durable_and_a_reply_only_for_an_executed_request(
        kit, make_net) -> None:
    """Own signed messages (bundled ones too) are durable before they leave; a reply may leave before its
    log entry is durable, but never before the replica executed the request (its entry is in the Ready)."""
    net = make_net(kit)
    events: list = []
    stored: list[list] = [[] for _ in range(kit.n)]
    original_handle = net.handle

    def handle_through_the_contract(replica_id: int, ready: Ready) -> Ready:
        start, durable_before = len(events), list(stored[replica_id])
        persist_then_send(ready, RecordingOutput(events, stored[replica_id]))
        mine = events[start:]
        kinds = [event[0] for event in mine]
        if ready.persist:
            assert kinds.count("persist") == 1, kinds
        for position, event in enumerate(mine):
            durable_then = stored[replica_id] if "persist" in kinds[:position] else durable_before
            if event[0] == "send" and isinstance(event[2], Bundle):
                # A bundle is the primary's forward of others' messages: their authors made them durable.
                assert event[2].replica_id == replica_id and all(
                    part in durable_then for part in (*event[2].prepares, *event[2].commits)
                    if part.replica_id == replica_id), "an own part of a bundle left before it was durable"
            elif event[0] == "send" and not isinstance(event[2], Request):
                assert event[2] in durable_then, "a signed message left before it was durable"
            if event[0] == "reply":
                entries = [item for item in (*durable_before, *ready.persist) if isinstance(item, LogEntry)]
                assert any(entry.request_digest == event[2].request_digest for entry in entries)
        return original_handle(replica_id, ready)

    net.handle = handle_through_the_contract
    for number in (1, 2):
        net.submit(kit.request("alice", number))
    net.deliver_all()
    assert {replica.last_executed for replica in net.replicas} == {2}
    assert any(kind == "send" for kind, *_ in events) and any(kind == "reply" for kind, *_ in events)
    assert any(kind == "finalized" for kind, *_ in events)
