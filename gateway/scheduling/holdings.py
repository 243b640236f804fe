"""What holds memory, per device, as the placement sees it: the models whose state holds memory, and the
memory an eviction freed for a load that has not begun yet, kept for that load (issue 16: without it, the
evicted model's next request took the memory back before the load could, and the load never came: 206
reloads of one model in 60 s while two others answered twice each).

The scheduler owns the one ``Holdings``: memory is kept for a load under its decision lock, and released
when the load begins (under the lock) or ends (its task's done callback)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gateway.scheduling.lifecycle import HOLDS_MEMORY, ModelSlot, State
from gateway.scheduling.placement import Option, Resident


class Holdings:
    def __init__(self, slots: Mapping[str, ModelSlot], budgets: Mapping[str, int]) -> None:
        """``slots`` and ``budgets``: the scheduler's own (a reload and a lost host change them in place)."""
        self._slots = slots
        self._budgets = budgets
        self._kept: dict[ModelSlot, Mapping[str, int]] = {}  # freed for a load, kept for it

    def keep(self, slot: ModelSlot, chosen: Iterable[Option]) -> None:
        """Keep what ``chosen`` (the options ``slot``'s load will take) claims for that load."""
        total: dict[str, int] = {}
        for option in chosen:
            for device, n in option.claims.items():
                total[device] = total.get(device, 0) + n
        self._kept[slot] = total

    def release(self, slot: ModelSlot) -> None:
        """``slot``'s load began (the memory is its own from there) or gave up."""
        self._kept.pop(slot, None)

    def keeping(self) -> list[ModelSlot]:
        """The slots memory is kept for."""
        return list(self._kept)

    def residents(self, excluding: ModelSlot | None = None) -> list[Resident]:
        """The models holding memory now, and the memory kept for loads that evicted for it (not evictable:
        on its way in), except ``excluding``'s own."""
        held = [
            Resident(
                name=s.name,
                claims=s.claims,
                pinned=s.pinned,
                in_flight=s.in_flight,
                last_used=s.last_used,
                # loaded for waiting requests: theirs until they have their leases (llama-swap's rule too)
                evictable=s.state is State.READY and not s.waiting,
            )
            for s in self._slots.values()
            if s.state in HOLDS_MEMORY
        ]
        kept = [
            Resident(name=s.name, claims=claims, evictable=False)
            for s, claims in self._kept.items()
            if s is not excluding and s.state is State.UNLOADED
        ]
        return held + kept

    def used(self) -> dict[str, int]:
        """Bytes held per device (every budgeted device, 0 when nothing holds it)."""
        return _per_device(self._budgets, [r.claims for r in self.residents()])

    def reserved(self) -> dict[str, int]:
        """Of ``used``, the bytes per device held for loads under way: models loading, and memory an eviction
        freed for a load that has not started yet."""
        loading = [s.claims for s in self._slots.values() if s.state is State.LOADING]
        kept = [claims for s, claims in self._kept.items() if s.state is State.UNLOADED]
        return _per_device(self._budgets, [*loading, *kept])


def _per_device(budgets: Mapping[str, int], claims: Iterable[Mapping[str, int]]) -> dict[str, int]:
    held = dict.fromkeys(budgets, 0)
    for claim in claims:
        for device, n in claim.items():
            held[device] = held.get(device, 0) + n
    return held
