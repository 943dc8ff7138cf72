"""Proves the codec's shortcuts change no byte and weaken no check: the encoding a signed message keeps and the
signing payload cut from it equal what its fields give, for every message a run with a view change sends and
every signed record nested in them; the verifier's cache is keyed on the whole signed message; and schema
errors still name the full path to the bad field."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Iterator

import msgpack
import pytest

from bft.core import Decision, RemoteProtocolError, Risk, Verifier, Vote, decode, encode
from bft.core._codec import DOMAIN, signing_payload
from bft.core._messages import SIGNED_MESSAGE_TYPES, CodecMemo
from bft.core._schema import Enum, ListOf, Nested
from bft.testing import SimCluster


def reference_plain(value: Any, kind: Any) -> Any:
    """Plain wire data of ``value`` walked straight from the SCHEMA, independent of the codec's plans."""
    if isinstance(kind, Nested):
        return [reference_plain(getattr(value, name), field_kind) for name, field_kind in kind.record_type.SCHEMA]
    if isinstance(kind, ListOf):
        return [reference_plain(element, kind.item) for element in value]
    if isinstance(kind, Enum):
        return value.value
    return value


def reference_encoding(message: Any) -> bytes:
    return msgpack.packb([message.TAG, *reference_plain(message, Nested(type(message)))], use_bin_type=True)


def reference_payload(cluster_id: str, message: Any) -> bytes:
    fields = reference_plain(message, Nested(type(message)))[:-1]
    return msgpack.packb([DOMAIN, cluster_id, message.TAG, *fields], use_bin_type=True)


def signed_records(value: Any) -> Iterator[Any]:
    """``value`` and every message nested in it (signed ones, and bundles of them), depth first."""
    if isinstance(value, tuple):
        for element in value:
            yield from signed_records(element)
    elif dataclasses.is_dataclass(value):
        if isinstance(value, CodecMemo):
            yield value
        for field in dataclasses.fields(value):
            yield from signed_records(getattr(value, field.name))


class CapturingCluster(SimCluster):
    def __init__(self, *arguments, **options) -> None:
        self.sent: list = []
        super().__init__(*arguments, **options)

    def _send_one(self, source, destination, message) -> None:
        self.sent.append(message)
        super()._send_one(source, destination, message)


@pytest.fixture(scope="module")
def sent_messages() -> list:
    """Messages a 4-replica cluster sends while it orders requests, loses its primary and changes view."""
    cluster = CapturingCluster(4, seed=3)
    first = [cluster.submit("client-0", {"tool": "read_file", "n": number}) for number in range(3)]
    assert cluster.run_until(cluster.all_done, max_ms=10_000)
    cluster.crash(cluster.replicas[1].primary_id)
    later = [cluster.submit("client-0", {"tool": "read_file", "n": number}, Risk.MEDIUM) for number in range(3, 6)]
    assert cluster.run_until(cluster.all_done, max_ms=60_000)
    assert all(cluster.verdict(request) is Decision.ALLOW for request in first + later)
    return cluster.sent


def test_the_run_sends_every_kind_of_message_the_shortcuts_serve(sent_messages) -> None:
    kinds = {type(message).__name__ for message in sent_messages}
    assert {"Request", "Vote", "PrePrepare", "Prepare", "Commit", "Reply", "ViewChange", "NewView"} <= kinds


def test_kept_encodings_and_cut_payloads_equal_what_the_fields_give(sent_messages) -> None:
    cluster_id = "sim"
    checked = set()
    for message in {id(m): m for m in sent_messages}.values():
        # As signed locally (encoding kept from the signing payload), then as decoded (nested records too).
        for top in (message, decode(encode(message))):
            for record in signed_records(top):
                assert encode(record) == reference_encoding(record), type(record).__name__
                checked.add(type(record))
                if type(record) not in SIGNED_MESSAGE_TYPES:
                    continue  # A bundle signs nothing; its parts are checked as records of their own.
                assert signing_payload(cluster_id, record) == reference_payload(cluster_id, record)
                assert signing_payload("another-cluster", record) == reference_payload("another-cluster", record)
    assert {type(message) for message in sent_messages} <= checked


def test_a_copy_or_a_replaced_message_starts_without_the_kept_encoding(kit) -> None:
    vote = kit.vote(1, kit.request())
    assert encode(vote) == reference_encoding(vote)
    assert encode(copy.copy(vote)) == encode(vote)
    changed = dataclasses.replace(vote, reason="changed")
    assert encode(changed) == reference_encoding(changed) != encode(vote)


def test_a_message_with_a_hand_built_signature_is_still_encoded_from_its_fields(kit) -> None:
    vote = Vote(bytes(32), Decision.ALLOW, "ok", 1, b"short")
    assert encode(vote) == reference_encoding(vote)
    assert signing_payload("c", vote) == reference_payload("c", vote)


def test_the_verifier_cache_never_lends_a_valid_signature_to_a_changed_message(kit) -> None:
    config = kit.config
    verifier = Verifier(config.cluster_id, config.replica_keys, dict(config.client_keys))
    vote = kit.vote(2, kit.request())
    verifier.verify(vote)
    verifier.verify(decode(encode(vote)))  # An equal message: served by the cache.
    for forged in (dataclasses.replace(vote, reason="not what was signed"),
                   dataclasses.replace(vote, decision=Decision.DENY),
                   dataclasses.replace(vote, signature=bytes(64))):
        with pytest.raises(RemoteProtocolError) as caught:
            verifier.verify(forged)
        assert caught.value.reason == "bad-signature"


def test_every_signed_type_keeps_its_encoding_in_a_slot_outside_its_fields() -> None:
    for message_type in SIGNED_MESSAGE_TYPES:
        assert issubclass(message_type, CodecMemo)
        assert "_wire" not in {field.name for field in dataclasses.fields(message_type)}


def wire_of(message: Any) -> list:
    return [message.TAG, *reference_plain(message, Nested(type(message)))]


def schema_detail(plain: list) -> str:
    with pytest.raises(RemoteProtocolError) as caught:
        decode(msgpack.packb(plain, use_bin_type=True))
    assert caught.value.reason == "schema"
    return caught.value.detail


def test_schema_errors_name_the_full_path_to_the_bad_field(kit) -> None:
    request = kit.request()
    preprepare = kit.preprepare(1, (kit.entry(request), kit.entry(kit.request(number=2))))
    plain = wire_of(preprepare)
    batch = plain[3]
    batch[1][1][1][2][3] = 200  # entries[1].votes[2].replica_id
    assert schema_detail(plain) == "PrePrepare.batch.entries[1].votes[2].replica_id: 200 outside [0, 127]"
    plain = wire_of(preprepare)
    plain[3][1][0] = "not an entry"
    assert schema_detail(plain) == "PrePrepare.batch.entries[0]: expected array for BatchEntry"
    plain = wire_of(preprepare)
    plain[3][1][0][0][2] = "LOW"
    assert schema_detail(plain) == "PrePrepare.batch.entries[0].request.risk: not a valid Risk: 'LOW'"
    plain = wire_of(request)
    plain[4] = "[]"
    assert schema_detail(plain) == "Request.action: action must be a JSON object"
    plain = wire_of(request)
    plain[1] = "é" * 40
    assert schema_detail(plain) == "Request.client_id: length outside [1, 64] bytes"


@pytest.mark.parametrize("value", [b"low", True, 1, ["low"], None, "Low"])
def test_an_enum_accepts_only_its_own_values_of_their_own_type(value) -> None:
    with pytest.raises(RemoteProtocolError):
        Enum(Risk).from_wire(value, "risk")
    assert Enum(Risk).from_wire("low", "risk") is Risk.LOW
