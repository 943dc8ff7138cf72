"""The operator command line: init writes owner-only keys and refuses to overwrite; submit, verify, status and audit work against a running cluster with the documented exit codes (0 ALLOW, 3 DENY, 4 REFUSED); and every mistake a user can make ends in one sentence on stderr and a non-zero exit code, never a traceback."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
import trio

from bft.cluster import open_store, prepare_launch, serve_replica
from bft.client import BlockingClient
from bft.core import ActionShapeError
from bft.cli import EXIT_DENY, EXIT_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, main

BENIGN = json.dumps({"tool": "read_file", "path": "/workspace/README.md"})
DANGEROUS = json.dumps({"tool": "shell", "command": "rm -rf / --no-preserve-root"})


class InProcessCluster:
    """Every replica of a cluster file served from one background trio thread (real sockets, real SQLite)."""

    def __init__(self, cluster_path: Path) -> None:
        self.cluster_path = cluster_path
        self._ready = threading.Event()
        self._stores: list = []
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as error:  # Shown by __enter__ instead of a silent wait.
            self._failure = error
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._cancel_scope = nursery.cancel_scope
            replica_count = len(prepare_launch(self.cluster_path, 0).cluster.replicas)
            for replica_id in range(replica_count):
                launch = prepare_launch(self.cluster_path, replica_id)
                self._stores.append(open_store(launch))
                await nursery.start(functools.partial(serve_replica, launch, self._stores[-1], stop_on_signals=False))
            self._ready.set()

    def __enter__(self) -> "InProcessCluster":
        self._thread.start()
        assert self._ready.wait(20), "the replicas did not start"
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exception_info) -> None:
        trio.from_thread.run_sync(self._cancel_scope.cancel, trio_token=self._token)
        self._thread.join(20)
        for store in self._stores:
            store.close()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(argument) for argument in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_sentence_error(capsys, expected_code: int, *argv: str, contains: str = "") -> str:
    code, _, err = run(capsys, *argv)
    assert code == expected_code, (argv, code, err)
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and contains in err, err
    return err


@pytest.fixture(scope="module")
def cluster_directory(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("cli") / "cluster"
    assert main(["init", str(directory), "--replicas", "4", "--clients", "2"]) == EXIT_OK
    return directory


# ---------------------------------------------------------------------------- init

def test_init_writes_owner_only_keys_and_a_loadable_cluster_file_and_never_overwrites(tmp_path, capsys):
    directory = tmp_path / "new"
    code, out, err = run(capsys, "init", directory, "--replicas", "4", "--clients", "3",
                         "--policies", "deny-list,approve-everything")
    assert code == EXIT_OK and err == ""
    assert "4 replicas (tolerates 1 faulty), 3 clients" in out and f"bft up {directory}" in out
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "keys").stat().st_mode) == 0o700
    keys = sorted((directory / "keys").iterdir())
    assert len(keys) == 4 + 3 + 1 and all(stat.S_IMODE(key.stat().st_mode) == 0o600 for key in keys)
    text = (directory / "cluster.toml").read_text()
    assert text.count('policy = "approve-everything"') == 2
    assert all(key.read_text().strip() not in text for key in keys), "a private key leaked into the cluster file"
    assert_one_sentence_error(capsys, EXIT_USAGE, "init", directory, "--replicas", "4", contains="already exists")
    assert (directory / "cluster.toml").read_text() == text


@pytest.mark.parametrize("argv, contains", [
    (("init", "{dir}", "--replicas", "0"), "outside [1, 64]"),
    (("init", "{dir}", "--replicas", "four"), "is not a whole number"),
    (("init", "{dir}"), "--replicas"),
    (("init", "{dir}", "--replicas", "4", "--policies", "deny-list,yes-man"), "unknown policy 'yes-man'"),
    (("init", "{dir}", "--replicas", "4", "--policies", "deny-list,,rate"), "comma-separated"),
    (("init", "{dir}", "--replicas", "4", "--clients", "-1"), "outside [0, 64]"),
])
def test_init_mistakes_are_one_sentence(argv, contains, tmp_path, capsys):
    arguments = [argument.format(dir=tmp_path / "c") for argument in argv]
    assert_one_sentence_error(capsys, EXIT_USAGE, *arguments, contains=contains)
    assert not (tmp_path / "c" / "cluster.toml").exists()


def test_init_into_an_unwritable_place_is_one_sentence(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert_one_sentence_error(capsys, EXIT_USAGE, "init", blocker / "cluster", "--replicas", "4",
                              contains="cannot create the cluster directory")


# ---------------------------------------------------------------------------- user mistakes

MISTAKES = [
    (("--no-such-flag",), "unrecognized arguments"),
    (("frobnicate",), "invalid choice"),
    (("submit", "--config", "{missing}", "--client", "client-0", "--risk", "low", "--action", "{{}}"),
     "the cluster file does not exist"),
    (("submit", "--config", "{config}", "--client", "mallory", "--risk", "low", "--action", "{{}}"),
     "there is no client 'mallory'"),
    (("submit", "--config", "{config}", "--client", "client-0", "--risk", "extreme", "--action", "{{}}"),
     "invalid choice: 'extreme'"),
    (("submit", "--config", "{config}", "--client", "client-0", "--risk", "low", "--action", "{{not json"),
     "--action is not valid JSON"),
    (("submit", "--config", "{config}", "--client", "client-0", "--risk", "low", "--action", "[1, 2]"),
     "must be a JSON object"),
    (("submit", "--config", "{config}", "--client", "client-0", "--risk", "low", "--action", "@{missing}"),
     "cannot read the action file"),
    (("submit", "--config", "{config}", "--client", "client-0", "--risk", "low", "--action", "{{}}",
      "--timeout-ms", "0"), "outside [1,"),
    (("submit", "--config", "{config}", "--client", "client-0", "--risk", "low", "--action", "{{}}",
      "--key-file", "{missing}"), "the key file does not exist"),
    (("verify", "{missing}", "--config", "{config}"), "cannot read"),
    (("verify", "{config}", "--config", "{missing}"), "the cluster file does not exist"),
    (("status", "--config", "{missing}"), "the cluster file does not exist"),
    (("status",), "--config"),
    (("audit",), "choose an action"),
    (("audit", "verify", "--db", "{missing}"), "is not a file"),
    (("audit", "verify", "--db", "{config}", "--expected-head", "x"), "--expected-head must be POSITION:HEX"),
    (("replica", "--config", "{config}", "--id", "9"), "there is no replica 9"),
    (("replica", "--config", "{config}", "--id", "0", "--peer", "1:127.0.0.1:9"), "is not REPLICA=HOST:PORT"),
    (("replica", "--config", "{config}", "--id", "0", "--peer", "7=127.0.0.1:9"), "--peer 7 is not another replica"),
    (("replica", "--config", "{config}", "--id", "0", "--listen", "nowhere"), "must be HOST:PORT"),
    (("replica", "--config", "{missing}", "--id", "0"), "the cluster file does not exist"),
    (("up", "{missing}"), "the cluster file does not exist"),
    (("down", "{missing}"), "the cluster file does not exist"),
]


@pytest.mark.parametrize("argv, contains", MISTAKES, ids=[" ".join(argv[:2]) + f" {i}" for i, (argv, _)
                                                           in enumerate(MISTAKES)])
def test_every_user_mistake_is_one_sentence_and_exit_code_2(argv, contains, cluster_directory, tmp_path, capsys):
    arguments = [argument.format(config=cluster_directory / "cluster.toml", missing=tmp_path / "missing")
                 for argument in argv]
    assert_one_sentence_error(capsys, EXIT_USAGE, *arguments, contains=contains)


def test_a_bad_key_file_and_a_broken_cluster_file_are_one_sentence(cluster_directory, tmp_path, capsys):
    loose_key = tmp_path / "loose.key"
    loose_key.write_text((cluster_directory / "keys" / "client-0.key").read_text())
    loose_key.chmod(0o644)
    assert_one_sentence_error(capsys, EXIT_USAGE, "submit", "--config", cluster_directory, "--client", "client-0",
                              "--risk", "low", "--action", BENIGN, "--key-file", loose_key,
                              contains="readable by other users")
    wrong_key = tmp_path / "wrong.key"
    wrong_key.write_text((cluster_directory / "keys" / "client-1.key").read_text())
    wrong_key.chmod(0o600)
    assert_one_sentence_error(capsys, EXIT_USAGE, "submit", "--config", cluster_directory, "--client", "client-0",
                              "--risk", "low", "--action", BENIGN, "--key-file", wrong_key,
                              contains="does not match the public key")
    broken = tmp_path / "broken.toml"
    broken.write_text((cluster_directory / "cluster.toml").read_text().replace("[[replicas]]", "[[replica]]", 1))
    assert_one_sentence_error(capsys, EXIT_USAGE, "status", "--config", broken, contains="unknown key 'replica'")


def test_a_deeply_nested_action_is_one_sentence_from_submit_and_a_clear_error_from_the_library(cluster_directory,
                                                                                               tmp_path, capsys):
    action_file = tmp_path / "deep.json"
    for text in ("[" * 10_000 + "]" * 10_000, '{"a": ' + "[" * 10_000 + "]" * 10_000 + "}"):
        action_file.write_text(text)
        assert_one_sentence_error(capsys, EXIT_USAGE, "submit", "--config", cluster_directory, "--client", "client-0",
                                  "--risk", "low", "--action", f"@{action_file}", "--timeout-ms", "300",
                                  contains="nests deeper than 32 levels")
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    with BlockingClient(cluster_directory / "cluster.toml", "client-0", timeout_ms=300) as client:
        with pytest.raises(ActionShapeError, match="the action nests deeper than 32 levels"):
            client.submit({"a": deep}, "low")


# ---------------------------------------------------------------------------- with nothing running

def test_with_no_replica_running_submit_is_refused_in_time_and_status_says_down(cluster_directory, capsys):
    code, out, err = run(capsys, "submit", "--config", cluster_directory / "cluster.toml", "--client", "client-1",
                         "--risk", "low", "--action", BENIGN, "--timeout-ms", "300")
    assert code == EXIT_REFUSED and err == ""
    result = json.loads(out)
    assert result["status"] == "REFUSED" and result["certificate"] is None
    assert "no verdict certificate within 300 ms" in result["reason"]
    code, out, err = run(capsys, "status", "--config", cluster_directory, "--timeout-ms", "200")
    assert code == EXIT_FAILED and "Traceback" not in err
    assert out.count(" down ") == 4
    code, out, _ = run(capsys, "down", cluster_directory)
    assert code == EXIT_OK and out.count("was not running") == 4


def test_verify_rejects_what_is_not_a_valid_certificate(cluster_directory, tmp_path, capsys):
    cases = {"not-json.json": "{nope", "refused.json": json.dumps({"status": "REFUSED", "certificate": None}),
             "empty.json": "{}", "bad-base64.json": json.dumps({"certificate": "%%%"})}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        err = assert_one_sentence_error(capsys, EXIT_FAILED, "verify", tmp_path / name, "--config", cluster_directory,
                                        contains="invalid: ")
        if name == "refused.json":
            assert "carries no certificate" in err


# ---------------------------------------------------------------------------- against a running cluster

@pytest.mark.slow
def test_submit_verify_status_and_audit_against_a_running_cluster(cluster_directory, tmp_path, capsys):
    config = cluster_directory / "cluster.toml"
    with InProcessCluster(config):
        code, out, err = run(capsys, "submit", "--config", config, "--client", "client-0", "--risk", "low",
                             "--action", BENIGN)
        assert (code, err) == (EXIT_OK, "") and json.loads(out)["status"] == "ALLOW"
        allowed = tmp_path / "allowed.json"
        allowed.write_text(out)
        (tmp_path / "action.json").write_text(DANGEROUS)
        code, out, _ = run(capsys, "submit", "--config", config, "--client", "client-0", "--risk", "critical",
                           "--action", f"@{tmp_path / 'action.json'}")
        denied = json.loads(out)
        assert code == EXIT_DENY and denied["status"] == "DENY"
        assert denied["request_number"] == json.loads(allowed.read_text())["request_number"] + 1
        (tmp_path / "certificate.json").write_text(json.dumps(denied["certificate"]))

        code, out, _ = run(capsys, "status", "--config", config)
        assert code == EXIT_OK, out
        assert out.count(" ok ") == 4

    code, out, _ = run(capsys, "verify", allowed, "--config", config)
    assert code == EXIT_OK and out.startswith("valid: ALLOW for client-0")
    code, out, _ = run(capsys, "verify", tmp_path / "certificate.json", "--config", config)
    assert code == EXIT_OK and out.startswith("valid: DENY")
    forged = json.loads(allowed.read_text())
    forged["certificate"]["decision"] = "DENY"  # The readable fields must match the signed bytes.
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    assert_one_sentence_error(capsys, EXIT_FAILED, "verify", tmp_path / "forged.json", "--config", config,
                              contains="invalid: ")

    for replica_id in range(4):
        code, out, _ = run(capsys, "audit", "verify", "--db", cluster_directory / "data" / f"replica-{replica_id}.db")
        assert code == EXIT_OK and out.startswith("OK: 2 entries")
    database = cluster_directory / "data" / "replica-3.db"
    with sqlite3.connect(database) as connection:  # As an attacker would: past the append-only trigger.
        connection.execute("DROP TRIGGER IF EXISTS verdict_log_no_update")
        connection.execute("UPDATE verdict_log SET reason = 'edited' WHERE position = 1")
    code, out, _ = run(capsys, "audit", "verify", "--db", database)
    assert code == EXIT_FAILED and "position 1: hash" in out


# ---------------------------------------------------------------------------- operator commands

@pytest.mark.slow
def test_an_operator_quarantines_and_releases_a_replica_and_status_shows_it(tmp_path, capsys):
    directory = tmp_path / "cluster"
    assert run(capsys, "init", directory, "--replicas", "4")[0] == EXIT_OK
    config = directory / "cluster.toml"
    operator = ("--config", config, "--operator", "operator-0")
    with InProcessCluster(config):
        code, out, err = run(capsys, "operator", "quarantine", *operator, "--replica", "3", "--note", "INC-42")
        result = json.loads(out)
        assert (code, err, result["status"]) == (EXIT_OK, "", "ALLOW"), out
        assert result["command"] == {"command": "quarantine", "replica": 3, "note": "INC-42"}
        assert result["client_id"] == "operator:operator-0" and result["certificate"] is not None

        code, out, _ = run(capsys, "operator", "quarantine", *operator, "--replica", "2")
        assert code == EXIT_DENY
        assert json.loads(out)["reason"] == "command rejected: without proof at most f = 1 replicas may be quarantined"

        code, out, _ = run(capsys, "status", "--config", config)
        assert code == EXIT_OK and out.count(" ok ") == 4, out
        assert "  quarantined: 3\n  suspected:   none\n  evidence:    0 records\n" in out, out
        assert "  blocklist:   0 active of 0 patterns endorsed\n" in out, out
        code, out, _ = run(capsys, "status", "--config", config, "--json")
        assert all(replica["accountability"]["quarantined"] == [3] for replica in json.loads(out))
        code, out, _ = run(capsys, "operator", "evidence", "--config", config)
        assert code == EXIT_OK and out.startswith("0 evidence records (replica ")
        code, out, _ = run(capsys, "operator", "blocklist", "--config", config)
        assert code == EXIT_OK and out.startswith("0 active of 0 endorsed patterns (replica ")

        code, out, _ = run(capsys, "operator", "release", *operator, "--replica", "3", "--note", "fixed")
        assert code == EXIT_OK and json.loads(out)["status"] == "ALLOW"
        code, out, _ = run(capsys, "status", "--config", config)
        assert "  quarantined: none\n" in out, out

    code, out, _ = run(capsys, "status", "--db", directory / "data" / "replica-0.db")
    assert code == EXIT_OK
    lines = out.splitlines()
    assert lines[0] == 'position 1: quarantined replica 3 (by="operator:operator-0", cause="operator", detail="INC-42")'
    assert lines[1] == 'position 3: released replica 3 (by="operator:operator-0", note="fixed")'
    assert lines[2] == f"2 events in {directory / 'data' / 'replica-0.db'}"
    code, out, _ = run(capsys, "status", "--db", directory / "data" / "replica-1.db", "--json")
    assert [json.loads(line)["event"] for line in out.splitlines()] == ["quarantined", "released"]
    code, out, _ = run(capsys, "operator", "evidence", "--db", directory / "data" / "replica-2.db")
    assert (code, out) == (EXIT_OK, f"0 events in {directory / 'data' / 'replica-2.db'}\n")


OPERATOR_MISTAKES = [
    (("operator",), "choose an action"),
    (("operator", "quarantine", "--config", "{config}", "--operator", "mallory", "--replica", "1"),
     "there is no operator 'mallory' (the operators are: operator-0)"),
    (("operator", "quarantine", "--config", "{config}", "--operator", "operator-0", "--replica", "4"),
     "there is no replica 4 (the replicas are 0 to 3)"),
    (("operator", "release", "--config", "{config}", "--operator", "operator-0", "--replica", "-1"), "outside [0,"),
    (("operator", "quarantine", "--config", "{config}", "--operator", "operator-0", "--replica", "1", "--note",
      "x" * 201), "'note' must be text of at most 200 bytes"),
    (("operator", "quarantine", "--config", "{config}", "--operator", "operator-0", "--replica", "1",
      "--key-file", "{missing}"), "the key file does not exist"),
    (("operator", "quarantine", "--config", "{missing}", "--operator", "operator-0", "--replica", "1"),
     "the cluster file does not exist"),
    (("operator", "evidence"), "one of the arguments --config --db is required"),
    (("operator", "blocklist", "--config", "{config}", "--db", "{config}"), "not allowed with argument"),
    (("operator", "blocklist", "--db", "{missing}"), "is not a file"),
    (("status", "--db", "{config}"), "not a readable verdict log"),
]


@pytest.mark.parametrize("argv, contains", OPERATOR_MISTAKES,
                         ids=[" ".join(argv[:2]) + f" {i}" for i, (argv, _) in enumerate(OPERATOR_MISTAKES)])
def test_every_operator_mistake_is_one_sentence_and_exit_code_2(argv, contains, cluster_directory, tmp_path, capsys):
    arguments = [argument.format(config=cluster_directory / "cluster.toml", missing=tmp_path / "missing")
                 for argument in argv]
    assert_one_sentence_error(capsys, EXIT_USAGE, *arguments, contains=contains)


def test_operator_commands_with_no_replica_running_are_refused_and_listings_fail(cluster_directory, capsys):
    code, out, err = run(capsys, "operator", "quarantine", "--config", cluster_directory, "--operator", "operator-0",
                         "--replica", "1", "--timeout-ms", "300")
    assert (code, err) == (EXIT_REFUSED, "") and json.loads(out)["status"] == "REFUSED"
    code, out, err = run(capsys, "operator", "blocklist", "--config", cluster_directory, "--timeout-ms", "200")
    assert (code, out) == (EXIT_FAILED, "") and err.startswith("no replica's metrics could be read")



# ---------------------------------------------------------------------------- verify reads the whole document

@pytest.fixture(scope="module")
def verify_directory(tmp_path_factory) -> Path:
    """A cluster of its own: other tests here damage their cluster's databases on purpose."""
    directory = tmp_path_factory.mktemp("cli-verify") / "cluster"
    assert main(["init", str(directory), "--replicas", "4", "--clients", "2"]) == EXIT_OK
    return directory


@pytest.fixture(scope="module")
def submitted(verify_directory) -> dict[str, str]:
    """What ``bft submit`` printed for one ALLOW and one DENY from a running cluster, by status."""
    config = verify_directory / "cluster.toml"
    outputs = {}
    with InProcessCluster(config):
        for status, action, risk in (("ALLOW", BENIGN, "low"), ("DENY", DANGEROUS, "critical")):
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                main(["submit", "--config", str(config), "--client", "client-1", "--risk", risk, "--action", action])
            assert json.loads(printed.getvalue())["status"] == status
            outputs[status] = printed.getvalue()
    return outputs


def edited(text: str, path: tuple[str, ...], value) -> str:
    document = json.loads(text)
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(document, indent=2)


def verify_text(capsys, cluster_directory, tmp_path, text: str) -> tuple[int, str, str]:
    path = tmp_path / "edited.json"
    path.write_text(text)
    return run(capsys, "verify", path, "--config", cluster_directory)


@pytest.mark.parametrize("path, value", [
    (("status",), "ALLOW"), (("reason",), "approved"), (("client_id",), "client-0"), (("request_number",), 1),
    (("request_number",), "2"), (("certificate", "decision"), "ALLOW"), (("certificate", "reason"), "fine"),
    (("certificate", "seq"), 99), (("certificate", "client_id"), "client-0"), (("certificate", "request_number"), 7),
    (("certificate", "risk"), "low"), (("certificate", "action"), {"tool": "read_file"}),
    (("certificate", "signers"), [0, 1, 2, 3, 3]), (("certificate", "votes"), []), (("extra",), "field"),
    (("certificate", "extra"), 1), (("latency_ms",), "fast"),
])
def test_verify_refuses_a_deny_document_whose_readable_fields_were_edited(path, value, submitted, verify_directory,
                                                                          tmp_path, capsys):
    code, out, err = verify_text(capsys, verify_directory, tmp_path, submitted["DENY"])
    assert code == EXIT_OK and out.startswith("valid: DENY"), err
    code, out, err = verify_text(capsys, verify_directory, tmp_path, edited(submitted["DENY"], path, value))
    assert (code, out) == (EXIT_FAILED, ""), out
    assert err.startswith(f"invalid: {'.'.join(path)} does not match the signed content") and err.count("\n") == 1, err


def test_verify_refuses_look_alike_values_and_repeated_fields(submitted, verify_directory, tmp_path, capsys):
    document = json.loads(submitted["ALLOW"])
    seq = document["certificate"]["seq"]
    for path, value in ((("certificate", "seq"), float(seq)), (("request_number",), float(document["request_number"])),
                        (("certificate", "seq"), True if seq == 1 else str(seq))):
        code, _, err = verify_text(capsys, verify_directory, tmp_path, edited(submitted["ALLOW"], path, value))
        assert code == EXIT_FAILED and f"{'.'.join(path)} does not match the signed content" in err, (path, err)
    # A reader that keeps the first of two repeated keys would see ALLOW where Python sees DENY.
    repeated = submitted["DENY"].replace('"status": "DENY"', '"status": "ALLOW", "status": "DENY"', 1)
    code, _, err = verify_text(capsys, verify_directory, tmp_path, repeated)
    assert code == EXIT_FAILED and err == "invalid: status does not match the signed content (it appears twice)\n"


def test_verify_with_a_chain_names_the_epoch_and_refuses_a_link_that_is_no_configuration_change(
        submitted, verify_directory, tmp_path, capsys):
    certificate = tmp_path / "allow.json"
    certificate.write_text(submitted["ALLOW"])
    chain = tmp_path / "chain.json"
    chain.write_text("[]")  # The genesis epoch alone.
    code, out, err = run(capsys, "verify", certificate, "--config", verify_directory, "--chain", chain)
    assert code == EXIT_OK and out.startswith("valid: ALLOW") and out.rstrip().endswith("epoch 0"), err
    chain.write_text(f"[{submitted['DENY']}]")  # A verdict, not a config-change: the chain does not hold.
    code, out, err = run(capsys, "verify", certificate, "--config", verify_directory, "--chain", chain)
    assert (code, out) == (EXIT_FAILED, "") and "epoch 1's certificate" in err, err
