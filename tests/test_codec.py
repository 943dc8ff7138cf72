"""Proves the codec: every message round-trips, and every malformed input ends as a RemoteProtocolError with a known reason that leaves a replica untouched."""

from __future__ import annotations

import random
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bft.core import (MAX_WIRE_BYTES, Batch, BatchEntry, Checkpoint, Commit, Decision, NewView, PrePrepare,
                      Prepare, PreparedProof, Refusal, RemoteProtocolError, Reply, Request, Risk, ViewChange, Vote,
                      canonical_action, decode, encode)
from bft.core._messages import MAX_ID_BYTES, REFUSAL_REASONS, SIGNED_MESSAGE_TYPES, StateReply, StateRequest
from bft.core._schema import ListOf, Nested, record_to_wire

DECODE_REASONS = {"malformed", "oversized", "unknown-type", "schema", "non-canonical"}
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- strategies for valid messages

u63 = st.integers(min_value=0, max_value=2**63 - 1)
small_or_huge = st.one_of(st.integers(min_value=0, max_value=300), u63)
digests = st.binary(min_size=32, max_size=32)
signatures = st.binary(min_size=64, max_size=64)
replica_ids = st.integers(min_value=0, max_value=127)
reasons = st.text(max_size=50)  # At most 4 UTF-8 bytes per character: within the 200-byte limit.
client_ids = st.text(min_size=1, max_size=16).filter(
    lambda text: text.isprintable() and text == text.strip() and len(text.encode()) <= MAX_ID_BYTES)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=10))
actions = st.dictionaries(st.text(max_size=8), st.one_of(json_scalars, st.lists(json_scalars, max_size=3)),
                          max_size=4).map(canonical_action)

requests = st.builds(Request, client_ids, st.integers(min_value=1, max_value=2**63 - 1), st.sampled_from(Risk),
                     actions, small_or_huge, signatures)
votes = st.builds(Vote, digests, st.sampled_from(Decision), reasons, replica_ids, signatures)
vote_tuples = st.lists(votes, max_size=4).map(tuple)
batches = st.builds(Batch, small_or_huge, st.lists(st.builds(BatchEntry, requests, vote_tuples), max_size=3).map(tuple))
preprepares = st.builds(PrePrepare, small_or_huge, small_or_huge, batches, replica_ids, signatures)
prepares = st.builds(Prepare, small_or_huge, small_or_huge, digests, replica_ids, signatures)
commits = st.builds(Commit, small_or_huge, small_or_huge, digests, replica_ids, signatures)
replies = st.builds(Reply, client_ids, st.integers(min_value=1, max_value=2**63 - 1), digests, small_or_huge,
                    small_or_huge, st.sampled_from(Decision), reasons, vote_tuples, replica_ids, signatures)
checkpoints = st.builds(Checkpoint, small_or_huge, digests, replica_ids, signatures)
prepared_proofs = st.builds(PreparedProof, preprepares, st.lists(prepares, max_size=3).map(tuple))
view_changes = st.builds(ViewChange, small_or_huge, small_or_huge, st.lists(checkpoints, max_size=3).map(tuple),
                         st.lists(prepared_proofs, max_size=2).map(tuple), replica_ids, signatures)
new_views = st.builds(NewView, small_or_huge, st.lists(view_changes, max_size=2).map(tuple),
                      st.lists(preprepares, max_size=2).map(tuple), replica_ids, signatures)

refusals = st.builds(Refusal, client_ids, st.integers(min_value=1, max_value=2**63 - 1), digests,
                     st.sampled_from(REFUSAL_REASONS), replica_ids, signatures)

state_requests = st.builds(StateRequest, small_or_huge, small_or_huge, small_or_huge, small_or_huge, replica_ids,
                           signatures)
state_replies = st.builds(StateReply, small_or_huge, st.lists(checkpoints, max_size=3).map(tuple),
                          st.binary(max_size=40), small_or_huge, st.binary(max_size=40), replica_ids, signatures)

STRATEGY_BY_TYPE = {Request: requests, Vote: votes, PrePrepare: preprepares, Prepare: prepares, Commit: commits,
                    Reply: replies, Checkpoint: checkpoints, ViewChange: view_changes, NewView: new_views,
                    Refusal: refusals, StateRequest: state_requests, StateReply: state_replies}
messages = st.one_of(*STRATEGY_BY_TYPE.values())


def test_a_strategy_exists_for_every_message_type() -> None:
    assert set(STRATEGY_BY_TYPE) == set(SIGNED_MESSAGE_TYPES)


def assert_rejected(data: Any, max_bytes: int = MAX_WIRE_BYTES) -> RemoteProtocolError:
    """``decode`` must raise RemoteProtocolError with a known reason (any other exception fails the test)."""
    with pytest.raises(RemoteProtocolError) as caught:
        decode(data, max_bytes)
    assert caught.value.reason in DECODE_REASONS, caught.value
    return caught.value


def decode_or_reject(data: bytes) -> Any:
    """Decode; a rejection must carry a known reason; any other exception propagates and fails the test."""
    try:
        return decode(data)
    except RemoteProtocolError as error:
        assert error.reason in DECODE_REASONS, error
        return None


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("message_type", SIGNED_MESSAGE_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_message_type_round_trips(message_type, data) -> None:
    message = data.draw(STRATEGY_BY_TYPE[message_type])
    encoded = encode(message)
    decoded = decode(encoded)
    assert type(decoded) is message_type
    assert decoded == message
    assert encode(decoded) == encoded


def test_round_trip_of_real_signed_messages(kit) -> None:
    request = kit.request()
    entry = kit.entry(request)
    preprepare = kit.preprepare(1, (entry,))
    for message in (request, entry.votes[0], preprepare, kit.prepare(1, 1, bytes(32)), kit.commit(2, 1, bytes(32)),
                    kit.checkpoint(3, 32, bytes(32))):
        assert decode(encode(message)) == message


# ---------------------------------------------------------------- malformed input

@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_are_rejected_or_canonical(data: bytes) -> None:
    message = decode_or_reject(data)
    if message is not None:
        assert encode(message) == data


@FUZZ
@given(messages, st.data())
def test_truncated_encodings_are_rejected(message, data) -> None:
    encoded = encode(message)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    if cut == 0:
        assert_rejected(b"")
    else:
        assert_rejected(encoded[:cut])


@FUZZ
@given(messages, st.data())
def test_byte_flips_are_rejected_or_decode_to_the_flipped_bytes(message, data) -> None:
    encoded = bytearray(encode(message))
    position = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    encoded[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    decoded = decode_or_reject(bytes(encoded))
    if decoded is not None:
        assert decoded != message and encode(decoded) == bytes(encoded)


def wire_of(message) -> list:
    return [message.TAG, *record_to_wire(message)]


def paths_of(record_type: type, plain: list, prefix: tuple) -> list[tuple[tuple, str]]:
    """Every node below a record, with what it is: a record, a list field, or a leaf field."""
    found = [(prefix, "record")]
    for index, ((_, kind), item) in enumerate(zip(record_type.SCHEMA, plain)):
        found.extend(field_paths(kind, item, prefix + (index,)))
    return found


def field_paths(kind: Any, item: Any, path: tuple) -> list[tuple[tuple, str]]:
    if isinstance(kind, Nested):
        return paths_of(kind.record_type, item, path)
    if isinstance(kind, ListOf):
        found = [(path, "list")]
        for index, element in enumerate(item):
            found.extend(field_paths(kind.item, element, path + (index,)))
        return found
    return [(path, "leaf")]


def every_path(message) -> list[tuple[tuple, str]]:
    """Paths into ``wire_of(message)``: the message's own fields start at index 1, after the tag."""
    return [((0,), "tag")] + [(tuple((path[0] + 1,) + path[1:]) if path else (), what)
                              for path, what in paths_of(type(message), record_to_wire(message), ())]


def node_at(plain: list, path: tuple) -> Any:
    for index in path:
        plain = plain[index]
    return plain


def replaced(plain: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    copy = list(plain)
    copy[path[0]] = replaced(plain[path[0]], path[1:], new)
    return copy


WRONG_VALUES = [7, -1, 2**64 - 1, "x", b"x", [], [1], 1.5, None, True, False]


@FUZZ
@given(messages, st.data())
def test_a_wrong_type_in_any_field_is_rejected(message, data) -> None:
    plain = wire_of(message)
    path, _ = data.draw(st.sampled_from([p for p in every_path(message) if p[0]]))
    original = node_at(plain, path)
    candidates = [value for value in WRONG_VALUES if type(value) is not type(original)]
    wrong = data.draw(st.sampled_from(candidates))
    error = assert_rejected(msgpack.packb(replaced(plain, path, wrong), use_bin_type=True))
    assert error.reason in {"schema", "unknown-type"}


@pytest.mark.parametrize("message_type", SIGNED_MESSAGE_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_field_of_every_type_rejects_every_wrong_type(message_type, data) -> None:
    message = data.draw(STRATEGY_BY_TYPE[message_type])
    plain = wire_of(message)
    for path, _ in every_path(message):
        if not path:
            continue
        original = node_at(plain, path)
        for wrong in WRONG_VALUES:
            if type(wrong) is not type(original):
                assert_rejected(msgpack.packb(replaced(plain, path, wrong), use_bin_type=True))


@FUZZ
@given(messages, st.data())
def test_extra_or_missing_fields_in_any_record_are_rejected(message, data) -> None:
    plain = wire_of(message)
    records = [path for path, what in every_path(message) if what == "record"]
    path = data.draw(st.sampled_from(records))
    record = node_at(plain, path)
    if data.draw(st.booleans()):
        changed = record + [data.draw(st.sampled_from([0, b"", "", []]))]
    else:
        # Cutting a message's tag leaves its fields, which can be a well-formed message of another type
        # (ViewChange(new_view=9, ...) without its tag reads as a NewView): cut a field, never the tag.
        first_field = 1 if path == () else 0
        cut = data.draw(st.integers(min_value=first_field, max_value=len(record) - 1))
        changed = record[:cut] + record[cut + 1:]
    if path == ():
        changed = [plain[0], *changed[1:]] if changed and changed[0] == plain[0] else changed
    error = assert_rejected(msgpack.packb(replaced(plain, path, changed), use_bin_type=True))
    assert error.reason in {"schema", "unknown-type", "malformed"}


@pytest.mark.parametrize("tag", [0, 64, 99, -1, 2**64 - 1, "1", b"\x01", 1.0, None, True, [1]])
def test_unknown_or_mistyped_tag_is_rejected(tag, kit) -> None:
    plain = wire_of(kit.request())
    error = assert_rejected(msgpack.packb([tag, *plain[1:]], use_bin_type=True))
    assert error.reason == "unknown-type"


@pytest.mark.parametrize("data", [
    msgpack.packb({}), msgpack.packb({1: 2}), msgpack.packb([4, {}]), msgpack.packb(1.5),
    msgpack.packb([5, 1.0, 1, bytes(32), 1, bytes(64)], use_bin_type=True),
    msgpack.packb(msgpack.ExtType(1, b"x")), b"\x92\x04\xd6\xff" + bytes(4),  # a timestamp ext inside an array
    msgpack.packb([]), msgpack.packb(None), msgpack.packb(7), msgpack.packb("text"), msgpack.packb(b"raw"),
    b"\xc1", b"", b"\x91", b"\x92\x04", msgpack.packb([4]) + b"\x00",  # reserved byte, empty, short, trailing data
], ids=lambda data: data.hex()[:24])
def test_maps_floats_ext_and_scalars_are_rejected(data: bytes) -> None:
    assert_rejected(data)


# A msgpack writer that may pick any legal width, to build non-canonical encodings of valid data.
class RawStr(bytes):
    """A str whose payload bytes are written as given (possibly invalid UTF-8)."""


def pack_any_width(value: Any, choose: random.Random) -> bytes:
    if isinstance(value, bool) or value is None:
        return msgpack.packb(value)
    if isinstance(value, int):
        assert value >= 0
        options = [(0x7F, lambda: struct.pack("B", value)), (0xFF, lambda: b"\xcc" + struct.pack(">B", value)),
                   (0xFFFF, lambda: b"\xcd" + struct.pack(">H", value)),
                   (0xFFFFFFFF, lambda: b"\xce" + struct.pack(">I", value)),
                   (2**64 - 1, lambda: b"\xcf" + struct.pack(">Q", value))]
        return choose.choice([write for limit, write in options if value <= limit])()
    if isinstance(value, list):
        body = b"".join(pack_any_width(item, choose) for item in value)
        headers = [(15, bytes([0x90 | len(value)])), (0xFFFF, b"\xdc" + struct.pack(">H", len(value))),
                   (0xFFFFFFFF, b"\xdd" + struct.pack(">I", len(value)))]
        return choose.choice([header for limit, header in headers if len(value) <= limit]) + body
    if isinstance(value, RawStr) or isinstance(value, str):
        payload = bytes(value) if isinstance(value, RawStr) else value.encode()
        headers = [(31, bytes([0xA0 | len(payload)])), (0xFF, b"\xd9" + struct.pack(">B", len(payload))),
                   (0xFFFF, b"\xda" + struct.pack(">H", len(payload))),
                   (0xFFFFFFFF, b"\xdb" + struct.pack(">I", len(payload)))]
        return choose.choice([header for limit, header in headers if len(payload) <= limit]) + payload
    if isinstance(value, bytes):
        headers = [(0xFF, b"\xc4" + struct.pack(">B", len(value))), (0xFFFF, b"\xc5" + struct.pack(">H", len(value))),
                   (0xFFFFFFFF, b"\xc6" + struct.pack(">I", len(value)))]
        return choose.choice([header for limit, header in headers if len(value) <= limit]) + value
    raise AssertionError(type(value))


def test_the_any_width_writer_agrees_with_msgpack_when_it_picks_the_smallest(kit) -> None:
    class Smallest(random.Random):
        def choice(self, options):
            return options[0]
    message = kit.preprepare(1, (kit.entry(kit.request()),))
    assert pack_any_width(wire_of(message), Smallest()) == encode(message)


@FUZZ
@given(messages, st.integers(min_value=0, max_value=2**32))
def test_non_canonical_widths_are_rejected(message, seed: int) -> None:
    data = pack_any_width(wire_of(message), random.Random(seed))
    if data == encode(message):
        assert decode(data) == message
    else:
        assert msgpack.unpackb(data, raw=False) == msgpack.unpackb(encode(message), raw=False)
        assert assert_rejected(data).reason == "non-canonical"


@pytest.mark.parametrize("field_index", [1, 4])  # Request.client_id and Request.action are strings.
@pytest.mark.parametrize("payload", [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"ok\xf0\x28\x8c\xbc"])
def test_invalid_utf8_in_a_string_field_is_rejected(kit, field_index: int, payload: bytes) -> None:
    plain = wire_of(kit.request())
    plain[field_index] = RawStr(payload)
    error = assert_rejected(pack_any_width(plain, random.Random(0)))
    assert error.reason == "malformed"


def nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\x01"


def vote_with_decision(raw_decision: bytes) -> bytes:
    """A Vote whose decision field holds ``raw_decision`` (already msgpack-encoded)."""
    return b"\x96\x02\xc4\x20" + bytes(32) + raw_decision + b"\xa1r\x00\xc4\x40" + bytes(64)


@pytest.mark.parametrize("depth", [10, 500, 1_100, 100_000])
def test_deeply_nested_arrays_are_rejected(depth: int) -> None:
    assert_rejected(nested(depth))  # In the tag position.
    assert_rejected(b"\x92\x04" + nested(depth))  # As a record field.
    assert_rejected(vote_with_decision(nested(depth)))  # As an enum value.


@pytest.mark.parametrize("position", ["tag", "enum"])
def test_nesting_just_below_the_msgpack_depth_limit_is_rejected(position: str) -> None:
    data = nested(1_000) if position == "tag" else vote_with_decision(nested(1_000))
    assert_rejected(data)


def test_oversized_input_is_rejected_before_parsing(kit) -> None:
    encoded = encode(kit.request())
    assert decode(encoded, max_bytes=len(encoded)) == kit.request()
    assert assert_rejected(encoded, max_bytes=len(encoded) - 1).reason == "oversized"
    huge = b"\xc6" + struct.pack(">I", MAX_WIRE_BYTES) + bytes(MAX_WIRE_BYTES)
    assert assert_rejected(huge).reason == "oversized"
    # A header that promises more than the limit, in a small message, is refused by the unpacker.
    liar = b"\x92\x02\xdd" + struct.pack(">I", 2**32 - 1)
    assert_rejected(liar)


@pytest.mark.parametrize("value", [bytearray(b"\x90"), memoryview(b"\x90"), "text", None, 5, [1]])
def test_non_bytes_input_is_rejected(value) -> None:
    assert assert_rejected(value).reason == "malformed"


def test_field_limits_are_enforced(kit) -> None:
    plain = wire_of(kit.request())
    too_long_id = replaced(plain, (1,), "x" * (MAX_ID_BYTES + 1))
    assert_rejected(msgpack.packb(too_long_id, use_bin_type=True))
    for bad_action in ["[]", "not json", "1", '"text"', ""]:
        assert_rejected(msgpack.packb(replaced(plain, (4,), bad_action), use_bin_type=True))
    assert_rejected(msgpack.packb(replaced(plain, (2,), 0), use_bin_type=True))  # request numbers start at 1
    assert_rejected(msgpack.packb(replaced(plain, (3,), "LOW"), use_bin_type=True))  # risk values are lower case
    assert_rejected(msgpack.packb(replaced(plain, (1,), " alice"), use_bin_type=True))
    assert_rejected(msgpack.packb(replaced(plain, (1,), "al\nice"), use_bin_type=True))
    assert_rejected(msgpack.packb(replaced(plain, (6,), bytes(63)), use_bin_type=True))
    assert_rejected(msgpack.packb(replaced(plain, (5,), 2**63), use_bin_type=True))


def test_an_action_deeper_than_the_protocol_maximum_is_rejected_before_any_policy_sees_it(kit) -> None:
    for depth, accepted in ((31, True), (32, False), (10_000, False)):  # Plus one level for the object itself.
        action = '{"a":' + "[" * depth + "]" * depth + "}"
        data = msgpack.packb(replaced(wire_of(kit.request()), (4,), action), use_bin_type=True)
        if accepted:
            assert decode(data).action == action
        else:
            error = assert_rejected(data)
            assert error.reason == "schema" and "nests deeper than 32 levels" in error.detail, error


@pytest.mark.parametrize("action", [
    '{"a":' + "[" * 10_000 + "]" * 10_000 + "}",  # json.loads raises RecursionError
    '{"a":' + "1" * 5_000 + "}",  # int digit limit: a plain ValueError without .msg
], ids=["deep-json", "huge-json-int"])
def test_hostile_json_actions_are_rejected_as_schema_errors(kit, action: str) -> None:
    plain = replaced(wire_of(kit.request()), (4,), action)
    assert assert_rejected(msgpack.packb(plain, use_bin_type=True)).reason == "schema"


# ---------------------------------------------------------------- a replica fed garbage does not change

@pytest.fixture(scope="module")
def busy_net(kit, make_net):
    """Four replicas that already ordered a few requests, so there is state to disturb."""
    net = make_net(kit)
    for number in range(1, 4):
        net.submit(kit.request("alice", number))
        net.deliver_all()
    pending = kit.request("bob", 1)
    net.submit(pending, to=(1, 2))  # Left pending: only two replicas heard it.
    net.deliver_all()
    assert all(replica.last_executed == 3 for replica in net.replicas)
    return net


@pytest.fixture(scope="module")
def traffic(busy_net) -> list[bytes]:
    """Encodings of every message the cluster exchanged, as raw material for mutation."""
    seen = [encode(args[0]) for _, method, args in busy_net.inputs if method in ("step", "submit")]
    return list(dict.fromkeys(seen))


class GarbageTarget:
    """One replica under attack, rebuilt from its recorded inputs only when an input was accepted."""

    def __init__(self, net, replica_id: int) -> None:
        self.net, self.replica_id = net, replica_id
        self.replica = net.replay(replica_id)

    def feed(self, data: bytes, snapshot) -> None:
        """Drive it exactly as a runtime would: decode, then step; a rejection must change nothing."""
        before = snapshot(self.replica)
        try:
            message = decode(data)
        except RemoteProtocolError as error:
            assert error.reason in DECODE_REASONS
            assert snapshot(self.replica) == before
            return
        ready = self.replica.submit(message) if isinstance(message, Request) else self.replica.step(message)
        if ready.rejected:
            assert len(ready.rejected) == 1
            assert ready.persist == ready.messages_to_replicas == ready.to_clients == ready.finalized == ready.evaluate == ()
            after = snapshot(self.replica)
            assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after.get(k)}
        else:
            self.replica = self.net.replay(self.replica_id)


@pytest.fixture(scope="module")
def garbage_target(busy_net) -> GarbageTarget:
    return GarbageTarget(busy_net, 1)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_replica_state_survives_mutated_traffic(garbage_target, traffic, snapshot, data) -> None:
    original = bytearray(data.draw(st.sampled_from(traffic)))
    mutation = data.draw(st.sampled_from(["flip", "truncate", "append", "splice"]))
    if mutation == "flip":
        position = data.draw(st.integers(min_value=0, max_value=len(original) - 1))
        original[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    elif mutation == "truncate":
        del original[data.draw(st.integers(min_value=0, max_value=len(original) - 1)):]
    elif mutation == "append":
        original += data.draw(st.binary(min_size=1, max_size=8))
    else:
        other = data.draw(st.sampled_from(traffic))
        cut = data.draw(st.integers(min_value=1, max_value=min(len(original), len(other)) - 1))
        original = original[:cut] + other[cut:]
    garbage_target.feed(bytes(original), snapshot)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=200), messages.map(encode)))
def test_replica_state_survives_random_bytes_and_unsigned_messages(garbage_target, snapshot, data: bytes) -> None:
    garbage_target.feed(data, snapshot)


def test_every_bit_flip_of_a_preprepare_leaves_the_replica_unchanged(busy_net, garbage_target, snapshot, kit) -> None:
    # A fresh pre-prepare the target has not seen: flips of it must all be refused without effect.
    request = kit.request("alice", 9)
    preprepare = kit.preprepare(busy_net.replicas[1].next_seq, (kit.entry(request),))
    encoded = encode(preprepare)
    for position in range(len(encoded)):
        for mask in (0x01, 0x80):
            flipped = bytearray(encoded)
            flipped[position] ^= mask
            garbage_target.feed(bytes(flipped), snapshot)
