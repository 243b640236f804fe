"""Per-API-key caps, by the key's name from the settings: requests under way at once
(``key_max_concurrency``) and requests waiting at once, across models, for a replica or a load
(``key_max_queued``). Beyond either, a 429 with Retry-After. Keys not named have no cap; the counts are
kept for named keys only, so they are bounded by the settings.

A request holds a queue place from before it asks for its model until a replica takes it. It is refused only
when it would wait (its model is not ready, or no replica has a free slot): a request that is served at once
never waits, and is never refused for its key's queue.
"""

from __future__ import annotations

from collections.abc import Mapping

from backends.errors import QueueFull
from gateway.routing.fair_queue import Priority
from gateway.scheduling.lifecycle import ModelSlot, State


class KeyLimits:
    def __init__(self, max_concurrency: Mapping[str, int], max_queued: Mapping[str, int]) -> None:
        self.max_concurrency = max_concurrency
        self.max_queued = max_queued
        self._under_way: dict[str, int] = {}  # per key with a concurrency cap
        self._queued: dict[str, int] = {}  # per key with a queue cap

    # -- requests under way ------------------------------------------------------------------------------
    def capped(self, key: str | None) -> str | None:
        """``key`` when it has a concurrency cap; else None."""
        return key if key is not None and key in self.max_concurrency else None

    def begin(self, key: str) -> None:
        """Count a request against its key's cap (``key_max_concurrency``), or refuse it with a 429."""
        cap = self.max_concurrency[key]
        under_way = self._under_way.get(key, 0)
        if under_way >= cap:
            raise QueueFull(
                f"API key '{key}' has {under_way} requests under way (its cap: {cap}, key_max_concurrency)",
                retry_after=1,
                code="key_concurrency_exceeded",
            )
        self._under_way[key] = under_way + 1

    def end(self, key: str) -> None:
        self._under_way[key] -= 1

    # -- requests waiting --------------------------------------------------------------------------------
    def queue(self, key: str, slot: ModelSlot, priority: Priority = "interactive") -> QueuePlace | None:
        """A waiting place of ``key``'s for a request for ``slot`` (None when the key has no queue cap), or a
        429 when the key has ``key_max_queued`` requests waiting and this one (of ``priority``'s class)
        would wait too."""
        cap = self.max_queued.get(key)
        if cap is None:
            return None
        queued = self._queued.get(key, 0)
        if queued >= cap and would_wait(slot, priority):
            raise QueueFull(
                f"API key '{key}' has {queued} requests waiting (its cap: {cap}, key_max_queued)",
                retry_after=retry_after(slot),
                code="key_queue_full",
            )
        self._queued[key] = queued + 1
        return QueuePlace(self, key)

    def queued(self, key: str) -> int:
        return self._queued.get(key, 0)


class QueuePlace:
    """A request's place in its key's count of waiting requests; ``leave`` when a replica takes it (or it
    ends first). Idempotent."""

    def __init__(self, limits: KeyLimits, key: str) -> None:
        self._limits = limits
        self._key = key
        self._held = True

    def leave(self) -> None:
        if self._held:
            self._held = False
            self._limits._queued[self._key] -= 1


def would_wait(slot: ModelSlot, priority: Priority = "interactive") -> bool:
    """A request of ``priority``'s class for ``slot`` now would wait: for its load or drain, or for a free
    replica."""
    return slot.state is not State.READY or slot.pool is None or slot.pool.would_wait(priority)


def retry_after(slot: ModelSlot) -> float:
    """When to try again: a model that is not ready is about one load away (its last load's time); a ready
    one's queue moves with each answer."""
    if slot.state is State.READY:
        return 1.0
    return max(1.0, slot.load_seconds or 1.0)
