"""Idle TTL: each ready model with an ``idle_ttl`` has a timer of its own, started when it becomes ready and
stopped when it begins to unload, so a model that a reload adds or changes is reaped like any other (a
reaper built from the startup manifests once left those unreaped, issue 16)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.scheduling.lifecycle import ModelSlot, State

log = logging.getLogger(__name__)


class Unload(Protocol):
    def __call__(
        self, slot: ModelSlot, why: str, reason: str | None = ..., idle_for: float | None = ...
    ) -> Awaitable[bool]: ...


class IdleTimers:
    """The timers, keyed by the slot (a reload reuses the name). ``unload`` is the scheduler's: it unloads
    the model only if it is still ready and has been idle that long (it decides under its lock)."""

    def __init__(self, unload: Unload, clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]]):
        self._unload = unload
        self._clock = clock
        self._sleep = sleep
        self._timers: dict[ModelSlot, asyncio.Task[None]] = {}

    def start(self, slot: ModelSlot) -> None:
        """Start ``slot``'s timer if it has an ``idle_ttl``, is ready and has none yet."""
        if slot.manifest.idle_ttl and slot.state is State.READY and slot not in self._timers:
            self._timers[slot] = asyncio.create_task(self._run(slot), name=f"ttl:{slot.name}")

    def stop(self, slot: ModelSlot) -> None:
        """Stop ``slot``'s timer, if it has one (not when the caller is that timer: it is unloading)."""
        timer = self._timers.pop(slot, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    async def stop_all(self) -> None:
        timers = list(self._timers.values())
        self._timers.clear()
        for timer in timers:
            timer.cancel()
        await asyncio.gather(*timers, return_exceptions=True)

    async def _run(self, slot: ModelSlot) -> None:
        """Unload ``slot`` once it has been unused for its ``idle_ttl`` (not while pinned or busy). The time
        idle is read as the unload reads it (``now - last_used``): a sum that rounds differently made the
        timer call an unload that declined, at once, again and again, without yielding."""
        ttl = slot.manifest.idle_ttl or 0.0
        try:
            while slot.state is State.READY:
                idle = self._clock() - slot.last_used
                if idle < ttl:
                    await self._sleep(ttl - idle)  # a timer, not synchronisation
                    continue
                if slot.pinned or slot.in_flight:
                    await self._sleep(min(ttl, 1.0))  # look again: it may be unpinned, or finish
                    continue
                try:
                    if await self._unload(slot, f"idle for {ttl:g}s", "ttl", idle_for=ttl):
                        return
                except Exception:
                    log.exception("idle unload of %s failed; trying again in %gs", slot.name, ttl)
                    await self._sleep(ttl)
                # Not unloaded: a request came, or it was pinned, while the unload waited for the scheduler's
                # decision lock. The timer goes on (it once ended here, and the model was never reaped again).
        finally:
            if self._timers.get(slot) is asyncio.current_task():
                del self._timers[slot]
