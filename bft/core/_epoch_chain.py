"""Offline verification across epochs: the chain of configuration changes from the genesis (issue 20, item 3).

An *epoch certificate* is the verdict certificate of the ``config-change`` that
created the epoch: the operator's request, with the next configuration and the
operator signatures inside it, and f+1 matching replies of the previous epoch's
replicas saying it executed as ALLOW at seq ``s``.  That is everything a
verifier needs, with no replica's help:

- the certificate verifies under the previous epoch's configuration (keys, f and
  the CRITICAL rule: every replica of that epoch voted ALLOW), so a correct
  replica of that epoch executed the change at ``s``;
- the change names the previous configuration's digest, is signed by
  ``operator_threshold`` of its operators, and describes a valid configuration
  (the same checks every replica ran when it executed it);
- the activation seq follows from ``s`` and the limits (``activation_seq``), so
  the verifier knows which epoch ordered every later seq.

A verdict certificate is then checked under the configuration of the epoch of
its seq.  A certificate for a seq after the activation seq of an epoch that
removed (or re-keyed) a replica therefore needs the new epoch's keys: the old
key signs nothing that verifies there, even if it leaks after its removal.
(Each epoch certificate is itself judged by the chain before it, so a forged
link needs the keys of a previous epoch's replicas *and* operators.)
"""

from __future__ import annotations

from typing import Sequence

from ._accountability import CommandError, parse_command
from ._certificate import VerdictCertificate
from ._config import ClusterConfig
from ._errors import CertificateError
from ._messages import Decision
from ._reconfiguration import CONFIG_CHANGE, ChangeError, EpochChain, activation_seq


def chain_epochs(genesis: ClusterConfig, links: Sequence[VerdictCertificate]) -> list[tuple[int, ClusterConfig]]:
    """The epochs the links prove, as (seq after which it governs, configuration), the genesis first.

    Raises ``CertificateError`` naming the first link that does not hold.
    """
    chain = EpochChain(genesis)
    for number, link in enumerate(links, start=1):
        where = f"epoch {number}'s certificate"
        current = chain.latest
        if link.seq <= current.starts_after:
            raise CertificateError(f"{where} is at seq {link.seq}, before epoch {current.number} began")
        link.verify(current.config)  # Raises CertificateError with the reason.
        if link.decision is not Decision.ALLOW:
            raise CertificateError(f"{where} is a {link.decision.value}, not an executed change")
        try:
            command = parse_command(link.request.client_id, link.request.action, link.request.risk)
            if command.kind != CONFIG_CHANGE:
                raise CertificateError(f"{where} is a {command.kind} command, not a configuration change")
            chain.record(command.change, link.seq)
        except (CommandError, ChangeError) as error:
            raise CertificateError(f"{where} does not hold: {error}") from None
        limits = genesis.limits
        assert chain.latest.starts_after == activation_seq(link.seq, limits.checkpoint_interval, limits.log_window)
    return [(epoch.starts_after, epoch.config) for epoch in chain.epochs]


def verify_in_chain(certificate: VerdictCertificate, genesis: ClusterConfig,
                    links: Sequence[VerdictCertificate]) -> int:
    """Check ``certificate`` under the configuration of the epoch of its seq; return that epoch's number.

    Raises ``CertificateError`` if the chain or the certificate does not hold.
    """
    epochs = chain_epochs(genesis, links)
    number = max(index for index, (starts_after, _) in enumerate(epochs) if starts_after < certificate.seq)
    certificate.verify(epochs[number][1])
    return number
