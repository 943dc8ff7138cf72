"""The replica's epoch component: which configuration it works in, and the switch at an activation seq.

The chain of epochs is replicated state (``_reconfiguration.EpochChain``, kept by
the execution state and rebuilt from the verdict log).  This component reads it
and applies it to the protocol (specs/RECONFIGURATION.md section 3):

- **The ceiling.**  Once a change with activation seq ``a`` has executed here,
  the window ends at ``a`` (``ceiling``): this replica pre-prepares, prepares
  and commits nothing above ``a`` in the old epoch, and rejects any message for
  a seq above it with the reason ``wrong-epoch``.
- **Activation.**  When the checkpoint at ``a`` is stable here (the old epoch's
  quorum certified it), the replica installs the next epoch: configuration,
  quorum, keys, primary (view mod the new n).  The new epoch starts in the next
  view, entered without a NEW-VIEW: no seq above ``a`` is prepared anywhere in
  the old epoch, so the new view has nothing to re-propose and starts at ``a + 1``.
- **Leaving.**  A replica that is not in the new epoch (its id is gone or its key
  was replaced) retires: it handles no further input, so its key counts for
  nothing above ``a``.
- **Which keys judge a message.**  Everything in the window is the current
  epoch's business.  Certificates of stable checkpoints (in VIEW-CHANGE, NEW-VIEW
  and state transfer) are checked with the keys and quorum of the epoch of
  their seq (``keys_for_seq``), so the old epoch's certificate at ``a`` hands over.
"""

from __future__ import annotations

from ._config import ClusterConfig
from ._crypto import KeyPair, Verifier
from ._errors import RemoteProtocolError
from ._messages import Message, Request, ViewChange
from ._reconfiguration import Epoch, configuration_digest

WRONG_EPOCH = "wrong-epoch"


def member_of(config: ClusterConfig, replica_id: int, public_key: bytes) -> bool:
    return replica_id < config.replica_count and config.replica_keys[replica_id] == public_key


class Epochs:
    def __init__(self, replica, public_key: bytes, later_epochs: tuple[tuple[int, ClusterConfig], ...]) -> None:
        self.replica = replica
        self.retired = False
        self._public_key = public_key
        self._staged_seed: bytes | None = None
        self._verifiers: dict[int, Verifier] = {0: replica._verifier}
        # The chain a joining replica was given, until the state it fetches holds it (then they must agree).
        genesis = self.chain.epochs[0]
        self._given = [genesis] + [Epoch(number, config, configuration_digest(config), starts_after)
                                   for number, (starts_after, config) in enumerate(later_epochs, start=1)]
        self.number = 0
        self.starts_after = 0  # The activation seq of the epoch this replica works in (0 for the genesis).
        if later_epochs:
            working = self._given[-1]
            replica.install_configuration(working.config, self._verifier_of(working))
            self.number, self.starts_after = working.number, working.starts_after

    @property
    def chain(self):
        """The replicated chain (``_reconfiguration.EpochChain``), rebuilt from the verdict log."""
        return self.replica.execution.accountability.epochs

    def known_epochs(self) -> list[Epoch]:
        """The longest chain this replica knows: the replicated one, or the one it was given to join with."""
        replicated = self.chain.epochs
        if len(replicated) < len(self._given):
            return self._given
        assert all(mine.config_digest == given.config_digest for mine, given in zip(replicated, self._given)), \
            "the certified log's epoch chain differs from the chain this replica was given to join with"
        return replicated

    def check_bounds(self) -> None:
        assert len(self._verifiers) <= len(self.known_epochs())
        assert self.number < len(self.known_epochs())

    def ceiling(self) -> int | None:
        """The activation seq of the next epoch, once known here: nothing above it is ordered in this one."""
        return self.chain.activation_after(self.replica.low_water + 1)

    def keys_for_seq(self, seq: int) -> tuple[ClusterConfig, Verifier]:
        """The configuration and verifier of the epoch that orders ``seq``, as far as this replica knows."""
        epoch = next(e for e in reversed(self.known_epochs()) if e.starts_after < max(seq, 1))
        return epoch.config, self._verifier_of(epoch)

    def stage_key(self, seed: bytes) -> None:
        self._staged_seed = seed

    def _verifier_of(self, epoch: Epoch) -> Verifier:
        verifier = self._verifiers.get(epoch.number)
        if verifier is None:
            config = epoch.config
            verifier = self._verifiers[epoch.number] = Verifier(config.cluster_id, config.replica_keys,
                                                                dict(config.client_keys))
        return verifier

    # ------------------------------------------------------------- rejecting other epochs' messages

    def check_view_change(self, view_change: ViewChange) -> None:
        """A VIEW-CHANGE belongs to the epoch after its stable checkpoint: it must be this replica's epoch."""
        ceiling = self.ceiling()
        if view_change.stable_seq < self.starts_after or (ceiling is not None and view_change.stable_seq >= ceiling):
            raise RemoteProtocolError(WRONG_EPOCH, f"a VIEW-CHANGE from stable seq {view_change.stable_seq} is not "
                                                   f"of epoch {self.number} (it starts after {self.starts_after})")

    def classify(self, error: RemoteProtocolError, message: Message) -> RemoteProtocolError:
        """A replica message that fails this epoch's key check but is signed under another known epoch is
        ``wrong-epoch`` (a removed replica, or a replaced key), not a forgery; anything else is unchanged."""
        if error.reason not in ("unknown-signer", "bad-signature") or isinstance(message, Request):
            return error
        # Only the neighbouring epochs: a bad signature must not cost a check per epoch of a long chain.
        for epoch in self.known_epochs()[max(self.number - 1, 0):self.number + 2]:
            if epoch.number == self.number or message.replica_id >= epoch.config.replica_count:
                continue
            try:
                self._verifier_of(epoch).verify(message)
            except RemoteProtocolError:
                continue
            return RemoteProtocolError(WRONG_EPOCH, f"replica {message.replica_id} signed this under epoch "
                                                   f"{epoch.number}, this replica works in epoch {self.number}")
        return error

    # ------------------------------------------------------------- activation

    def enter_if_due(self) -> None:
        """The low water mark moved: install the epoch that orders the next seq, if it is a later one."""
        replica = self.replica
        epoch = self.chain.epoch_of_seq(replica.low_water + 1)
        if epoch.number <= self.number:
            return  # The same epoch, or a joining replica whose fetched state has not reached its epoch yet.
        assert epoch.starts_after <= replica.low_water, (epoch.number, self.number)
        old_keys, new_keys = replica.config.replica_keys, epoch.config.replica_keys
        staying = frozenset(r for r in range(min(len(old_keys), len(new_keys))) if old_keys[r] == new_keys[r])
        rotated = self._staged_seed is not None and not member_of(epoch.config, replica.replica_id, self._public_key) \
            and member_of(epoch.config, replica.replica_id, KeyPair.from_seed(self._staged_seed).public_key)
        replica.install_configuration(epoch.config, self._verifier_of(epoch), self._staged_seed if rotated else None)
        if rotated:
            self._public_key, self._staged_seed = KeyPair.from_seed(self._staged_seed).public_key, None
        self.number, self.starts_after = epoch.number, epoch.starts_after
        # Removed or replaced: it stops, so its key counts for nothing above the switch.  It still forgets what
        # the old epoch's peers said below, so that its state keeps within the new epoch's bounds.
        self.retired = not member_of(epoch.config, replica.replica_id, self._public_key)
        # What the others said in the old epoch is kept only for replicas that stay with the same key.
        replica.requests.keep_votes_of(staying)
        replica.catch_up.forget_peers_outside(staying)
        replica.accuser.forget_peers_outside(staying)
        checkpointing = replica.checkpointing
        checkpointing.checkpoints_ahead = {r: s for r, s in checkpointing.checkpoints_ahead.items() if r in staying}
        replica.views.enter_epoch(staying)
