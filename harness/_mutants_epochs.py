"""Planted bugs in reconfiguration (specs/RECONFIGURATION.md section 6); ``_mutants`` adds them to its tables, so
every rule there (each patch point resolved when switched on, each used by a mutant, each mutant hunted) holds
for these too."""

from __future__ import annotations

from typing import ContextManager

from ._mutant_kinds import Mutant, PatchPoint

EPOCH_PATCH_POINTS: dict[str, PatchPoint] = {
    "epoch-ceiling": PatchPoint("bft.core._replica_epochs:Epochs.ceiling",
                                "where the old epoch's window ends once a configuration change executed"),
}


def _old_epoch_orders_past_activation() -> list[ContextManager]:
    return [EPOCH_PATCH_POINTS["epoch-ceiling"].patch(lambda self: None)]  # No ceiling: the window runs on past a.


EPOCH_MUTANTS: dict[str, Mutant] = {mutant.name: mutant for mutant in (
    Mutant("old-epoch-orders-past-activation", "the old epoch keeps ordering above the activation seq a, as if the "
           "change took effect at once (specs/RECONFIGURATION.md section 6; S11)",
           ("epoch-ceiling",), _old_epoch_orders_past_activation),
)}
