"""The public checker: each shipped model's steps, the EDN / JSON Lines / Jepsen-log readers (and their line-
numbered errors), ``python -m harness check`` exit codes and HTML report, the counterexample on a known invalid
history naming an operation that really cannot be placed, limits ending as unknown, and the published histories
in ../shared/histories (when present) agreeing with their recorded answers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from harness import Event as ClusterEvent, EventType, History, Validity, check_keys
from harness.__main__ import main as harness_main
from harness.linearizability import (CASRegister, Event, HistoryInputError, KeyValue, Keyword, MultiRegister, Mutex, Outcome,
                                     Register, Set, Status, VerdictRegister, brute_force_linearizable, check,
                                     pair_events, read_text)
from harness.linearizability._checker import relaxed

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "harness" / "examples"
PUBLISHED = ROOT.parent / "shared" / "histories"


def ops_of(*events: Event):
    return pair_events(list(events))


def call(process, f, value=None, key=None):
    return Event(process, "invoke", f, value, key)


def done(process, f, value=None, key=None, kind="ok"):
    return Event(process, kind, f, value, key)


# ----------------------------------------------------------------- models


def test_each_model_accepts_a_legal_sequence_and_rejects_an_impossible_result():
    cases = [
        (Register(), [("write", 1, 1), ("read", None, 1)], ("read", None, 0)),
        (CASRegister(), [("write", 1, 1), ("cas", [1, 2], [1, 2]), ("cas", [1, 3], False), ("read", None, 2)],
         ("cas", [1, 4], [1, 4])),
        (Set(), [("add", 1, 1), ("add", 2, 2), ("read", None, [2, 1])], ("read", None, [1])),
        (Mutex(), [("acquire", None, None), ("release", None, None), ("acquire", None, None)],
         ("acquire", None, None)),
    ]
    for model, legal, impossible in cases:
        events = []
        for process, (f, given, result) in enumerate(legal + [impossible]):
            events += [call(process, f, given), done(process, f, result)]
        assert check(ops_of(*events[:-2]), model).ok, model.name
        assert check(ops_of(*events), model).outcome is Outcome.ILLEGAL, model.name


def test_the_key_value_model_checks_each_key_alone():
    events = [call(0, "put", "a", "x"), done(0, "put", "a", "x"), call(1, "append", "b", "x"),
              done(1, "append", "b", "x"), call(2, "get", None, "y"), done(2, "get", "", "y"),
              call(3, "get", None, "x"), done(3, "get", "ab", "x")]
    result = check(ops_of(*events), KeyValue())
    assert result.ok and result.partitions == 2
    events[-1] = done(3, "get", "ba", "x")
    failed = check(ops_of(*events), KeyValue())
    assert failed.outcome is Outcome.ILLEGAL and failed.failure.partition == "x"


def test_the_verdict_register_lets_an_indeterminate_execute_fix_an_unseen_value():
    key = ("alice", 1)
    crashed = [call(0, "execute", None, key), done(0, "execute", None, key, kind="info")]
    later = [call(1, "execute", None, key), done(1, "execute", ["DENY", 4], key)]
    assert check(ops_of(*crashed, *later), VerdictRegister()).ok
    other = [call(2, "execute", None, key), done(2, "execute", ["ALLOW", 4], key)]
    assert check(ops_of(*crashed, *later, *other), VerdictRegister()).outcome is Outcome.ILLEGAL


def test_the_multi_register_reads_knossos_transactions():
    history = """[{:process 0, :type :invoke, :f :txn, :value [[:write :x 1] [:write :y 2]]}
 {:process 0, :type :ok, :f :txn, :value [[:write :x 1] [:write :y 2]]}
 {:process 1, :type :invoke, :f :txn, :value [[:read :x nil] [:read :y nil]]}
 {:process 1, :type :ok, :f :txn, :value [[:read :x 1] [:read :y VALUE]]}]"""
    assert check(read_text(history.replace("VALUE", "2"), "edn"), MultiRegister()).ok
    assert check(read_text(history.replace("VALUE", "nil"), "edn"), MultiRegister()).outcome is Outcome.ILLEGAL


class Counter:
    """A user's own model with only ``initial`` and ``step``: ``incr`` adds one, ``read`` sees the count."""

    def initial(self):
        return 0

    def step(self, state, op):
        if op.f == "incr":
            return [state + 1]
        return [state] if op.status is Status.INFO or op.output == state else []


def test_a_model_with_only_initial_and_step_works():
    events = [call(0, "incr"), call(1, "incr"), done(0, "incr"), call(2, "read"), done(2, "read", 1),
              done(1, "incr"), call(3, "read"), done(3, "read", 2)]
    assert check(ops_of(*events), Counter()).ok
    events[-1] = done(3, "read", 1)
    result = check(ops_of(*events), Counter())
    assert result.outcome is Outcome.ILLEGAL and result.failure.unplaceable.call_line is None
    assert result.failure.unplaceable.f == "read" and result.failure.unplaceable.output == 1


def test_a_failed_operation_took_no_effect():
    events = [call(0, "write", 5), done(0, "write", 5, kind="fail"), call(1, "read"), done(1, "read", None)]
    assert check(ops_of(*events), Register()).ok


# ----------------------------------------------------------------- readers and bad input


def test_jsonl_edn_and_jepsen_log_read_to_the_same_operations():
    jsonl = ('{"process": 0, "type": "invoke", "f": "cas", "value": [1, 2]}\n'
             '{"process": 0, "type": "ok", "f": "cas", "value": [1, 2]}\n'
             '{"process": 1, "type": "invoke", "f": "write", "value": 3}\n')
    edn = """; a comment
[{:process 0, :type :invoke, :f :cas, :value [1 2]} {:process :nemesis, :type :info, :f :kill}
 {:process 0 :type :ok :f :cas :value [1 2] :time 5}
 #jepsen.history.Op{:process 1, :type :invoke, :f :write, :value 3}]"""
    log = ("INFO  jepsen.util - 0\t:invoke\t:cas\t[1 2]\nINFO  jepsen.util - 0\t:ok\t:cas\t[1 2]\n"
           "INFO  jepsen.util - 1\t:invoke\t:write\t3\n")
    shapes = []
    for text, format in ((jsonl, "jsonl"), (edn, "edn"), (log, "jepsen-log")):
        ops = read_text(text, format)
        shapes.append([(op.process, op.f, op.input, op.output, op.status) for op in ops])
    assert shapes[0] == shapes[1] == shapes[2] == [(0, "cas", (1, 2), (1, 2), Status.OK),
                                                   (1, "write", 3, None, Status.INFO)]


def test_a_jepsen_log_fail_cas_is_an_observed_failed_comparison():
    log = "INFO jepsen.util - 0 :invoke :cas [1 2]\nINFO jepsen.util - 0 :fail :cas [1 2]\n"
    (op,) = read_text(log, "jepsen-log")
    assert op.status is Status.OK and op.output is False
    assert check([op], CASRegister()).ok  # The register holds nil, not 1: the comparison had to fail.


def test_edn_reads_keywords_sets_strings_and_numbers():
    (op,) = read_text('{:process p1, :type :invoke, :f :add, :value #{1 2}}\n'
                      '{:process p1, :type :ok, :f :add, :value [:a "q\\"x" 2.5 -3N nil true]}', "edn")
    assert op.process == "p1" and op.input == frozenset({1, 2})
    assert op.output == (Keyword("a"), 'q"x', 2.5, -3, None, True)


def test_edn_discards_tags_and_characters():
    text = '#_ {:ignored 1} [{:process 0 :type :invoke :f :add :value \\a :time 7 :wall #inst "2026-12-07"}]'
    (op,) = read_text(text, "edn")
    assert (op.input, op.call_time, op.status) == ("a", 7, Status.INFO)
    with pytest.raises(HistoryInputError, match="time must be a number"):
        read_text('[{:process 0 :type :invoke :f :add :time #inst "2026-12-07"}]', "edn")


@pytest.mark.parametrize("text, format, line, reason", [
    ('{"process": 0, "type": "invoke", "f": "read"}\nnot json\n', "jsonl", 2, "not JSON"),
    ('{"process": 0, "type": "ok", "f": "read", "value": 1}\n', "jsonl", 1, "no open invocation"),
    ('{"process": 0, "type": "invoke", "f": "read"}\n{"process": 0, "type": "invoke", "f": "read"}\n',
     "jsonl", 2, "invokes again"),
    ('{"process": 0, "type": "sideways", "f": "read"}\n', "jsonl", 1, "event type"),
    ('{"process": 0, "type": "invoke", "f": "read"}\n{"process": 0, "type": "ok", "f": "write"}\n',
     "jsonl", 2, "completes write"),
    ('{"process": 0, "type": "invoke"}\n', "jsonl", 1, "no f"),
    ('[{:process 0, :type :invoke, :f :read}\n {:process 0 :type :ok :f :read :value 1x}]', "edn", 2,
     "not a number"),
    ('[{:process 0, :type :invoke, :f :read}\n {:process 0 :type :ok}]', "edn", 2, "no f"),
    ('[{:process 0, :type :invoke, :f :read}\n', "edn", 1, "to close"),
    ("INFO jepsen.util - 0 :invoke :read nil\nsomething else\n", "jepsen-log", 2, "not a Jepsen log line"),
])
def test_bad_input_names_the_line_and_the_reason(text, format, line, reason):
    with pytest.raises(HistoryInputError) as raised:
        read_text(text, format)
    assert raised.value.line == line and reason in raised.value.reason


def test_an_operation_the_model_does_not_know_is_bad_input_with_its_line():
    ops = read_text('{"process": 0, "type": "invoke", "f": "push", "value": 1}\n', "jsonl")
    with pytest.raises(HistoryInputError) as raised:
        check(ops, Register())
    assert raised.value.line == 1 and "no operation 'push'" in raised.value.reason


# ----------------------------------------------------------------- the counterexample


def test_the_counterexample_names_an_operation_that_really_cannot_be_placed():
    """The example's stale read (line 9) is named; relaxing it makes the conflict linearizable, keeping it not."""
    ops = read_text((EXAMPLES / "cas-register-stale-read.jsonl").read_text(), "jsonl")
    result = check(ops, CASRegister())
    failure = result.failure
    assert result.outcome is Outcome.ILLEGAL and failure.minimal
    assert (failure.unplaceable.f, failure.unplaceable.output, failure.unplaceable.call_line) == ("read", 1, 9)
    assert [op.f for op in failure.longest_prefix[:2]] == ["write", "write"]
    as_checked = [op if op in failure.observed else relaxed(op) if op.status is Status.OK else op
                  for op in failure.sub_history]
    assert not brute_force_linearizable(as_checked, CASRegister())
    without = [relaxed(op) if op is failure.unplaceable else op for op in as_checked]
    assert brute_force_linearizable(without, CASRegister())
    assert not brute_force_linearizable(ops, CASRegister())


def test_limits_end_as_unknown_with_the_prefix_reached():
    events = [call(process, "write", process) for process in range(12)]
    events += [done(process, "write", process) for process in range(12)]
    events += [call(99, "read"), done(99, "read", 42)]
    result = check(ops_of(*events), Register(), max_states=100)
    assert result.outcome is Outcome.UNKNOWN and result.states > 100 and "passed 100 states" in result.reasons[0]
    assert len(result.partial[None]) >= 1


# ----------------------------------------------------------------- the command line


def run_check(*arguments: str) -> tuple[int, str]:
    out = io.StringIO()
    return harness_main(["check", *arguments], out), out.getvalue()


def test_the_command_exits_0_1_3_and_writes_a_report(tmp_path: Path):
    assert run_check(str(EXAMPLES / "cas-register-ok.jsonl"), "--model", "cas-register")[0] == 0
    report = tmp_path / "report.html"
    status, printed = run_check(str(EXAMPLES / "cas-register-stale-read.jsonl"), "--model", "cas-register",
                                "--report", str(report))
    assert status == 1 and "read -> 1 (line 9) cannot be placed" in printed
    page = report.read_text()
    assert "<svg" in page and "cannot be placed" in page and "read -&gt; 1 (line 9)" in page
    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps({"process": p, "type": "invoke", "f": "write", "value": p}) + "\n"
                            for p in range(12)) + json.dumps({"process": 99, "type": "invoke", "f": "read"}) + "\n"
                    + json.dumps({"process": 99, "type": "ok", "f": "read", "value": 42}) + "\n")
    status, printed = run_check(str(many), "--model", "register", "--max-states", "50", "--report",
                                str(tmp_path / "unknown.html"))
    assert status == 3 and "gave up" in printed and "UNKNOWN" in (tmp_path / "unknown.html").read_text()


def test_the_shipped_example_report_is_what_the_command_writes_today(tmp_path: Path):
    report = tmp_path / "report.html"
    run_check(str(EXAMPLES / "cas-register-stale-read.jsonl"), "--model", "cas-register", "--report", str(report))
    assert report.read_text() == (EXAMPLES / "cas-register-stale-read.html").read_text()


def test_the_command_exits_2_on_bad_input_naming_the_line(tmp_path: Path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"process": 0, "type": "invoke", "f": "read"}\n{"process": 0, "type": "ok", "f": "read",\n')
    assert run_check(str(bad), "--model", "register")[0] == 2
    assert "line 2: not JSON" in capsys.readouterr().err
    assert run_check(str(tmp_path / "absent.jsonl"), "--model", "register")[0] == 2


def test_the_harness_own_history_file_is_read_as_verdict_operations(tmp_path: Path):
    key = ("alice", 1)
    events = [ClusterEvent(EventType.INVOKE, 0, "alice", *key, 0), ClusterEvent(EventType.INVOKE, 1, "alice", *key, 1),
              ClusterEvent(EventType.OK, 1, "alice", *key, 5, verdict="DENY", seq=3, certificate="c")]
    path = tmp_path / "history.jsonl"
    path.write_text(History(events).to_jsonl())
    assert run_check(str(path), "--model", "verdict")[0] == 0


@pytest.mark.parametrize("position", range(5))
def test_check_keys_takes_an_invocation_left_open_anywhere(position: int):
    """The old checker raised AssertionError here; an open invocation is indeterminate by construction."""
    key = ("alice", 1)
    events = [ClusterEvent(EventType.INVOKE, 0, "alice", *key, 0),
              ClusterEvent(EventType.OK, 0, "alice", *key, 1, verdict="ALLOW", seq=1, certificate="c"),
              ClusterEvent(EventType.INVOKE, 1, "alice", *key, 2),
              ClusterEvent(EventType.OK, 1, "alice", *key, 3, verdict="ALLOW", seq=1, certificate="c")]
    events.insert(position, ClusterEvent(EventType.INVOKE, 9, "alice", *key, events[max(0, position - 1)].time_ms))
    assert check_keys(History(events)).validity is Validity.VALID


# ----------------------------------------------------------------- published histories


def _published(limit_bytes: int) -> list[tuple[str, str]]:
    if not (PUBLISHED / "expected.tsv").exists():
        pytest.skip(f"no published histories at {PUBLISHED}")
    rows = [line.split("\t") for line in (PUBLISHED / "expected.tsv").read_text().splitlines()[1:] if line]
    return [(name, answer) for name, answer in rows if (PUBLISHED / name).stat().st_size <= limit_bytes]


def test_small_published_histories_agree_with_their_recorded_answers():
    """The small files of each suite (the bench script checks them all)."""
    checked = 0
    for name, answer in _published(limit_bytes=12_000):
        if name.startswith("porcupine/jepsen/"):
            continue  # Every etcd history is about as large; the bench script checks them.
        model = KeyValue() if "/kv/" in name else CASRegister()
        ops = read_text((PUBLISHED / name).read_text(), "jepsen-log" if name.endswith(".log") else "edn")
        result = check(ops, model, max_states=200_000)
        assert result.outcome is (Outcome.OK if answer == "linearizable" else Outcome.ILLEGAL), name
        checked += 1
    assert checked >= 10
