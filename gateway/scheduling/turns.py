"""When a waiting model's turn comes: the inputs of swap-aware admission (``gateway.scheduling.admission``,
the pure rule) read from the models' slots, for the scheduler.

What a swap is expected to take comes from what the models measured: a model's load (its last load's time),
a resident's drain (its requests in flight at its pace, ``ModelSlot.pace``, at most the drain grace), and the
loads queued behind one (each waits for that swap, then evicts the model it brought in). A model that has not
loaded, or served, here yet is expected to be as slow as the slowest that has. A turn then comes early
enough for its oldest request, and theirs, to have their models within their ``max_swap_wait``. Priorities
among loads that must evict (``yields``) weigh the same times. No I/O: it reads the slots' figures; the
scheduler owns the slots and the order of the loads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from gateway.scheduling.admission import Activity, Admission, Policy, Waiting, admit, expected_drain, turn_due
from gateway.scheduling.lifecycle import ModelSlot, State
from gateway.scheduling.placement import Resident


def expected_load(slot: ModelSlot, slots: Iterable[ModelSlot]) -> float:
    """How long ``slot``'s load is expected to take: its last load's time; before its first load here, the
    longest any of ``slots``' last loads took (0 before any)."""
    if slot.load_seconds is not None:
        return slot.load_seconds
    return max((s.load_seconds for s in slots if s.load_seconds is not None), default=0.0)


def pace(slot: ModelSlot, slots: Iterable[ModelSlot]) -> float | None:
    """``slot``'s pace (busy seconds per request that ended); before any of its requests has ended, the
    slowest of ``slots``' (None before any)."""
    if slot.pace is not None:
        return slot.pace
    return max((s.pace for s in slots if s.pace is not None), default=None)


class Turns:
    """Admission's view of the slots. ``slots`` (by name) and ``order`` (loads waiting for memory, by the turn
    they were asked for) are the scheduler's own, read live."""

    def __init__(
        self,
        slots: Mapping[str, ModelSlot],
        order: Mapping[ModelSlot, int],
        policy: Policy,
        max_swap_wait: float,
        drain_grace: float,
    ) -> None:
        self.slots = slots
        self.order = order
        self.policy = policy
        self.max_swap_wait = max_swap_wait  # the default of a model's own
        self.grace = drain_grace

    def swap_wait(self, slot: ModelSlot) -> float:
        wait = slot.manifest.max_swap_wait
        return self.max_swap_wait if wait is None else wait

    def admission(self, slot: ModelSlot, residents: Sequence[Resident], now: float) -> Admission:
        """Which busy residents ``slot``'s load must leave alone for now (``admission.admit``), the requests'
        classes included (a resident busy with batch work only does not hold up an interactive request),
        and the time a swap is expected to take: ``slot``'s load and the residents' drains. A resident with
        no work whose last request came from a client that now waits for ``slot`` is not kept for that
        client's next request (the linger): its next request is this one (one client switching models)."""
        linger, slots = self.policy.linger, list(self.slots.values())
        activity = [
            Activity(
                r.name,
                r.in_flight,
                s.queued,
                float("-inf") if switched else r.last_used,
                not switched and s.interactive_work(now, linger),
                expected_drain(s.in_flight, pace(s, slots), self.grace),
            )
            for r in residents
            if r.evictable and (s := self.slots.get(r.name)) is not None
            for switched in (s.in_flight == 0 and s.queued == 0 and slot.waited_for_by(s.last_client),)
        ]
        return admit(self.waiting(slot), activity, now, self.policy)

    def waiting(self, slot: ModelSlot) -> Waiting:
        """``slot``'s load as admission sees it: its oldest request, its bound, its class, its expected load
        time, and for each load asked for after it that still waits, the latest ``slot``'s turn may begin
        (before the residents' drain) for that one to have its model within its bound, counting the swaps
        before it: ``slot``'s load, then for each load in between and that one, the drain of the model
        before it (its waiting requests at its pace) and its own load."""
        slots = list(self.slots.values())
        load = expected_load(slot, slots)
        mine = self.order.get(slot)
        later = [
            s for s, turn in sorted(self.order.items(), key=lambda item: item[1]) if mine and turn > mine
        ]
        behind = []
        before, ahead = slot, load  # the model each one evicts, and the seconds from this turn to its load
        for other in (s for s in later if s.state is State.UNLOADED):
            ahead += expected_drain(before.waiting, pace(before, slots), self.grace)
            ahead += expected_load(other, slots)
            if other.oldest_wait is not None:
                behind.append(other.oldest_wait + self.swap_wait(other) - ahead)
            before = other
        return Waiting(slot.oldest_wait, self.swap_wait(slot), slot.interactive_waiting, load, tuple(behind))

    def yields(self, older: ModelSlot, slot: ModelSlot, now: float) -> bool:
        """Priorities among loads that must evict: one that only batch requests wait for (``older``) lets a
        load that an interactive request waits for (``slot``) go first, while that one's swap (its load,
        then its drain once the older one evicts it) still fits before the older one's turn
        (``admission.turn_due``, with the drain of the busiest resident): then it is first again, so batch
        work is delayed, never starved."""
        if self.policy.mode == "fifo" or older.interactive_waiting or not slot.interactive_waiting:
            return False
        if older.oldest_wait is None:
            return False
        slots = list(self.slots.values())
        swap = expected_load(slot, slots) + expected_drain(slot.waiting, pace(slot, slots), self.grace)
        busiest = max(
            (
                expected_drain(s.in_flight, pace(s, slots), self.grace)
                for s in slots
                if s.state is State.READY
            ),
            default=0.0,
        )
        return now + swap < turn_due(self.waiting(older), busiest, self.policy)
