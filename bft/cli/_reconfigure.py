"""``bft operator reconfigure``: an operator changes the configuration of a running cluster through consensus.

The operator writes the next epoch's cluster file (NEXT.toml: the replicas with
their public keys and addresses, the clients, the operators; the same limits;
``genesis`` and ``chain`` naming the genesis cluster file and the chain file).
The command builds the ``config-change`` from it (specs/RECONFIGURATION.md),
signs it with the operator's key, submits it at CRITICAL risk through the
current configuration (CLUSTER.toml) and waits for the verdict.  On ALLOW it
appends the change's certificate to the chain file, after checking that the
whole chain holds and leads to NEXT.toml; NEXT.toml is then the cluster file
for new replicas (``bft up``, ``bft replica``) and clients, and ``bft verify
--chain`` checks certificates of every epoch with it.

Exit codes as ``bft operator quarantine``: 0 applied (ALLOW), 3 refused (DENY, with
the reason), 4 no certificate in time (REFUSED); 2 for a mistake in the files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import EXIT_BY_STATUS, SUBMIT_TIMEOUT_MS_MAX, UsageError, _bounded_int, _cluster_path, outcome_document
from ..cluster import load_cluster_file
from ..core import LocalProtocolError, Risk, operator_signer_id

RECONFIGURE = "reconfigure"


def add_command(actions) -> None:
    command = actions.add_parser(RECONFIGURE, help="change the configuration (replace, add, remove replicas; keys)",
                                 description="Order a configuration change signed with the operator's key: the "
                                             "cluster moves to the configuration NEXT.toml describes at a stable "
                                             "checkpoint.  On ALLOW the change's certificate is appended to the "
                                             "chain file NEXT.toml names.  Exit code 0 if applied, 3 if refused, "
                                             "4 if no answer came in time.")
    command.add_argument("--config", type=_cluster_path, required=True, metavar="CLUSTER.toml",
                         help="the current configuration's cluster file")
    command.add_argument("--next", type=Path, required=True, metavar="NEXT.toml", dest="next_file",
                         help="the next configuration's cluster file (with 'genesis' and 'chain')")
    command.add_argument("--operator", required=True, metavar="NAME", help="the operator id in the cluster file")
    command.add_argument("--key-file", type=Path, help="the operator's key file (default: the one CLUSTER.toml names)")
    command.add_argument("--timeout-ms", type=_bounded_int(1, SUBMIT_TIMEOUT_MS_MAX), default=10_000,
                         help="the change's deadline (10000)")
    command.set_defaults(handler=run_reconfigure)


def run_reconfigure(arguments: argparse.Namespace) -> int:
    from ..client import BlockingClient
    from ..cluster._epochs import append_epoch_certificate, change_for_next_file
    current = load_cluster_file(arguments.config)
    next_file = load_cluster_file(arguments.next_file)
    signer_id = operator_signer_id(arguments.operator)
    current.operator(arguments.operator)  # An unknown operator: one sentence naming the known ones.
    seed = current.client_seed(signer_id, arguments.key_file)
    document = change_for_next_file(current, next_file, {arguments.operator: seed})
    with BlockingClient(current, signer_id, key_file=arguments.key_file, timeout_ms=arguments.timeout_ms) as client:
        try:
            outcome = client.submit(document, Risk.CRITICAL, timeout_ms=arguments.timeout_ms)
        except LocalProtocolError as error:
            raise UsageError(f"bft operator {RECONFIGURE}: the change cannot be sent: {error}") from None
    result = {"command": {name: value for name, value in document.items() if name != "signatures"},
              **outcome_document(outcome)}
    if outcome.certificate is not None and outcome.allowed:
        epochs = append_epoch_certificate(next_file, outcome.certificate)
        starts_after, _ = epochs.later[-1]
        result["epoch"] = {"number": len(epochs.later), "starts_after_seq": starts_after,
                           "chain": str(next_file.chain_file)}
    print(json.dumps(result, indent=2))
    return EXIT_BY_STATUS[outcome.status]
