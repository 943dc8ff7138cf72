"""The model checker's side of the driving contract (``bft.core.apply_ready``): one replica in one world.

Every Ready the checker's replicas produce is applied through ``apply_ready``,
the same steps the runtime takes, so the checker explores the protocol that
runs: log reads are answered from the replica's store, evidence goes back to
the core, and dead votes are pruned from the store as the runtime prunes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bft.core import LogEntry, LogRead, Message, Ready, Rejection, Reply, Request, request_digest
from bft.policy import evaluate_fail_safe

from ._model_menu import POLICIES

if TYPE_CHECKING:  # The checker imports this module; these names are only annotations here.
    from ._modelcheck import _Model, _World


class ModelIO:
    """The checker's side of the driving contract for one replica in one world: the Byzantine replica's
    output goes through its adversary; what correct replicas sign is kept for S7."""

    def __init__(self, model: _Model, world: _World, replica_id: int) -> None:
        self.model, self.world, self.replica_id = model, world, replica_id
        self.byzantine = replica_id == model.adversary.replica_id

    def _transformed(self, destination: int | str, message: Message) -> list[Message]:
        if not self.byzantine:
            return [message]
        model = self.model
        return model.adversary.transform(self.world.replicas[self.replica_id], destination, message,
                                         model.byzantine_signer)

    def persist(self, items: tuple[Message | LogEntry, ...]) -> int:
        return self.world.stores[self.replica_id].persist(items)

    def send_to_replica(self, destination: int, message: Message) -> None:
        world, replica_id = self.world, self.replica_id
        for each in self._transformed(destination, message):
            self.model._note_evidence(each)
            if not self.byzantine and getattr(each, "replica_id", None) == replica_id:
                world.wire[replica_id].append(each)
            self.model._send(world, replica_id, destination, each)

    def send_to_client(self, client_id: str, reply: Reply) -> None:
        world = self.world
        for each in self._transformed(client_id, reply):
            if isinstance(each, Reply):
                self.model._note_evidence(each)
                if world.client_shared:
                    world.client, world.client_shared = self.model.codec.clone(world.client), False
                certificate = world.client.on_reply(each)
                if certificate is not None:
                    world.certificates[certificate.request.key] = certificate

    def finalized(self, entries: tuple[LogEntry, ...]) -> None:
        """The invariants read the executed log from the replicas and stores themselves."""

    def forget_votes(self, request_digests: tuple[bytes, ...]) -> None:
        if request_digests:  # As the runtime does: a restart then recovers without them.
            self.world.stores[self.replica_id].prune_votes(request_digests)

    def rejected(self, rejection: Rejection) -> None:
        """Rejections show in the step's description (``_Model.apply``); evidence goes back to the core."""

    def read_log(self, read: LogRead) -> tuple[LogEntry, ...]:
        return self.world.stores[self.replica_id].read_log(read.first_position, read.last_position)

    def evaluate(self, request: Request) -> None:
        model, replica_id = self.model, self.replica_id
        decision = evaluate_fail_safe(POLICIES[replica_id], request, replica_id)
        digest = request_digest(model.config.cluster_id, request)
        self.feed(self.world.replicas[replica_id].record_decision(digest, decision.decision, decision.reason))

    def feed(self, ready: Ready) -> None:
        self.model._handle(self.world, self.replica_id, ready)
