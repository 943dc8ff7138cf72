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
from typing import Sequence

from ._entries import ClusterFile
from ._keys import ConfigFileError
from ..core import CertificateError, ClusterConfig, VerdictCertificate
from ..core._certificate import load_json_document
from ..core._epoch_chain import chain_epochs
from ..core._reconfiguration import EPOCHS_MAX, configuration_digest

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
    from ._file import load_cluster_file
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
