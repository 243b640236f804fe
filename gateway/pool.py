"""A loaded model's replicas, their concurrency caps, and the bounded FIFO queue in front of them.

The choice of replica is ``balancing.choose`` (pure); this module owns the counts and the waiting. A request
that finds every replica full waits here, in the gateway, never in the engine. Freed capacity is handed
directly to the oldest waiter, so a newcomer cannot overtake the queue.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass

from backends.base import Backend
from gateway.balancing import ReplicaView, choose
from gateway.errors import GatewayError, ModelUnavailable, QueueFull

COOLDOWN = 1.0
MAX_COOLDOWN = 30.0


@dataclass(eq=False)
class Replica:
    index: int
    backend: Backend
    outstanding: int = 0
    failures: int = 0  # consecutive
    ejected_until: float = 0.0

    def healthy(self, now: float) -> bool:
        return now >= self.ejected_until


class Pool:
    def __init__(self, model: str, backends: list[Backend], max_queue: int, rng: random.Random) -> None:
        self.model = model
        self.replicas = [Replica(i, b) for i, b in enumerate(backends)]
        self.max_queue = max_queue
        self._rng = rng
        self._waiters: deque[asyncio.Future[Replica]] = deque()

    @property
    def queued(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    @property
    def outstanding(self) -> int:
        return sum(r.outstanding for r in self.replicas)

    def _pick(self, preferred: int | None = None) -> Replica | None:
        now = time.monotonic()
        views = [
            ReplicaView(r.index, r.outstanding, r.backend.capacity, r.healthy(now)) for r in self.replicas
        ]
        index = choose(views, self._rng, preferred)
        if index is None:
            return None
        replica = self.replicas[index]
        replica.outstanding += 1
        return replica

    async def acquire(self, timeout: float, preferred: int | None = None) -> Replica:
        """A replica with a free slot, waiting in FIFO order up to ``timeout``. The caller must release it."""
        if not self._waiters:
            replica = self._pick(preferred)
            if replica is not None:
                return replica
        now = time.monotonic()
        if not any(r.healthy(now) for r in self.replicas):
            wait = min(r.ejected_until for r in self.replicas) - now
            raise ModelUnavailable(
                f"every replica of '{self.model}' is failing; retry shortly", retry_after=wait
            )
        if self.queued >= self.max_queue:
            raise QueueFull(
                f"model '{self.model}' has {self.queued} requests waiting (max_queue={self.max_queue})",
                retry_after=1,
            )
        waiter: asyncio.Future[Replica] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            done, _ = await asyncio.wait({waiter}, timeout=timeout)
        except BaseException:
            if not waiter.done():
                waiter.cancel()
            elif not waiter.cancelled() and waiter.exception() is None:
                self.release(waiter.result())  # handed a replica just as we were cancelled
            raise
        if not done:
            waiter.cancel()
            raise ModelUnavailable(
                f"no replica of '{self.model}' became free within {timeout:.0f}s", retry_after=5
            )
        return waiter.result()

    def release(self, replica: Replica, failed: bool = False) -> None:
        """Give the slot back. ``failed`` (connection error, 5xx) ejects the replica for a cooldown that
        doubles with each consecutive failure; a success ends the streak."""
        replica.outstanding -= 1
        if failed:
            replica.failures += 1
            cooldown = min(COOLDOWN * 2 ** (replica.failures - 1), MAX_COOLDOWN)
            replica.ejected_until = time.monotonic() + cooldown
        else:
            replica.failures = 0
        self._dispatch()

    def _dispatch(self) -> None:
        while self._waiters:
            if self._waiters[0].done():
                self._waiters.popleft()
                continue
            replica = self._pick()
            if replica is None:
                return
            self._waiters.popleft().set_result(replica)

    def fail_waiters(self, error: GatewayError) -> int:
        """Wake every queued request with ``error`` (the model is going away); returns how many."""
        failed = 0
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
                failed += 1
        return failed
