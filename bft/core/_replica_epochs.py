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
from ._crypto import Verifier
from ._errors import RemoteProtocolError
from ._messages import Message, Request, ViewChange
from ._reconfiguration import Epoch, EpochChain

WRONG_EPOCH = "wrong-epoch"


def member_of(config: ClusterConfig, replica_id: int, public_key: bytes) -> bool:
    return replica_id < config.replica_count and config.replica_keys[replica_id] == public_key


class Epochs:
    def __init__(self, replica, public_key: bytes) -> None:
        self.replica = replica
        self.number = 0
        self.starts_after = 0  # The activation seq of the epoch this replica works in (0 for the genesis).
        self.retired = False
        self._public_key = public_key
        self._verifiers: dict[int, Verifier] = {0: replica._verifier}

    @property
    def chain(self) -> EpochChain:
        return self.replica.execution.accountability.epochs

    def check_bounds(self) -> None:
        assert len(self._verifiers) <= len(self.chain.epochs)
        assert self.starts_after <= self.replica.low_water or self.number == 0

    def ceiling(self) -> int | None:
        """The activation seq of the next epoch, once known here: nothing above it is ordered in this one."""
        return self.chain.activation_after(self.replica.low_water + 1)

    def keys_for_seq(self, seq: int) -> tuple[ClusterConfig, Verifier]:
        """The configuration and verifier of the epoch that orders ``seq``, as far as this replica knows."""
        epoch = self.chain.epoch_of_seq(max(seq, 1))
        return epoch.config, self._verifier_of(epoch)

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
        for epoch in self.chain.epochs:
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
        if epoch.number == self.number:
            return
        assert epoch.number > self.number and epoch.starts_after <= replica.low_water, (epoch.number, self.number)
        old_keys, new_keys = replica.config.replica_keys, epoch.config.replica_keys
        staying = frozenset(r for r in range(min(len(old_keys), len(new_keys))) if old_keys[r] == new_keys[r])
        replica.install_configuration(epoch.config, self._verifier_of(epoch))
        self.number, self.starts_after = epoch.number, epoch.starts_after
        self._verifiers = {number: v for number, v in self._verifiers.items() if number >= epoch.number - 1}
        if not member_of(epoch.config, replica.replica_id, self._public_key):
            self.retired = True  # Removed or replaced: it stops, so its key counts for nothing above the switch.
            return
        # Joining replicas (new ids, new keys) have nothing to forget; what the others said in the old epoch
        # is kept only for replicas that stay with the same key.
        replica.requests.keep_votes_of(staying)
        replica.catch_up.forget_peers_outside(staying)
        replica.accuser.forget_peers_outside(staying)
        checkpointing = replica.checkpointing
        checkpointing.checkpoints_ahead = {r: s for r, s in checkpointing.checkpoints_ahead.items() if r in staying}
        replica.views.enter_epoch(staying)
