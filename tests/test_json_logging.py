"""Structured logs: every record becomes exactly one JSON object per line with ts, level, logger, message and replica_id plus its extra fields, tracebacks and odd values included, and the runtime's own warnings carry peer and reason fields."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime, timezone

import pytest
import trio

from bft.policies import ApproveEverything
from bft.runtime import configure_json_logging, open_local_cluster


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines_of(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_is_one_json_line_with_the_standard_fields_and_its_extras(restore_root_logging):
    stream = io.StringIO()
    configure_json_logging(stream=stream, level=logging.INFO, replica_id=2)
    logging.getLogger("bft.runtime").warning("link to %s dropped", "replica 1",
                                             extra={"peer": "replica 1", "reason": "flood"})
    logging.getLogger("bft.runtime").debug("below the level: not written")
    [record] = lines_of(stream)
    assert set(record) == {"ts", "level", "logger", "message", "replica_id", "peer", "reason"}
    assert (record["level"], record["logger"], record["message"]) == ("WARNING", "bft.runtime", "link to replica 1 dropped")
    assert (record["replica_id"], record["peer"], record["reason"]) == (2, "replica 1", "flood")
    stamp = datetime.fromisoformat(record["ts"])
    assert stamp.tzinfo is not None and abs((datetime.now(timezone.utc) - stamp).total_seconds()) < 60


def test_tracebacks_newlines_and_odd_values_stay_on_one_line(restore_root_logging):
    stream = io.StringIO()
    configure_json_logging(stream=stream, level="DEBUG")
    logger = logging.getLogger("bft.test")
    try:
        raise ValueError("broken\ninvariant")
    except ValueError:
        logger.exception("first line\nsecond line", extra={"payload": b"\x00\xff", "replica_id": 5})
    assert len(stream.getvalue().splitlines()) == 1
    [record] = lines_of(stream)
    assert record["message"] == "first line\nsecond line"
    assert "ValueError: broken\ninvariant" in record["exception"] and record["level"] == "ERROR"
    assert record["payload"] == str(b"\x00\xff")
    assert record["replica_id"] == 5, "a record's own replica_id wins over the process default (None here)"


def test_configuring_twice_replaces_the_handler_instead_of_doubling_lines(restore_root_logging):
    first, second = io.StringIO(), io.StringIO()
    configure_json_logging(stream=first)
    configure_json_logging(stream=second, replica_id=0)
    logging.getLogger("bft").info("once")
    assert first.getvalue() == "" and [r["message"] for r in lines_of(second)] == ["once"]


async def test_the_runtime_logs_a_dropped_connection_with_peer_and_reason(restore_root_logging):
    stream = io.StringIO()
    configure_json_logging(stream=stream, level=logging.INFO)
    with trio.fail_after(20):
        async with open_local_cluster([ApproveEverything() for _ in range(4)]) as cluster:
            garbage = await trio.open_tcp_stream(*cluster.addresses[1])
            await garbage.send_all(b"\xff" * 64)
            await garbage.aclose()
            with trio.fail_after(5):
                while cluster.nodes[1].counters["connection-refused:oversized-frame"] < 1:
                    await trio.sleep(0.01)
    records = lines_of(stream)
    refused = [r for r in records if r.get("reason") == "oversized-frame"]
    assert len(refused) == 1, records
    assert refused[0]["replica_id"] == 1 and refused[0]["level"] == "WARNING"
    assert refused[0]["peer"].startswith("127.0.0.1:") and refused[0]["event"] == "connection-refused"
    assert any(r["message"] == "replica 0 listening on port %d" % cluster.nodes[0].port for r in records)
