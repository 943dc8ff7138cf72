"""Reconfiguration through consensus: the ``config-change`` command and the chain of epochs (specs/RECONFIGURATION.md).

A ``config-change`` is an accountability command (``_accountability``) signed by
an operator, ordered at CRITICAL risk like any request, whose action document
holds the complete next configuration and ``operator_threshold`` operator
signatures of the current epoch over it::

    {"command": "config-change", "epoch": 1, "previous": HEX, "replicas": [B64, ...], "faulty_max": 1,
     "clients": {"client-0": B64}, "operators": {"alice": B64}, "operator_threshold": 1,
     "signatures": {"alice": B64}, "addresses": ["10.0.0.1:7000", ...]}

``addresses`` is optional: where each replica of the next configuration is
reached, "HOST:PORT" in the order of ``replicas``.  It is signed with the rest
(operators sign everything but the signatures) but is not part of the
configuration digest nor of ``ClusterConfig``: an address only tells a replica
process where to dial, and every link authenticates the configured key, so a
wrong address costs liveness, never safety (specs/RECONFIGURATION.md section 7).

Replica ids are positions in ``replicas``: a replica keeps its id across epochs,
a replacement puts a new key at an existing id, growth appends ids and shrinking
drops the highest ones.  Limits and accountability options carry over; the
verdict rules are the defaults for the new n and f when the current ones are the
defaults (otherwise the current rules must still be valid for the new n and f).

Everything here is pure and deterministic: whether a change is valid is
decided at execution, from the change and the replicated state at its log
position, identically on every correct replica.  ``EpochChain`` is part of that
replicated state: the epochs executed so far and the seq after which each one
governs (its activation seq ``a`` for the epoch it follows).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

import nacl.exceptions
import nacl.signing

from ._codec import digest, pack
from ._config import ClusterConfig, ConfigError
from ._quorum import quorum_size
from ._verdict import default_rules

CONFIG_CHANGE = "config-change"
CONFIG_CHANGE_FIELDS = frozenset({"epoch", "previous", "replicas", "faulty_max", "clients", "operators",
                                  "operator_threshold", "signatures", "addresses"})
SIGNING_DOMAIN = b"bft/config-change/v1\x00"
EPOCHS_MAX = 1_000  # A bound on the chain a replica keeps; a deployment reconfigures far less often.
HOST_BYTES_MAX = 253  # The longest DNS name.


class ChangeError(ValueError):
    """A config-change document that is malformed or does not apply; the message says why."""


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """A parsed config-change: the next epoch's configuration, the previous digest, operator signatures."""

    epoch: int
    previous_digest: bytes
    replica_keys: tuple[bytes, ...]
    faulty_max: int
    client_keys: Mapping[str, bytes]
    operator_keys: Mapping[str, bytes]
    operator_threshold: int
    signatures: Mapping[str, bytes]
    unsigned_text: bytes  # The canonical document without its signatures (``signing_text`` binds the cluster).
    addresses: tuple[tuple[str, int], ...] = ()  # (host, port) per replica, or () when the change names none.


def configuration_digest(config: ClusterConfig) -> bytes:
    """The digest the next change names as ``previous``: everything a config-change can set, canonically."""
    clients = [[client_id, config.client_keys[client_id]] for client_id in config.ordinary_client_ids]
    operators = [[name, key] for name, key in sorted(config.operator_keys.items())]
    return digest(pack([config.cluster_id, list(config.replica_keys), config.faulty_max, clients, operators,
                        config.operator_threshold]))


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def change_document(config: ClusterConfig, epoch: int, previous: ClusterConfig,
                    addresses: tuple[tuple[str, int], ...] = ()) -> dict[str, Any]:
    """The unsigned document that turns ``previous`` (epoch ``epoch - 1``) into ``config``; ``addresses``, if
    given, says where each replica of ``config`` is reached."""
    assert not addresses or len(addresses) == config.replica_count
    where = {"addresses": [_address_text(address) for address in addresses]} if addresses else {}
    return {**where, "command": CONFIG_CHANGE, "epoch": epoch, "previous": configuration_digest(previous).hex(),
            "replicas": [_b64(key) for key in config.replica_keys], "faulty_max": config.faulty_max,
            "clients": {c: _b64(config.client_keys[c]) for c in config.ordinary_client_ids},
            "operators": {name: _b64(key) for name, key in sorted(config.operator_keys.items())},
            "operator_threshold": config.operator_threshold}


def _address_text(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _addresses(value: Any, replica_count: int) -> tuple[tuple[str, int], ...]:
    """The optional ``addresses``: one distinct "HOST:PORT" per replica, in the order of ``replicas``."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) != replica_count:
        raise ChangeError(f"'addresses' must list one HOST:PORT per replica ({replica_count})")
    parsed = []
    for index, text in enumerate(value):
        host, separator, port = text.rpartition(":") if isinstance(text, str) else ("", "", "")
        host = host.removeprefix("[").removesuffix("]")
        if not (separator and host and host.isprintable() and len(host.encode()) <= HOST_BYTES_MAX
                and " " not in host and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
            raise ChangeError(f"replica {index}'s address must be HOST:PORT with a port in [1, 65535]")
        parsed.append((host, int(port)))
    if len(set(parsed)) != len(parsed):
        raise ChangeError("'addresses' names one address for two replicas")
    return tuple(parsed)


def _unsigned_text(document: Mapping[str, Any]) -> bytes:
    unsigned = {name: value for name, value in document.items() if name != "signatures"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signing_text(cluster_id: str, unsigned_text: bytes) -> bytes:
    """What an operator signs: the canonical document without its signatures, bound to the cluster."""
    return SIGNING_DOMAIN + cluster_id.encode() + b"\x00" + unsigned_text


def sign_document(cluster_id: str, document: Mapping[str, Any], operator_seeds: Mapping[str, bytes]) -> dict:
    """``document`` with the signatures of the operators whose private key seeds are given (an operator's tool)."""
    text = signing_text(cluster_id, _unsigned_text(document))
    signatures = {name: _b64(nacl.signing.SigningKey(seed).sign(text).signature)
                  for name, seed in sorted(operator_seeds.items())}
    return {**document, "signatures": signatures}


def _key(text: Any, what: str, length: int = 32) -> bytes:
    if not isinstance(text, str):
        raise ChangeError(f"{what} must be base64 text")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ChangeError(f"{what} is not base64") from None
    if len(raw) != length:
        raise ChangeError(f"{what} must decode to {length} bytes")
    return raw


def _keys_by_name(value: Any, what: str, length: int = 32) -> dict[str, bytes]:
    if not isinstance(value, dict) or not all(isinstance(name, str) and name for name in value):
        raise ChangeError(f"{what!r} must map non-empty names to base64 keys")
    return {name: _key(text, f"{what} {name[:40]!r}", length) for name, text in value.items()}


def _small_int(document: Mapping[str, Any], name: str, minimum: int, maximum: int) -> int:
    value = document.get(name)
    if type(value) is not int or not minimum <= value <= maximum:
        raise ChangeError(f"{name!r} must be an integer in [{minimum}, {maximum}]")
    return value


def parse_change(document: Mapping[str, Any]) -> ConfigChange:
    """Check a config-change document's shape without any state; raise ``ChangeError`` naming the problem."""
    unknown = set(document) - CONFIG_CHANGE_FIELDS - {"command"}
    if unknown:
        raise ChangeError(f"unknown fields for {CONFIG_CHANGE}: {', '.join(sorted(unknown))[:80]}")
    previous = document.get("previous")
    if not isinstance(previous, str) or len(previous) != 64:
        raise ChangeError("'previous' must be the 64 hex digits of the previous configuration's digest")
    try:
        previous_digest = bytes.fromhex(previous)
    except ValueError:
        raise ChangeError("'previous' must be hex") from None
    replicas = document.get("replicas")
    if not isinstance(replicas, list) or not 1 <= len(replicas) <= 128:
        raise ChangeError("'replicas' must list 1 to 128 base64 public keys")
    return ConfigChange(
        epoch=_small_int(document, "epoch", 1, 2**31), previous_digest=previous_digest,
        replica_keys=tuple(_key(text, f"replica {index}'s key") for index, text in enumerate(replicas)),
        faulty_max=_small_int(document, "faulty_max", 0, 42),
        client_keys=MappingProxyType(_keys_by_name(document.get("clients"), "clients")),
        operator_keys=MappingProxyType(_keys_by_name(document.get("operators"), "operators")),
        operator_threshold=_small_int(document, "operator_threshold", 1, 128),
        signatures=MappingProxyType(_keys_by_name(document.get("signatures"), "signatures", 64)),
        unsigned_text=_unsigned_text(document), addresses=_addresses(document.get("addresses"), len(replicas)))


def _signature_problem(change: ConfigChange, current: ClusterConfig) -> str | None:
    text = signing_text(current.cluster_id, change.unsigned_text)
    valid = 0
    for name, signature in sorted(change.signatures.items()):
        key = current.operator_keys.get(name)
        if key is None:
            return f"{name[:40]!r} is not an operator of the current epoch"
        try:
            nacl.signing.VerifyKey(key).verify(text, signature)
        except nacl.exceptions.BadSignatureError:
            return f"operator {name[:40]!r}'s signature does not verify"
        valid += 1
    if valid < current.operator_threshold:
        return f"{valid} operator signatures, the current epoch needs {current.operator_threshold}"
    return None


def next_configuration(change: ConfigChange, current: ClusterConfig) -> ClusterConfig:
    """The configuration ``change`` describes, checked like a configuration file; raises ``ChangeError``."""
    n, f = len(change.replica_keys), change.faulty_max
    if n < 3 * f + 1:
        raise ChangeError(f"{n} replicas cannot tolerate {f} faulty ones: n >= 3f+1 is required")
    current_defaults = default_rules(current.replica_count, current.faulty_max, current.quorum)
    rules = None if dict(current.rules) == current_defaults else dict(current.rules)
    if change.operator_threshold > max(len(change.operator_keys), 1):
        raise ChangeError(f"operator_threshold {change.operator_threshold} exceeds the "
                          f"{len(change.operator_keys)} operators of the new configuration")
    if quorum_size(n, f) > n:
        raise ChangeError("the quorum would exceed the replica count")
    try:
        return ClusterConfig.create(current.cluster_id, change.replica_keys, dict(change.client_keys), f, rules,
                                    current.limits, dict(change.operator_keys), current.accountability,
                                    operator_threshold=change.operator_threshold)
    except ConfigError as error:
        raise ChangeError(f"the new configuration is invalid: {error}") from None


def activation_seq(executed_seq: int, checkpoint_interval: int, log_window: int) -> int:
    """The first checkpoint seq at least a whole window above the change's seq (RECONFIGURATION.md §3.2)."""
    assert executed_seq >= 1 and checkpoint_interval >= 1 and log_window >= checkpoint_interval
    lowest = executed_seq + log_window
    activation = -(-lowest // checkpoint_interval) * checkpoint_interval
    assert activation >= lowest and activation % checkpoint_interval == 0
    return activation


@dataclass(frozen=True, slots=True)
class Epoch:
    """One configuration and the seq after which it governs (0 for the genesis epoch)."""

    number: int
    config: ClusterConfig
    config_digest: bytes
    starts_after: int
    # Where the replicas are reached, as the change said ((host, port) per replica), or () if it did not say:
    # for the runtime only (the digest, the checkpoints and the quorums never look at it).
    addresses: tuple[tuple[str, int], ...] = ()


class EpochChain:
    """The epochs executed so far, in order; part of the replicated state (a function of the verdict log)."""

    def __init__(self, genesis: ClusterConfig) -> None:
        self.epochs: list[Epoch] = [Epoch(0, genesis, configuration_digest(genesis), 0)]

    @property
    def latest(self) -> Epoch:
        return self.epochs[-1]

    def epoch_of_seq(self, seq: int) -> Epoch:
        """The epoch whose replicas order ``seq``: the last one that starts below it."""
        assert seq >= 1, seq
        return next(epoch for epoch in reversed(self.epochs) if epoch.starts_after < seq)

    def activation_after(self, seq: int) -> int | None:
        """The activation seq of an epoch that starts after ``seq`` is ordered.  At most one is ever pending,
        and it is the latest (``record`` appends only growing activation seqs), so only the latest is looked
        at: the window's top asks this on every input."""
        starts_after = self.latest.starts_after
        return starts_after if starts_after >= seq else None

    def record(self, change: ConfigChange, seq: int) -> list[dict[str, Any]]:
        """Execute a config-change at ``seq``: validate it against the epoch of ``seq``, then append the epoch.

        Raises ``ChangeError`` (the entry becomes a DENY with the reason) and changes nothing if invalid.
        """
        current = self.epoch_of_seq(seq)
        if self.latest is not current:
            raise ChangeError(f"epoch {self.latest.number} is already pending (it starts after seq "
                              f"{self.latest.starts_after})")
        if change.epoch != current.number + 1:
            raise ChangeError(f"the change is for epoch {change.epoch}, the next epoch is {current.number + 1}")
        if change.previous_digest != current.config_digest:
            raise ChangeError("'previous' does not name the current configuration")
        if len(self.epochs) >= EPOCHS_MAX:
            raise ChangeError(f"the chain holds at most {EPOCHS_MAX} epochs")
        problem = _signature_problem(change, current.config)
        if problem:
            raise ChangeError(problem)
        config = next_configuration(change, current.config)
        limits = config.limits
        activation = activation_seq(seq, limits.checkpoint_interval, limits.log_window)
        config_digest = configuration_digest(config)
        assert activation > current.starts_after, (activation, current.starts_after)
        self.epochs.append(Epoch(change.epoch, config, config_digest, activation, change.addresses))
        return [{"event": "epoch-change", "epoch": change.epoch, "configuration": config_digest.hex(),
                 "activation_seq": activation, "replicas": config.replica_count, "faulty_max": config.faulty_max}]

    def to_wire(self) -> list:
        """What checkpoints certify of the chain: each epoch's number, configuration digest and start."""
        return [[epoch.number, epoch.config_digest, epoch.starts_after] for epoch in self.epochs]
