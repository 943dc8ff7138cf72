"""The ``bft keygen`` and ``bft cluster`` subcommands: keys made where they live, a cluster file from public keys.

On each machine, ``bft keygen --out FILE`` writes that node's private key and
prints its public key (only the key on stdout, so a script can capture it).
Whoever assembles the cluster then runs ``bft cluster new`` once and
``bft cluster add-replica`` / ``add-client`` / ``add-operator`` once per node,
with the public keys and addresses only, and copies the finished file to every
machine.  For a configuration change, ``bft cluster next-epoch`` starts the
next epoch's file and ``set-replica`` gives a replica a new key (made on its
host) or a new address, before ``bft operator reconfigure`` orders it.  None of
these commands reads or writes another node's private key.
Exit codes and error reporting as in ``bft.cli``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..cluster import (ClusterFile, add_client, add_operator, add_replica, change_cluster_file, create_cluster_file,
                       create_key_file, format_address, next_epoch_file, public_key_problem, set_replica)
from ._cluster import _address, _cluster_path
from ._common import EXIT_OK, UsageError, _Parser


def add_commands(subcommands) -> None:
    _add_keygen(subcommands)
    _add_cluster(subcommands)


def _public_key(text: str) -> bytes:
    problem = public_key_problem(text.strip())
    if problem:
        raise argparse.ArgumentTypeError(f"the public key {text[:80]!r} {problem}")
    return bytes.fromhex(text.strip())


# ---------------------------------------------------------------------------- keygen

def _add_keygen(subcommands) -> None:
    command = subcommands.add_parser("keygen", help="make this node's private key and print its public key",
                                     description="Write a fresh private key to FILE (mode 0600; an existing file "
                                                 "is never replaced) and print its public key, the only part "
                                                 "that leaves this machine.")
    command.add_argument("--out", type=Path, required=True, metavar="FILE", help="the new private key file")
    command.set_defaults(handler=_run_keygen)


def _run_keygen(arguments: argparse.Namespace) -> int:
    keypair = create_key_file(arguments.out)
    print(keypair.public_key.hex())
    print(f"bft keygen: wrote the private key to {arguments.out} (mode 0600); the line above is its public key, "
          f"to give to whoever assembles the cluster file", file=sys.stderr)
    return EXIT_OK


# ---------------------------------------------------------------------------- cluster

def _add_cluster(subcommands) -> None:
    cluster = subcommands.add_parser("cluster", help="assemble a cluster file from public keys and addresses",
                                     description="Build a cluster file one entry at a time.  Each step checks the "
                                                 "whole file and changes nothing if it is refused.")
    actions = cluster.add_subparsers(dest="cluster_command", metavar="ACTION", parser_class=_Parser)
    new = actions.add_parser("new", help="start a cluster file with no members",
                             description="Write a new cluster file (never replacing one) naming the cluster.")
    new.add_argument("file", type=_cluster_path, metavar="FILE")
    new.add_argument("--id", required=True, dest="cluster_id", help="the cluster's name (signed into every message)")
    new.set_defaults(handler=_run_new)
    _add_replica_action(actions)
    _add_epoch_actions(actions)
    for kind in ("client", "operator"):
        action = actions.add_parser(f"add-{kind}", help=f"add a {kind} by its public key",
                                    description=f"Add a {kind} to the cluster file (after the replicas).")
        action.add_argument("file", type=_cluster_path, metavar="FILE")
        action.add_argument("--id", required=True, dest="identity", help=f"the {kind}'s name")
        action.add_argument("--public-key", type=_public_key, required=True, metavar="HEX",
                            help="what bft keygen printed on its machine")
        action.set_defaults(handler=_run_add_identity, kind=kind)
    cluster.set_defaults(handler=_cluster_needs_action)


def _add_replica_action(actions) -> None:
    action = actions.add_parser("add-replica", help="add the next replica by its public key and address",
                                description="Add a replica (ids are 0, 1, ... in the order added).")
    action.add_argument("file", type=_cluster_path, metavar="FILE")
    action.add_argument("--public-key", type=_public_key, required=True, metavar="HEX",
                        help="what bft keygen printed on the replica's machine")
    action.add_argument("--address", type=_address, required=True, metavar="HOST:PORT",
                        help="where the other replicas and the clients reach it")
    action.add_argument("--bind", type=_address, metavar="HOST:PORT",
                        help="where it listens, if not at --address (for example 0.0.0.0:PORT behind NAT)")
    action.add_argument("--policy", help="a built-in policy name or package.module:Name (default: the four "
                                         "built-in honest policies in turn)")
    action.add_argument("--database", metavar="PATH",
                        help="its SQLite file on its machine, relative to the cluster file (data/replica-ID.db)")
    action.add_argument("--metrics", type=_address, metavar="HOST:PORT", help="serve Prometheus metrics here")
    action.set_defaults(handler=_run_add_replica)


def _add_epoch_actions(actions) -> None:
    following = actions.add_parser("next-epoch", help="start the next epoch's cluster file from the current one",
                                   description="Write NEXT.toml (never replacing a file): the current cluster, "
                                               "naming the genesis file and the chain file, to be changed with "
                                               "set-replica or add-replica and ordered with bft operator "
                                               "reconfigure.")
    following.add_argument("file", type=_cluster_path, metavar="CURRENT.toml")
    following.add_argument("next_file", type=Path, metavar="NEXT.toml")
    following.add_argument("--chain", type=Path, metavar="CHAIN.json",
                           help="the chain file, when CURRENT.toml is the genesis (default: chain.json next to it)")
    following.set_defaults(handler=_run_next_epoch)
    changed = actions.add_parser("set-replica", help="give a replica a new key or address (rotate, replace)",
                                 description="Change one replica's public key (a key rotation) and/or its address "
                                             "(a replacement on another host) in a next epoch's cluster file.")
    changed.add_argument("file", type=_cluster_path, metavar="FILE")
    changed.add_argument("--id", type=int, required=True, dest="replica_id", help="the replica's id")
    changed.add_argument("--public-key", type=_public_key, metavar="HEX",
                         help="what bft keygen printed on the replica's (new) machine")
    changed.add_argument("--address", type=_address, metavar="HOST:PORT", help="where it is reached from now on")
    changed.add_argument("--bind", type=_address, metavar="HOST:PORT", help="where it listens, if not at --address")
    changed.add_argument("--metrics", type=_address, metavar="HOST:PORT", help="where it serves Prometheus metrics")
    changed.set_defaults(handler=_run_set_replica)


def _cluster_needs_action(arguments: argparse.Namespace) -> int:
    raise UsageError("bft cluster: choose an action (new, add-replica, add-client, add-operator, next-epoch or "
                     "set-replica)")


def _run_new(arguments: argparse.Namespace) -> int:
    create_cluster_file(arguments.file, arguments.cluster_id)
    print(f"created {arguments.file} for cluster {arguments.cluster_id}; next: bft cluster add-replica "
          f"{arguments.file} --public-key HEX --address HOST:PORT, once per replica")
    return EXIT_OK


def _run_add_replica(arguments: argparse.Namespace) -> int:
    cluster, replica_id = change_cluster_file(arguments.file, lambda document: add_replica(
        document, arguments.public_key, arguments.address, bind=arguments.bind, policy=arguments.policy,
        database=arguments.database, metrics=arguments.metrics))
    entry = cluster.replica(replica_id)
    binds = "" if entry.bind_address is None else f", listening on {format_address(entry.bind_address)}"
    print(f"added replica {replica_id}: reached at {format_address(entry.address)}{binds}, policy "
          f"{entry.policy.name}, database {os.path.relpath(entry.database, cluster.path.parent)}")
    _print_size(cluster)
    return EXIT_OK


def _run_next_epoch(arguments: argparse.Namespace) -> int:
    cluster = next_epoch_file(arguments.file, arguments.next_file, arguments.chain)
    print(f"wrote {arguments.next_file}: the next epoch of cluster {cluster.config.cluster_id}, genesis "
          f"{cluster.genesis_file.name}, chain {cluster.chain_file.name}; change it (bft cluster set-replica, "
          f"add-replica), then order it with bft operator reconfigure")
    return EXIT_OK


def _run_set_replica(arguments: argparse.Namespace) -> int:
    if arguments.public_key is None and arguments.address is None:
        raise UsageError("bft cluster set-replica: give --public-key, --address or both")

    def change(document: dict) -> None:
        try:
            set_replica(document, arguments.replica_id, public_key=arguments.public_key, address=arguments.address,
                        bind=arguments.bind, metrics=arguments.metrics)
        except ValueError as error:
            raise UsageError(f"bft cluster set-replica: {error}") from None
    cluster, _ = change_cluster_file(arguments.file, change)
    entry = cluster.replica(arguments.replica_id)
    print(f"replica {arguments.replica_id}: key {entry.public_key.hex()[:16]}…, reached at "
          f"{format_address(entry.address)}")
    return EXIT_OK


def _run_add_identity(arguments: argparse.Namespace) -> int:
    add = add_client if arguments.kind == "client" else add_operator
    cluster, _ = change_cluster_file(arguments.file,
                                     lambda document: add(document, arguments.identity, arguments.public_key))
    print(f"added {arguments.kind} {arguments.identity!r}")
    _print_size(cluster)
    return EXIT_OK


def _print_size(cluster: ClusterFile) -> None:
    config = cluster.config
    print(f"cluster {config.cluster_id}: {config.replica_count} replicas (tolerates {config.faulty_max} faulty, "
          f"quorum {config.quorum}), {len(cluster.clients)} clients, {len(cluster.operators)} operators")
    if config.faulty_max == 0:
        print("note: this cluster tolerates no faulty replica yet; 4 replicas tolerate 1 (n >= 3f+1)")
