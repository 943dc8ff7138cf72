"""``bft operator``: an operator's commands to the cluster's accountability state (see ``bft.cli`` for exit codes).

``quarantine`` and ``release`` sign a command document as request signer
``operator:<id>`` with the operator's key file (named in the cluster file) and
submit it through the client library, so it is ordered by consensus like any
request and takes effect at the same log position on every correct replica.
Like ``bft submit`` they print the outcome as JSON and exit 0 when the cluster
applied the command (ALLOW), 3 when it refused it (DENY, with the reason, for
example "command rejected: replica 3 is already quarantined"), 4 when no
certificate came back in time (REFUSED).

``evidence`` and ``blocklist`` list what is in effect now, read from the
metrics of the replica that executed most (``--config``), or the full history
from a replica's verdict log (``--db``, offline).  The accountability part of
``bft status`` is printed here too (``print_accountability``, ``print_log_events``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._common import (EXIT_BY_STATUS, EXIT_FAILED, EXIT_OK, SUBMIT_TIMEOUT_MS_MAX, UsageError, _bounded_int,
                          _cluster_path, _count, _Parser, _shown, outcome_document)
from ..cluster import load_cluster_file
from ..core import (CommandError, LocalProtocolError, Risk, canonical_action, operator_document, operator_signer_id,
                   parse_command)

QUARANTINE, RELEASE = "quarantine", "release"
EVIDENCE_EVENTS = frozenset({"evidence"})
BLOCKLIST_EVENTS = frozenset({"endorsed", "endorsement-expired", "pattern-active", "pattern-inactive"})


def add_commands(subcommands) -> None:
    operator = subcommands.add_parser("operator", help="quarantine or release a replica; list evidence, blocklist",
                                      description="An operator's commands to the accountability state.")
    actions = operator.add_subparsers(dest="operator_command", metavar="ACTION", parser_class=_Parser)
    for kind, help_text in ((QUARANTINE, "stop counting a replica's votes (at most f without proof)"),
                            (RELEASE, "count a quarantined replica's votes again")):
        command = actions.add_parser(kind, help=help_text,
                                     description=f"{help_text[0].upper()}{help_text[1:]}: a command signed with the "
                                                 "operator's key and ordered through consensus.  Exit code 0 if "
                                                 "applied, 3 if the cluster refused it, 4 if no answer came in time.")
        command.add_argument("--config", type=_cluster_path, required=True, metavar="CLUSTER.toml")
        command.add_argument("--operator", required=True, metavar="NAME", help="the operator id in the cluster file")
        command.add_argument("--replica", type=_bounded_int(0, 2**16), required=True, metavar="I")
        command.add_argument("--note", default="", metavar="TEXT", help="why, for the audit log (at most 200 bytes)")
        command.add_argument("--key-file", type=Path,
                             help="the operator's key file (default: the one the cluster file names)")
        command.add_argument("--timeout-ms", type=_bounded_int(1, SUBMIT_TIMEOUT_MS_MAX), default=5000,
                             help="the command's deadline (5000)")
        command.set_defaults(handler=_run_command, kind=kind)
    for kind, help_text in (("evidence", "list proofs of equivocation"),
                            ("blocklist", "list the shared blocklist patterns")):
        command = actions.add_parser(kind, help=help_text,
                                     description=f"{help_text[0].upper()}{help_text[1:]}: those in effect now, from "
                                                 "the replicas' metrics (--config), or every change in a replica's "
                                                 "verdict log (--db, offline).")
        source = command.add_mutually_exclusive_group(required=True)
        source.add_argument("--config", type=_cluster_path, metavar="CLUSTER.toml")
        source.add_argument("--db", type=Path, metavar="FILE", help="a replica's SQLite file, read offline")
        command.add_argument("--json", action="store_true", help="print JSON")
        command.add_argument("--timeout-ms", type=_bounded_int(1, 60_000), default=2000,
                             help="how long to wait for each replica's metrics (2000)")
        command.set_defaults(handler=_run_evidence if kind == "evidence" else _run_blocklist)
    from . import _reconfigure
    _reconfigure.add_command(actions)
    operator.set_defaults(handler=_needs_action)


def _needs_action(arguments: argparse.Namespace) -> int:
    raise UsageError("bft operator: choose an action (quarantine, release, evidence, blocklist or reconfigure)")


def _run_command(arguments: argparse.Namespace) -> int:
    from ..client import BlockingClient
    command = f"bft operator {arguments.kind}"
    cluster = load_cluster_file(arguments.config)
    cluster.operator(arguments.operator)  # An unknown operator: one sentence naming the known ones.
    if arguments.replica >= cluster.config.replica_count:
        raise UsageError(f"{command}: there is no replica {arguments.replica} (the replicas are 0 to "
                         f"{cluster.config.replica_count - 1})")
    signer_id = operator_signer_id(arguments.operator)
    document = operator_document(arguments.kind, arguments.replica, arguments.note)
    try:
        parse_command(signer_id, canonical_action(document), Risk.LOW)  # The checks every replica's vote makes.
    except CommandError as error:
        raise UsageError(f"{command}: {error}") from None
    with BlockingClient(cluster, signer_id, key_file=arguments.key_file, timeout_ms=arguments.timeout_ms) as client:
        try:
            outcome = client.submit(document, Risk.LOW, timeout_ms=arguments.timeout_ms)
        except LocalProtocolError as error:
            raise UsageError(f"{command}: the command cannot be sent: {error}") from None
    print(json.dumps({"command": document, **outcome_document(outcome)}, indent=2))
    return EXIT_BY_STATUS[outcome.status]


def _live_view(arguments: argparse.Namespace):
    """The newest accountability view among the replicas' metrics; exit code 1 (via None) if none answers."""
    from ..cluster import cluster_status, most_advanced_view
    cluster = load_cluster_file(arguments.config)
    status = most_advanced_view(cluster_status(cluster, arguments.timeout_ms / 1000))
    if status is None:
        print("no replica's metrics could be read; try bft status --config for details", file=sys.stderr)
    return status


def _run_listing(arguments: argparse.Namespace, command: str, events, show) -> int:
    """A listing from a replica's verdict log (``--db``) or, live, from the most advanced replica's metrics."""
    if arguments.db is not None:
        return print_log_events(arguments.db, arguments.json, command, events)
    status = _live_view(arguments)
    if status is None:
        return EXIT_FAILED
    return show(status, arguments)


def _run_evidence(arguments: argparse.Namespace) -> int:
    return _run_listing(arguments, "bft operator evidence", EVIDENCE_EVENTS, _show_evidence)


def _run_blocklist(arguments: argparse.Namespace) -> int:
    return _run_listing(arguments, "bft operator blocklist", BLOCKLIST_EVENTS, _show_blocklist)


def _show_evidence(status, arguments: argparse.Namespace) -> int:
    view = status.accountability
    if arguments.json:
        print(json.dumps({"replica": status.replica_id, "executed_seq": status.last_executed_seq,
                          "evidence_records": view.evidence_records,
                          "evidence_by_replica": view.as_dict()["evidence_by_replica"],
                          "quarantined": list(view.quarantined)}, indent=2))
        return EXIT_OK
    print(f"{_count(view.evidence_records, 'evidence record')} (replica {status.replica_id}, "
          f"executed seq {status.last_executed_seq})")
    for replica_id, count in view.evidence_by_replica:
        state = "quarantined" if replica_id in view.quarantined else "not quarantined"
        print(f"  replica {replica_id}: {_count(count, 'proof')} of equivocation, {state}")
    return EXIT_OK


def _show_blocklist(status, arguments: argparse.Namespace) -> int:
    view = status.accountability
    if arguments.json:
        print(json.dumps({"replica": status.replica_id, "executed_seq": status.last_executed_seq,
                          "blocklist_patterns": view.blocklist_patterns,
                          "active_patterns": view.as_dict()["active_patterns"]}, indent=2))
        return EXIT_OK
    print(f"{len(view.active_patterns)} active of {_count(view.blocklist_patterns, 'endorsed pattern')} "
          f"(replica {status.replica_id}, executed seq {status.last_executed_seq})")
    for pattern, endorsers in view.active_patterns:
        print(f"  {json.dumps(pattern, ensure_ascii=False)} (endorsed by {endorsers} replicas)")
    return EXIT_OK


def print_accountability(status) -> None:
    """The accountability part of ``bft status``: what ``status`` (a ``ReplicaStatus``, or None) shows."""
    if status is None:
        print("accountability: no replica's metrics show it")
        return
    view = status.accountability
    print(f"accountability (replica {status.replica_id}, executed seq {_shown(status.last_executed_seq)}):")
    print(f"  quarantined: {_replica_list(view.quarantined)}")
    print(f"  suspected:   {_replica_list(view.suspects)}")
    against = ", ".join(f"{count} against replica {replica}" for replica, count in view.evidence_by_replica)
    print(f"  evidence:    {_count(view.evidence_records, 'record')}" + (f" ({against})" if against else ""))
    print(f"  blocklist:   {len(view.active_patterns)} active of {_count(view.blocklist_patterns, 'pattern')} "
          f"endorsed")
    for pattern, endorsers in view.active_patterns:
        print(f"    {json.dumps(pattern, ensure_ascii=False)} (endorsed by {endorsers} replicas)")


def _replica_list(replica_ids: tuple[int, ...]) -> str:
    return ", ".join(str(replica_id) for replica_id in replica_ids) if replica_ids else "none"


def print_log_events(database: Path, as_json: bool, command: str, kinds: frozenset[str] | None = None) -> int:
    """Print the accountability events of a verdict log (those of ``kinds``, default all); 1 if any is unreadable."""
    from ..cluster import VerdictLogError, describe_event, verdict_log_events
    shown = unreadable = 0
    try:
        for position, event in verdict_log_events(database):
            if event is not None and kinds is not None and event["event"] not in kinds:
                continue
            shown += 1
            unreadable += event is None
            print(json.dumps({"position": position, **(event or {"event": None})}, ensure_ascii=False)
                  if as_json else f"position {position}: {describe_event(event)}")
    except VerdictLogError as error:
        raise UsageError(f"{command}: {error}") from None
    if not as_json:
        print(f"{_count(shown, 'event')} in {database}")
    return EXIT_FAILED if unreadable else EXIT_OK
