"""A cluster file of a later epoch: the genesis file and the chain of epoch certificates that lead to it.

After a configuration change (``bft operator reconfigure``) the cluster is
described by a new cluster file, whose ``genesis`` and ``chain`` keys name the
genesis cluster file and the chain file: a JSON list of the epoch certificates
(the verdict certificates of the executed ``config-change`` commands, in order),
the same file ``bft verify --chain`` reads.  A replica joining a later epoch, and
a client opened on such a file, need the whole chain: the core judges every seq
under the configuration of its own epoch (specs/RECONFIGURATION.md).

``cluster_epochs`` checks the chain offline (``bft.core._epoch_chain``) and
that it ends in the configuration the file describes; every problem is a
``ConfigFileError`` with one sentence.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ._entries import ClusterFile
from ._file import load_cluster_file
from ._keys import ConfigFileError
from ..core import CertificateError, ClusterConfig, VerdictCertificate
from ..core._certificate import load_json_document
from ..core._epoch_chain import chain_epochs
from ..core._reconfiguration import (EPOCHS_MAX, ChangeError, change_document, configuration_digest,
                                     next_configuration, parse_change, sign_document)

CHAIN_FILE_BYTES_MAX = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ClusterEpochs:
    """The genesis configuration and the later epochs, as (seq after which it governs, configuration)."""

    genesis: ClusterConfig
    later: tuple[tuple[int, ClusterConfig], ...]

    @property
    def latest(self) -> ClusterConfig:
        return self.later[-1][1] if self.later else self.genesis


def read_chain_links(path: str | os.PathLike) -> list[VerdictCertificate]:
    """The epoch certificates in a chain file (a missing file is an empty chain)."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            data = file.read(CHAIN_FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        return []
    except OSError as error:
        raise ConfigFileError(path, f"cannot read the chain file ({error.strerror or error})") from None
    if len(data) > CHAIN_FILE_BYTES_MAX:
        raise ConfigFileError(path, f"the chain file is larger than {CHAIN_FILE_BYTES_MAX} bytes")
    try:
        document = load_json_document(data.decode("utf-8", errors="replace"))
        if not isinstance(document, list) or len(document) >= EPOCHS_MAX:
            raise CertificateError(f"the chain must be a JSON list of fewer than {EPOCHS_MAX} epoch certificates")
        return [VerdictCertificate.from_document(link, where=f"link {index + 1}: ")
                for index, link in enumerate(document)]
    except CertificateError as error:
        raise ConfigFileError(path, f"not a chain of epoch certificates ({error})") from None


def write_chain_links(path: str | os.PathLike, links: Sequence[VerdictCertificate]) -> None:
    """Replace the chain file with ``links``, atomically (a reader sees the old chain or the new one)."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump([json.loads(link.to_json()) for link in links], file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def cluster_epochs(cluster: ClusterFile) -> ClusterEpochs:
    """The epochs that lead to ``cluster``'s configuration, checked; ``ConfigFileError`` if they do not."""
    if cluster.chain_file is None or cluster.genesis_file is None:
        return ClusterEpochs(cluster.config, ())
    genesis = load_cluster_file(cluster.genesis_file)
    if genesis.chain_file is not None:
        raise ConfigFileError(genesis.path, "a genesis cluster file names no chain of its own")
    links = read_chain_links(cluster.chain_file)
    try:
        epochs = chain_epochs(genesis.config, links)
    except CertificateError as error:
        raise ConfigFileError(cluster.chain_file, f"the chain does not hold from {genesis.path.name}: {error}") \
            from None
    latest = epochs[-1][1]
    if configuration_digest(latest) != configuration_digest(cluster.config) or latest.limits != cluster.config.limits:
        raise ConfigFileError(cluster.path, f"this file does not describe epoch {len(epochs) - 1}, the last one "
                                            f"{cluster.chain_file.name} proves (was the change executed?)")
    return ClusterEpochs(genesis.config, tuple(epochs[1:]))


# ---------------------------------------------------------------------------- the operator's side of a change

def change_for_next_file(current: ClusterFile, next_file: ClusterFile,
                         operator_seeds: Mapping[str, bytes]) -> dict[str, Any]:
    """The signed ``config-change`` document that turns ``current``'s epoch into the one ``next_file`` describes.

    ``next_file`` names (``genesis``, ``chain``) the genesis of ``current`` and the chain file the change's
    certificate goes to; it must keep the limits (a change carries them over), and it gives every replica's
    address, which the change carries so that running replicas can reach new members.  Every check a replica
    makes at execution is made here first; ``ConfigFileError`` names the first that fails.
    """
    epochs = cluster_epochs(current)
    if next_file.chain_file is None or next_file.genesis_file is None:
        raise ConfigFileError(next_file.path, "a later epoch's file must name its 'genesis' file and its 'chain' "
                                              "file (the change's certificate is appended there)")
    if current.chain_file is not None and current.chain_file != next_file.chain_file:
        raise ConfigFileError(next_file.path, f"its chain file is not {current.chain_file}, the current chain")
    if configuration_digest(load_cluster_file(next_file.genesis_file).config) != configuration_digest(epochs.genesis):
        raise ConfigFileError(next_file.path, f"{next_file.genesis_file.name} is not the genesis of {current.path}")
    if next_file.config.limits != epochs.latest.limits:
        raise ConfigFileError(next_file.path, "its [limits] differ from the current ones; a change keeps them")
    addresses = tuple(next_file.addresses[replica_id] for replica_id in range(next_file.config.replica_count))
    document = change_document(next_file.config, len(epochs.later) + 1, epochs.latest, addresses)
    signed = sign_document(current.config.cluster_id, document, operator_seeds)
    try:
        next_configuration(parse_change(signed), epochs.latest)
    except ChangeError as error:
        raise ConfigFileError(next_file.path, f"the change would be refused: {error}") from None
    return signed


def append_epoch_certificate(next_file: ClusterFile, certificate: VerdictCertificate) -> ClusterEpochs:
    """Append the executed change's certificate to the chain file ``next_file`` names, once the whole chain
    with it holds and leads to ``next_file``'s configuration; the file is left as it was otherwise."""
    assert next_file.chain_file is not None
    links = read_chain_links(next_file.chain_file) + [certificate]
    genesis = load_cluster_file(next_file.genesis_file)
    try:
        epochs = chain_epochs(genesis.config, links)
    except CertificateError as error:
        raise ConfigFileError(next_file.chain_file, f"the certificate does not extend the chain: {error}") from None
    if configuration_digest(epochs[-1][1]) != configuration_digest(next_file.config):
        raise ConfigFileError(next_file.path, "the executed change is not the one this file describes")
    write_chain_links(next_file.chain_file, links)
    return ClusterEpochs(genesis.config, tuple(epochs[1:]))
