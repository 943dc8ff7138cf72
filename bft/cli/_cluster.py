"""The ``bft`` subcommands that create, run, query and audit a cluster (see ``bft.cli`` for exit codes).

Each handler takes the parsed arguments and returns an exit code.  Mistakes a
user can make raise ``UsageError`` or ``ConfigFileError`` (one sentence, exit
code 2); ``bft.cli.main`` prints them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._common import (EXIT_BY_STATUS, EXIT_FAILED, EXIT_OK, SUBMIT_TIMEOUT_MS_MAX, UsageError, _bounded_int,
                          _cluster_path, _count, _Parser, _shown, outcome_document)
from ..cluster import Address, format_address, load_cluster_file, parse_address
from ..core import CertificateError, LocalProtocolError, Risk, VerdictCertificate
from ..core._certificate import check_fields_match, load_json_document
from ..core._messages import MAX_ACTION_BYTES, action_shape_problem

MAX_CERTIFICATE_FILE_BYTES = 16 * 1024 * 1024
# Room for an action of the largest size the protocol carries, written out with spaces and indentation.
MAX_ACTION_FILE_BYTES = 4 * MAX_ACTION_BYTES


def add_commands(subcommands) -> None:
    for add in (_add_init, _add_up, _add_down, _add_replica, _add_submit, _add_verify, _add_status, _add_audit):
        add(subcommands)


# ---------------------------------------------------------------------------- argument types

def _address(text: str) -> Address:
    try:
        return parse_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"an address {error}") from None


def _peer(text: str) -> tuple[int, Address]:
    replica_text, separator, address_text = text.partition("=")
    if not separator or not replica_text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not REPLICA=HOST:PORT")
    return int(replica_text), _address(address_text)


def _policy_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of policy names")
    return names


# ---------------------------------------------------------------------------- init

def _add_init(subcommands) -> None:
    from ..cluster import CLIENTS_MAX, DEFAULT_POLICIES, REPLICAS_MAX, REPLICAS_MIN
    command = subcommands.add_parser("init", help="create keys and a cluster file for a local cluster",
                                     description="Write fresh keys (mode 0600) and DIR/cluster.toml for a cluster "
                                                 "on free 127.0.0.1 ports.  Refuses to overwrite a cluster.")
    command.add_argument("directory", type=Path, metavar="DIR")
    command.add_argument("--replicas", type=_bounded_int(REPLICAS_MIN, REPLICAS_MAX), required=True,
                         help="how many replicas (n >= 3f+1; 4 tolerates one fault)")
    command.add_argument("--clients", type=_bounded_int(0, CLIENTS_MAX), default=1, help="how many clients (1)")
    command.add_argument("--policies", type=_policy_list, default=DEFAULT_POLICIES,
                         help=f"policies given to the replicas in turn ({','.join(DEFAULT_POLICIES)})")
    command.set_defaults(handler=_run_init)


def _run_init(arguments: argparse.Namespace) -> int:
    from ..cluster import create_cluster_directory
    cluster = create_cluster_directory(arguments.directory, arguments.replicas, arguments.clients,
                                       policies=arguments.policies)
    config = cluster.config
    print(f"created cluster {config.cluster_id} in {cluster.path.parent}: {config.replica_count} replicas "
          f"(tolerates {config.faulty_max} faulty), "
          f"{_count(len(cluster.clients), 'client')}, {_count(len(cluster.operators), 'operator')}")
    for entry in cluster.replicas:
        print(f"  replica {entry.replica_id}: {format_address(entry.address)}, policy {entry.policy.name}, "
              f"metrics {format_address(entry.metrics_address)}")
    print(f"cluster file {cluster.path}; private keys in {cluster.path.parent / 'keys'} (mode 0600)")
    print(f"next: bft up {cluster.path.parent}")
    return EXIT_OK


# ---------------------------------------------------------------------------- up / down

def _add_up(subcommands) -> None:
    command = subcommands.add_parser("up", help="start the cluster's replicas as background processes",
                                     description="Start every replica of DIR/cluster.toml that is not running, "
                                                 "detached, logging to DIR/logs/, and wait until each listens.")
    command.add_argument("directory", type=_cluster_path, metavar="DIR")
    command.add_argument("--timeout-s", type=_bounded_int(1, 600), default=30,
                         help="how long to wait for the replicas to listen (30)")
    command.set_defaults(handler=_run_up)


def _run_up(arguments: argparse.Namespace) -> int:
    from ..cluster import LocalProcessCluster, PortInUseError, ReplicaProcessError, ReplicaUsageError
    processes = LocalProcessCluster(arguments.directory)
    try:
        results = processes.up(timeout_s=arguments.timeout_s)
    except (PortInUseError, ReplicaUsageError) as error:  # Found before anything started.
        raise UsageError(f"bft up: {error}") from None
    except ReplicaProcessError as error:
        print(f"bft up: {error}", file=sys.stderr)
        return EXIT_FAILED
    _print_started(processes, results)
    return EXIT_OK


def _print_started(processes, results) -> None:
    from ..cluster import accepts_connections
    config = processes.cluster.config
    print(f"cluster {config.cluster_id}: {config.replica_count} replicas")
    for result in results:
        replica_id = result.replica_id
        address = format_address(processes.listen_address(replica_id))
        if not processes.is_running(replica_id):
            state = "has exited"
        elif accepts_connections(processes.listen_address(replica_id)):
            state = f"listening on {address}"
        else:
            state = f"not yet listening on {address}"
        what = "already running" if result.already_running else "started"
        print(f"  replica {replica_id}: {what}, pid {result.pid}, {state} (log {processes.log_path(replica_id)})")


def _add_down(subcommands) -> None:
    command = subcommands.add_parser("down", help="stop the cluster's replica processes",
                                     description="Send SIGTERM to every running replica of DIR/cluster.toml, wait, "
                                                 "then SIGKILL those still running.")
    command.add_argument("directory", type=_cluster_path, metavar="DIR")
    command.add_argument("--timeout-s", type=_bounded_int(1, 600), default=10,
                         help="how long to wait after SIGTERM before SIGKILL (10)")
    command.set_defaults(handler=_run_down)


def _run_down(arguments: argparse.Namespace) -> int:
    from ..cluster import LocalProcessCluster
    processes = LocalProcessCluster(arguments.directory)
    for result in processes.stop_all(timeout_s=arguments.timeout_s):
        if result.outcome == "not-running":
            print(f"replica {result.replica_id}: was not running")
        elif result.outcome == "terminated":
            print(f"replica {result.replica_id}: stopped (pid {result.pid}, exited {result.waited_s:.1f} s "
                  f"after SIGTERM)")
        else:
            print(f"replica {result.replica_id}: killed (pid {result.pid}, still running {arguments.timeout_s} s "
                  f"after SIGTERM, so sent SIGKILL)")
    return EXIT_OK


# ---------------------------------------------------------------------------- replica

def _add_replica(subcommands) -> None:
    command = subcommands.add_parser("replica", help="run one replica in the foreground",
                                     description="Run one replica of the cluster until SIGTERM or SIGINT: the "
                                                 "one --id names, or the one whose key --key-file holds.")
    command.add_argument("--config", type=_cluster_path, required=True, metavar="CLUSTER.toml")
    command.add_argument("--id", type=_bounded_int(0, 127), dest="replica_id",
                         help="which replica (may be left out with --key-file)")
    command.add_argument("--key-file", type=Path, metavar="FILE",
                         help="this replica's private key (default: the key_file its cluster file entry names)")
    command.add_argument("--listen", type=_address, metavar="HOST:PORT",
                         help="listen here instead of at the configured address")
    command.add_argument("--peer", type=_peer, action="append", default=[], metavar="J=HOST:PORT",
                         help="reach replica J here instead of at its configured address (repeatable)")
    command.set_defaults(handler=_run_replica)


def _run_replica(arguments: argparse.Namespace) -> int:
    from ..cluster import ReplicaStartError, ReplicaUsageError, run_replica
    try:
        run_replica(arguments.config, arguments.replica_id, arguments.listen, dict(arguments.peer),
                    key_file=arguments.key_file)
    except ReplicaUsageError as error:
        raise UsageError(f"bft replica: {error}") from None
    except ReplicaStartError as error:  # The machine refused (port taken, database unusable).
        print(f"bft replica: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# ---------------------------------------------------------------------------- submit

def _add_submit(subcommands) -> None:
    command = subcommands.add_parser("submit", help="ask the cluster for a verdict on one action",
                                     description="Print the verdict and its certificate as JSON.  Exit code 0 "
                                                 "ALLOW, 3 DENY, 4 REFUSED (no verified certificate in time).")
    command.add_argument("--config", type=_cluster_path, required=True, metavar="CLUSTER.toml")
    command.add_argument("--client", required=True, help="the client id")
    command.add_argument("--key-file", type=Path, help="the client's key file (default: the one the cluster file names)")
    command.add_argument("--risk", choices=[risk.value for risk in Risk], required=True)
    command.add_argument("--action", required=True, metavar="JSON",
                         help="the action as a JSON object, or @FILE to read it from a file")
    command.add_argument("--timeout-ms", type=_bounded_int(1, SUBMIT_TIMEOUT_MS_MAX), default=5000,
                         help="the request's deadline (5000)")
    command.set_defaults(handler=_run_submit)


def _run_submit(arguments: argparse.Namespace) -> int:
    from ..client import BlockingClient
    action = _read_action(arguments.action)
    with BlockingClient(arguments.config, arguments.client, key_file=arguments.key_file,
                        timeout_ms=arguments.timeout_ms) as client:
        try:
            outcome = client.submit(action, arguments.risk, timeout_ms=arguments.timeout_ms)
        except LocalProtocolError as error:
            raise UsageError(f"bft submit: the action cannot be sent: {error}") from None
    print(json.dumps(outcome_document(outcome), indent=2))
    return EXIT_BY_STATUS[outcome.status]


def _read_action(text: str) -> dict:
    """The action object; its nesting is measured before ``json`` parses it (see ``bft.core.canonical_action``)."""
    source = "--action"
    if text.startswith("@"):
        source = text[1:]
        text = _read_action_file(Path(source))
    problem = action_shape_problem(text, bytes_max=len(text.encode()))
    if problem:
        raise UsageError(f"bft submit: {source}: {problem}")
    try:
        action = json.loads(text)
    except ValueError as error:
        raise UsageError(f"bft submit: {source} is not valid JSON ({error})") from None
    if not isinstance(action, dict):
        raise UsageError(f"bft submit: {source} must be a JSON object, like {{\"tool\": \"shell\"}}")
    return action


def _read_action_file(path: Path) -> str:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_ACTION_FILE_BYTES + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"bft submit: cannot read the action file {path} ({error})") from None
    if len(data) > MAX_ACTION_FILE_BYTES:
        raise UsageError(f"bft submit: the action file {path} is larger than {MAX_ACTION_FILE_BYTES} bytes")
    return text


# ---------------------------------------------------------------------------- verify

def _add_verify(subcommands) -> None:
    command = subcommands.add_parser("verify", help="check a verdict certificate offline",
                                     description="Check CERT.json (a certificate, or the output of bft submit) "
                                                 "against the cluster's public keys.  Exit code 0 if valid, "
                                                 "1 with the reason if not.")
    command.add_argument("certificate", type=Path, metavar="CERT.json")
    command.add_argument("--config", type=_cluster_path, required=True, metavar="CLUSTER.toml")
    command.add_argument("--chain", type=Path, metavar="CHAIN.json",
                         help="the epoch certificates after the genesis configuration of CLUSTER.toml: a JSON list "
                              "of the config-change certificates, in order (specs/RECONFIGURATION.md section 5); "
                              "the certificate is checked under the epoch of its seq")
    command.set_defaults(handler=_run_verify)


def _run_verify(arguments: argparse.Namespace) -> int:
    from ..core._epoch_chain import verify_in_chain
    cluster = load_cluster_file(arguments.config)
    text = _read_certificate_text(arguments.certificate)
    try:
        certificate = certificate_in_document(load_json_document(text))
        links = _chain_links(arguments.chain) if arguments.chain else []
        epoch = verify_in_chain(certificate, cluster.config, links)
    except CertificateError as error:
        print(f"invalid: {error}", file=sys.stderr)
        return EXIT_FAILED
    signers = [reply.replica_id for reply in certificate.replies]
    print(f"valid: {certificate.decision.value} for {certificate.request.client_id} request "
          f"#{certificate.request.request_number} ({certificate.request.risk.value} risk) at seq {certificate.seq}, "
          f"signed by replicas {signers} of cluster {cluster.config.cluster_id}"
          + (f", epoch {epoch}" if arguments.chain else ""))
    return EXIT_OK


def _chain_links(path: Path) -> list[VerdictCertificate]:
    document = load_json_document(_read_certificate_text(path))
    if not isinstance(document, list):
        raise CertificateError("the chain must be a JSON list of epoch certificates")
    return [certificate_in_document(link) for link in document]


def _read_certificate_text(path: Path) -> str:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CERTIFICATE_FILE_BYTES + 1)
    except OSError as error:
        raise UsageError(f"bft verify: cannot read {path} ({error.strerror or error})") from None
    if len(data) > MAX_CERTIFICATE_FILE_BYTES:
        raise UsageError(f"bft verify: {path} is larger than {MAX_CERTIFICATE_FILE_BYTES} bytes")
    return data.decode("utf-8", errors="replace")


def certificate_in_document(document) -> VerdictCertificate:
    """The certificate in a parsed certificate document or ``bft submit`` output, every readable field checked.

    In the output of ``bft submit`` the verdict fields around the certificate must equal what it
    says too; ``latency_ms`` is the one field nobody signed (the client's own measurement), so it
    only has to be a number.
    """
    if not (isinstance(document, dict) and "status" in document and "certificate" in document):
        return VerdictCertificate.from_document(document)
    if document["certificate"] is None:
        raise CertificateError(f"this {str(document['status'])[:20]} outcome carries no certificate")
    certificate = VerdictCertificate.from_document(document["certificate"], where="certificate.")
    latency_ms = document.get("latency_ms")
    if type(latency_ms) not in (int, float) or not 0 <= latency_ms < float("inf"):
        raise CertificateError("latency_ms does not match the signed content (it must be a number of milliseconds)")
    expected = {"status": certificate.decision.value, "reason": certificate.reason,
                "client_id": certificate.request.client_id, "request_number": certificate.request.request_number}
    check_fields_match(document, expected, signed_keys={"certificate", "latency_ms"})
    return certificate


# ---------------------------------------------------------------------------- status

def _add_status(subcommands) -> None:
    command = subcommands.add_parser("status", help="each replica's view, progress, health and accountability",
                                     description="With --config, read each replica's metrics endpoint: health, "
                                                 "progress, quarantined and suspected replicas, evidence and the "
                                                 "active shared blocklist; exit code 0 if every replica is healthy, "
                                                 "1 otherwise.  With --db, list the accountability events in a "
                                                 "replica's verdict log (offline).")
    source = command.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=_cluster_path, metavar="CLUSTER.toml")
    source.add_argument("--db", type=Path, metavar="FILE", help="a replica's SQLite file, read offline")
    command.add_argument("--json", action="store_true", help="print JSON instead of a table")
    command.add_argument("--timeout-ms", type=_bounded_int(1, 60_000), default=2000,
                         help="how long to wait for each replica (2000)")
    command.set_defaults(handler=_run_status)


def _run_status(arguments: argparse.Namespace) -> int:
    from ._operator import print_accountability, print_log_events
    from ..cluster import cluster_status, most_advanced_view
    if arguments.db is not None:
        return print_log_events(arguments.db, arguments.json, "bft status")
    cluster = load_cluster_file(arguments.config)
    statuses = cluster_status(cluster, arguments.timeout_ms / 1000)
    if arguments.json:
        print(json.dumps([status.as_dict() for status in statuses], indent=2))
    else:
        print(f"cluster {cluster.config.cluster_id}: {cluster.config.replica_count} replicas, "
              f"quorum {cluster.config.quorum}")
        print(f"{'replica':>7}  {'address':<21} {'health':<11} {'view':>5} {'executed':>9} {'lag':>5} "
              f"{'checkpoint':>10} {'peers':>5}  detail")
        for status in statuses:
            print(f"{status.replica_id:>7}  {format_address(status.address):<21} {status.health:<11} "
                  f"{_shown(status.view):>5} {_shown(status.last_executed_seq):>9} {_shown(status.lag_seq):>5} "
                  f"{_shown(status.stable_checkpoint_seq):>10} {_shown(status.peers_connected):>5}  {status.detail}")
        print_accountability(most_advanced_view(statuses))
    return EXIT_OK if all(status.health == "ok" for status in statuses) else EXIT_FAILED


# ---------------------------------------------------------------------------- audit

def _add_audit(subcommands) -> None:
    audit = subcommands.add_parser("audit", help="audit a replica's verdict log",
                                   description="Audit a replica's hash-chained verdict log.")
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION", parser_class=_Parser)
    verify = actions.add_parser("verify", help="check the hash chain, positions, exactly-once and deadlines",
                                description="Check a replica's SQLite verdict log (opened read-only).  Exit code 0 "
                                            "if intact, 1 with each problem listed if not.")
    verify.add_argument("--db", type=Path, required=True, metavar="FILE", help="the replica's SQLite file")
    verify.add_argument("--expected-head", metavar="POSITION:HEX",
                        help="a trusted log head (from another replica or a certificate) the log must contain")
    verify.set_defaults(handler=_run_audit_verify)
    audit.set_defaults(handler=_audit_needs_action)


def _audit_needs_action(arguments: argparse.Namespace) -> int:
    raise UsageError("bft audit: choose an action (try: bft audit verify --db FILE)")


def _run_audit_verify(arguments: argparse.Namespace) -> int:
    from ..audit import verify_database
    if not arguments.db.is_file():
        raise UsageError(f"bft audit verify: {arguments.db} is not a file")
    report = verify_database(arguments.db, expected_head=_expected_head(arguments.expected_head))
    print(report)
    return EXIT_OK if report.ok else EXIT_FAILED


def _expected_head(text: str | None) -> tuple[int, bytes] | None:
    if text is None:
        return None
    position, _, hash_hex = text.partition(":")
    try:
        head = (int(position), bytes.fromhex(hash_hex))
    except ValueError:
        head = (0, b"")
    if head[0] < 1 or len(head[1]) != 32:
        raise UsageError("bft audit verify: --expected-head must be POSITION:HEX with a position of at least 1 "
                         "and a 32-byte hash in hex")
    return head

