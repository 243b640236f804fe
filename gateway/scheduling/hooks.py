"""What the scheduler tells and asks the rest of the gateway, as protocols: the events it reports (the
metrics), the loads it shows (the memory footprint's measurement), and the loads it leaves to another
gateway (cluster mode). ``Quiet`` is the one that does nothing, for a scheduler nobody watches."""

from __future__ import annotations

from typing import Protocol

from gateway.scheduling.lifecycle import ModelSlot


class Events(Protocol):
    """What the scheduler reports as it happens (the metrics implement it)."""

    def load_finished(self, model: str, seconds: float, result: str) -> None:
        """``result``: success, failure or cancelled."""

    def evicted(self, model: str, reason: str) -> None:
        """``reason``: lru, swap, ttl, admin, failure, reload or host-down."""

    def waited_for_model(self, model: str, seconds: float) -> None:
        """A request was admitted after waiting ``seconds`` for its model (a load, a swap, a drain)."""

    def waited_past_bound(self, model: str) -> None:
        """That wait was longer than swap-aware admission's bound (``max_swap_wait`` plus the load)."""


class LoadWatch(Protocol):
    """What sees each load from just before its engines start to just after they are ready (the memory
    footprint's measurement, ``gateway.observability.footprint``). Both are cheap and never raise."""

    def starting(self, slot: ModelSlot) -> None: ...

    def loaded(self, slot: ModelSlot) -> None: ...


class Delegate(Protocol):
    """Cluster mode (``gateway.fleet``): loads this gateway leaves to the fleet's leader. A delegated slot is
    never loaded here: ``request`` asks the leader and returns once the slot is ready, mirrored from the
    fleet's table (``Scheduler.mirror``), or raises the error a local load would (503 with Retry-After)."""

    def delegates(self, slot: ModelSlot) -> bool: ...

    async def request(self, slot: ModelSlot) -> None: ...

    async def drained(self, slot: ModelSlot, timeout: float) -> bool:
        """Wait until no other gateway has requests of ``slot`` running (they stop taking new ones once it
        drains); False when ``timeout`` ran out first."""
        ...


class Quiet:
    def load_finished(self, model: str, seconds: float, result: str) -> None:
        pass

    def waited_for_model(self, model: str, seconds: float) -> None:
        pass

    def waited_past_bound(self, model: str) -> None:
        pass

    def evicted(self, model: str, reason: str) -> None:
        pass

    def starting(self, slot: ModelSlot) -> None:
        pass

    def loaded(self, slot: ModelSlot) -> None:
        pass
