"""A request's way to its model: a lease once the model is ready, loading it if needed (the scheduler's
``acquire``). Concurrent first requests join the one load task of their model; a request for a version a
reload replaced moves on to the new one; every wait ends by the request's load timeout."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Hashable
from typing import Protocol

from backends.errors import LoadFailed, ModelNotFound, ModelUnavailable, QueueFull
from gateway.routing.fair_queue import Priority
from gateway.scheduling.admission import Policy
from gateway.scheduling.hooks import Events
from gateway.scheduling.lifecycle import Lease, ModelSlot, State
from gateway.scheduling.turns import Turns

log = logging.getLogger(__name__)

BOUND_LOG_EVERY = 60.0  # seconds between two warnings of waits past swap-aware admission's bound, per model


class Scheduling(Protocol):
    """What a waiting request needs of the scheduler (read at each use: a test or an operator may change
    its events or policy)."""

    events: Events
    policy: Policy
    turns: Turns

    def load(self, slot: ModelSlot) -> asyncio.Task[None]:
        """The load task of ``slot``, started if none runs."""

    def load_under_way(self, slot: ModelSlot) -> asyncio.Task[None] | None: ...

    def adopt(self, slot: ModelSlot) -> None:
        """Serve ``slot`` under its name (a reload's new version)."""


class ModelWaits:
    def __init__(self, scheduler: Scheduling, clock: Callable[[], float]) -> None:
        self._scheduler = scheduler
        self._clock = clock
        self._bound_logged: dict[str, float] = {}  # when a wait past the bound was last logged, per model

    async def acquire(
        self,
        slot: ModelSlot,
        timeout: float,
        priority: Priority = "interactive",
        client: Hashable | None = None,
    ) -> Lease:
        """A lease on ``slot`` once it is ready, loading it if needed. A request that has to wait for the
        model (a load, a drain) takes a place in the model's queue, the same ``max_queue`` places as the
        requests waiting for a free replica: when they are all taken, 429 with Retry-After. One request
        may always wait for a load, even with ``max_queue: 0``: the one that asks for the model.
        ``priority``: the request's class, which swap-aware admission weighs (``Turns.admission``);
        ``client``: the connection it came on, where known (a model whose last request came from the client
        that now waits for another is not kept for that client's next request: ``Turns.admission``)."""
        interactive = priority == "interactive"
        if slot.state is State.READY:
            return slot.lease(interactive, client)
        waiting = slot.queued
        if waiting >= max(slot.max_queue, 1):
            raise QueueFull(
                f"model '{slot.name}' has {waiting} requests waiting (max_queue={slot.max_queue})",
                retry_after=max(1.0, slot.load_seconds or 1.0),  # they wait for its load: about that long
            )
        began = slot.wait_begins(interactive, client)
        try:
            lease = await self._until_ready(slot, timeout, interactive, client)
        finally:
            slot.wait_ends(began, interactive, client)
        waited = self._clock() - began
        self._scheduler.events.waited_for_model(lease.slot.name, waited)
        self._check_bound(lease.slot, waited)
        return lease

    def _check_bound(self, slot: ModelSlot, waited: float) -> None:
        """Swap-aware admission promises a request its model within its ``max_swap_wait`` plus one load. A
        wait past that (the estimates of the swap's time were off) is counted, and logged with its numbers
        at most once a minute per model (``BOUND_LOG_EVERY``: with a bound too tight for the loads, every
        request could be one)."""
        if self._scheduler.policy.mode == "fifo":
            return
        bound, load = self._scheduler.turns.swap_wait(slot), slot.load_seconds or 0.0
        if waited <= bound + load:
            return
        self._scheduler.events.waited_past_bound(slot.name)
        now = self._clock()
        if now >= self._bound_logged.get(slot.name, -math.inf) + BOUND_LOG_EVERY:
            self._bound_logged[slot.name] = now
            log.warning(
                "model %s: a request waited %.2f s for it, past its max_swap_wait of %g s plus its load of "
                "%.2f s (gateway_model_wait_past_bound_total counts them)",
                slot.name, waited, bound, load,
            )  # fmt: skip

    async def _until_ready(
        self, slot: ModelSlot, timeout: float, interactive: bool = True, client: Hashable | None = None
    ) -> Lease:
        deadline = self._clock() + timeout
        while True:
            if slot.state is State.UNLOADED and slot.replaced_by is not None:  # a reload changed it
                slot = slot.replaced_by
                self._scheduler.adopt(slot)
                continue
            if slot.state is State.UNLOADED and slot.removed:
                raise ModelNotFound(slot.name)
            if slot.state is State.READY:
                return slot.lease(interactive, client)
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise ModelUnavailable(
                    f"model '{slot.name}' is still {slot.state} after {timeout:.0f}s", retry_after=5
                )
            if slot.state is State.UNLOADED:
                failure = slot.failure
                if failure is not None and self._clock() < failure.retry_at:
                    raise LoadFailed(
                        f"model '{slot.name}' failed to load: {failure.message}",
                        retry_after=failure.retry_at - self._clock(),
                    )
                task = self._scheduler.load(slot)
                await asyncio.wait({task}, timeout=remaining)
                _raise_if_cancelled(slot, task)
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            elif (
                slot.state is State.LOADING
                and (under_way := self._scheduler.load_under_way(slot)) is not None
            ):
                await asyncio.wait({under_way}, timeout=remaining)
                _raise_if_cancelled(slot, under_way)  # every waiter is told, none starts the load again
            else:
                await slot.wait_change(remaining)


def _raise_if_cancelled(slot: ModelSlot, load: asyncio.Task[None]) -> None:
    """A cancelled load is a 503 for its waiters, unless a reload retired the slot: then they move on to the
    new version (or get a 404 when the model was removed)."""
    if load.done() and load.cancelled() and not slot.retired:
        raise ModelUnavailable(f"the load of '{slot.name}' was cancelled", retry_after=1)
