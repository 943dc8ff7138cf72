"""A cluster as its operators handle it: the cluster file, key files, and replica processes on one host.

- ``_file`` and ``_entries``: the cluster TOML (loaded, checked, written);
- ``_keys``: private key files, made where they live, and public key checks;
- ``_assembly``: a cluster file built from public keys and addresses (``bft cluster``);
- ``_create``: ``bft init``, the one-machine shortcut built on the same steps;
- ``_replica_process``: one replica process (``bft replica``): its store, node, metrics and signals;
- ``_processes`` and ``_ports``: replica processes of a local cluster (``bft up`` / ``down``);
- ``_status``: what a cluster's replicas report, and its verdict log's events (``bft status``).

The names below load with their module on first use (PEP 562): a client that only reads a cluster
file does not load the process or status code.
"""

import typing as _typing

from .._lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    **dict.fromkeys(("CLUSTER_FILE_NAME", "dump_cluster_file", "load_cluster_file", "write_cluster_file"), "._file"),
    **dict.fromkeys(("Address", "ClusterFile", "PolicySpec", "format_address", "parse_address"), "._entries"),
    **dict.fromkeys(("ConfigFileError", "create_key_file", "public_key_problem", "read_key_file", "write_key_file"),
                    "._keys"),
    **dict.fromkeys(("DEFAULT_POLICIES", "add_client", "add_operator", "add_replica", "change_cluster_file",
                     "create_cluster_file", "next_epoch_file", "set_replica"), "._assembly"),
    **dict.fromkeys(("CLIENTS_MAX", "REPLICAS_MAX", "REPLICAS_MIN", "create_cluster_directory", "free_loopback_ports",
                     "ports_of_sibling_clusters"), "._create"),
    **dict.fromkeys(("NodeFactory", "ReplicaStartError", "ReplicaUsageError", "open_store", "prepare_launch",
                     "run_replica", "serve_replica"), "._replica_process"),
    **dict.fromkeys(("LocalProcessCluster", "PortInUseError", "ReplicaProcessError", "accepts_connections"),
                    "._processes"),
    **dict.fromkeys(("AccountabilityView", "ReplicaStatus", "VerdictLogError", "cluster_status", "describe_event",
                     "most_advanced_view", "parse_metrics", "scrape", "verdict_log_events"), "._status"),
}

__all__ = sorted(_EXPORTS)

if _typing.TYPE_CHECKING:
    from ._assembly import (DEFAULT_POLICIES, add_client, add_operator, add_replica, change_cluster_file,
                            create_cluster_file, next_epoch_file, set_replica)
    from ._create import (CLIENTS_MAX, REPLICAS_MAX, REPLICAS_MIN, create_cluster_directory, free_loopback_ports,
                          ports_of_sibling_clusters)
    from ._entries import Address, ClusterFile, PolicySpec, format_address, parse_address
    from ._file import CLUSTER_FILE_NAME, dump_cluster_file, load_cluster_file, write_cluster_file
    from ._keys import ConfigFileError, create_key_file, public_key_problem, read_key_file, write_key_file
    from ._processes import LocalProcessCluster, PortInUseError, ReplicaProcessError, accepts_connections
    from ._replica_process import (NodeFactory, ReplicaStartError, ReplicaUsageError, open_store, prepare_launch,
                                   run_replica, serve_replica)
    from ._status import (AccountabilityView, ReplicaStatus, VerdictLogError, cluster_status, describe_event,
                          most_advanced_view, parse_metrics, scrape, verdict_log_events)


__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
