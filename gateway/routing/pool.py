"""A loaded model's replicas, their concurrency caps, and the bounded FIFO queue in front of them.

The choice of replica is ``balancing.choose`` (pure); this module owns the counts and the waiting. A request
that finds every replica full waits here, in the gateway, never in the engine. Freed capacity is handed
directly to the next waiter in the queue's order (``fair_queue``), so a newcomer cannot overtake the queue.
Batch requests hold at most ``fair_queue.batch_limit`` of the slots in rotation at once: the rest
(``reserve``, the model's ``interactive_reserve``) stay free for interactive requests, which a batch flood
then never makes wait. Where every slot is taken all the same (one slot: nothing can be kept back), an
interactive request that has to wait **preempts** a batch request that has sent its client nothing yet
(``preemptible``: its dispatch is still waiting for the replica's answer): the batch request is cut, its
slot goes to the interactive request, and it runs again from the start once a slot is free for it, at most
``preempt`` times (then it runs to its end: batch work is delayed, never starved). The latest started is cut
first: it has the least work to lose. Nothing is cut when the slot would go to a batch request instead (one
that has waited past the aging limit is next in the queue's order): that cut would gain nothing.

A replica leaves the rotation three ways, and ``Replica`` holds the (pure) rules for them:

- passive ejection: a request that fails on it (connection error, 5xx, a stream broken mid-response) ejects
  it for a cooldown that doubles with each consecutive failure; a request that succeeds ends the streak;
- active health checks (``gateway.routing.health`` runs the timer): a failed probe marks it down until a probe
  passes, and a passed probe also ends an ejection early. A passed probe does not end the failure streak:
  reachable is not the same as serving well, so a replica that keeps failing requests keeps backing off.
  The other way round, a request it served outweighs a missed probe: a server busy with long streams can
  miss a probe's deadline (llama-server answers nothing while its HTTP threads are taken) and still serve.
- lost: its host went down (an orchestrating engine said so): out for good, panic routing included, until
  a replacement takes its place (``replace``).

Probes steer traffic between replicas; they never make a model unservable on their own. When every replica
is out and at least one only for a failed probe, requests go to those (Envoy's "panic routing"): a request
that really fails ejects its replica, and then the model answers 503 with Retry-After. Refusing outright
would turn a slow health endpoint into an outage.

A replica that holds a request past its first-byte deadline (``sent`` and not yet ``answered``) counts as
ejected too, for as long as it holds it: it is hung, or far behind, and panic routing must not pile more
requests onto it. The HTTP client gives up on such a request at that deadline (``backends.upstream.forward``),
which ejects the replica for a cooldown; this rule covers whatever answers later than it should (a backend
without deadlines of its own, a timer that fires late).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from backends.base import Backend
from backends.engine_stats import EngineStats
from backends.errors import GatewayError, ModelUnavailable, QueueFull
from gateway.routing.balancing import ReplicaView, choose
from gateway.routing.fair_queue import FairQueue, Priority, batch_limit

BATCH_AGING = 30.0  # seconds a batch request waits before it goes ahead of interactive ones (fair_queue)


def _done(waiter: asyncio.Future[Replica]) -> bool:
    return waiter.done()


COOLDOWN = 1.0
MAX_COOLDOWN = 30.0


@dataclass(eq=False)
class Replica:
    index: int
    backend: Backend
    outstanding: int = 0
    served: int = 0  # responses it started (status and first byte sent back), for operators
    failures: int = 0  # consecutive failed requests
    ejected_until: float = 0.0  # passive: out of rotation until then, after a failed request
    down: bool = False  # active: its last health probe failed
    lost: bool = False  # its host is down: out until replaced
    engine_stats: EngineStats | None = None  # the last scrape of its engine's own metrics, if it has any
    # The first-byte deadlines (time.monotonic) of the requests sent to it and not yet answered, oldest
    # first: a model's requests share one first-byte timeout, so the oldest request's is the earliest.
    awaiting: list[float] = field(default_factory=list)

    def healthy(self, now: float) -> bool:
        return not self.down and not self.ejected(now)

    def ejected(self, now: float) -> bool:
        """Out after a failed request (for a cooldown), while a request is stuck on it, or for good with its
        host; not merely for a failed probe."""
        return self.lost or now < self.ejected_until or self.stuck(now)

    def stuck(self, now: float) -> bool:
        """It holds a request past that request's first-byte deadline."""
        return bool(self.awaiting) and self.awaiting[0] <= now

    def reason(self, now: float) -> str | None:
        """Why it is out of rotation, for operators; None when it is in."""
        if self.lost:
            return "its host is down"
        if self.down:
            return "health check failed"
        if now < self.ejected_until:
            return f"ejected after {self.failures} consecutive failed request(s)"
        if self.stuck(now):
            return "a request has waited past its first-byte deadline"
        return None

    def request_failed(self, now: float) -> None:
        self.failures += 1
        cooldown = min(COOLDOWN * 2 ** (self.failures - 1), MAX_COOLDOWN)
        self.ejected_until = now + cooldown

    def request_succeeded(self) -> None:
        """A served request ends the failure streak, and outweighs a missed health probe."""
        self.failures = 0
        self.down = False

    def probed(self, ok: bool, now: float) -> bool:
        """Apply a health probe's result; True when it moved the replica into or out of rotation."""
        was = self.healthy(now)
        self.down = not ok
        if ok:
            self.ejected_until = min(self.ejected_until, now)
        return self.healthy(now) != was


class Pool:
    def __init__(
        self,
        model: str,
        backends: list[Backend],
        max_queue: int,
        rng: random.Random,
        aging: float = BATCH_AGING,
        reserve: int = 0,
        preempt: int = 0,
    ) -> None:
        """``reserve``: slots kept for interactive requests (``fair_queue.batch_limit``); ``preempt``: how
        many times one batch request may be preempted (0: never)."""
        self.model = model
        self.replicas = [Replica(i, b) for i, b in enumerate(backends)]
        self.max_queue = max_queue
        self.reserve = reserve
        self.batch = 0  # slots held by batch requests
        self._rng = rng
        # by priority class, then by API key in turns, then FIFO (gateway.routing.fair_queue)
        self._waiters: FairQueue[asyncio.Future[Replica]] = FairQueue(aging, _done)
        self.preempt = preempt
        self._preemptible: list[asyncio.Task[object]] = []  # batch requests' answers awaited, oldest first
        self.preempted = 0  # batch requests cut for an interactive one, for operators and the metrics

    @property
    def queued(self) -> int:
        return sum(1 for w in self._waiters.items() if not w.done())

    @property
    def outstanding(self) -> int:
        return sum(r.outstanding for r in self.replicas)

    def would_wait(self, priority: Priority = "interactive") -> bool:
        """A request of ``priority``'s class now would queue: others that go first wait already, no replica
        ``_pick`` may take has room, or (batch) batch requests hold every slot they may."""
        now = time.monotonic()
        if priority == "batch" and (self.queued or not self.batch_may_start(now)):
            return True
        if any(not w.done() for w in self._waiters.items("interactive")):
            return True
        replicas = zip(self.replicas, self._in_rotation(now), strict=True)
        return not any(ok and r.outstanding < r.backend.capacity for r, ok in replicas)

    def _in_rotation(self, now: float) -> list[bool]:
        """Which replicas ``_pick`` may choose: the healthy ones, else (panic routing: only probes may have
        taken them out, module docstring) those not ejected."""
        in_rotation = [r.healthy(now) for r in self.replicas]
        if not any(in_rotation):
            in_rotation = [not r.ejected(now) for r in self.replicas]
        return in_rotation

    def batch_may_start(self, now: float) -> bool:
        """A batch request may take a slot now: batch requests hold fewer than ``batch_limit`` of the slots in
        rotation."""
        ok = self._in_rotation(now)
        capacity = sum(r.backend.capacity for r, on in zip(self.replicas, ok, strict=True) if on)
        return self.batch < batch_limit(capacity, self.reserve)

    def _pick(self, preferred: int | None = None) -> Replica | None:
        now = time.monotonic()
        in_rotation = self._in_rotation(now)
        views = [
            ReplicaView(r.index, r.outstanding, r.backend.capacity, ok)
            for r, ok in zip(self.replicas, in_rotation, strict=True)
        ]
        index = choose(views, self._rng, preferred)
        if index is None:
            return None
        replica = self.replicas[index]
        replica.outstanding += 1
        return replica

    async def acquire(
        self,
        timeout: float,
        preferred: int | None = None,
        key: str = "",
        priority: Priority = "interactive",
    ) -> Replica:
        """A replica with a free slot, waiting up to ``timeout`` in the queue's order (``fair_queue``: the
        priority class, then the API key's turn, then arrival; a batch request also for batch's share of
        the slots). The caller must release it with the same ``priority``."""
        now = time.monotonic()
        if not len(self._waiters) and (priority == "interactive" or self.batch_may_start(now)):
            replica = self._pick(preferred)
            if replica is not None:
                self.batch += priority == "batch"
                return replica
        if all(r.ejected(now) for r in self.replicas):
            raise ModelUnavailable(
                f"every replica of '{self.model}' is failing; retry shortly",
                retry_after=min(
                    (max(r.ejected_until - now, COOLDOWN) for r in self.replicas if not r.lost),
                    default=COOLDOWN,
                ),
            )
        if self.queued >= self.max_queue:
            raise QueueFull(
                f"model '{self.model}' has {self.queued} requests waiting (max_queue={self.max_queue})",
                retry_after=1,
            )
        waiter: asyncio.Future[Replica] = asyncio.get_running_loop().create_future()
        self._waiters.push(waiter, key, priority, now)
        # A place may be free behind requests that gave up (they count until a dispatch drops them): this
        # request must not wait for the next release to find it.
        self._dispatch()
        if priority == "interactive" and not waiter.done() and self._waiters.next_class(now) == "interactive":
            self._cut_one()  # not when the slot would go to a batch request that has aged: a wasted cut
        try:
            done, _ = await asyncio.wait({waiter}, timeout=timeout)
        except BaseException:
            if not waiter.done():
                waiter.cancel()
                self._forget_gone()
            elif not waiter.cancelled() and waiter.exception() is None:
                self.release(waiter.result(), priority=priority)  # handed one just as we were cancelled
            raise
        if not done:
            waiter.cancel()
            self._forget_gone()
            raise ModelUnavailable(
                f"no replica of '{self.model}' became free within {timeout:.0f}s", retry_after=5
            )
        return waiter.result()

    def preemptible(self, answer: asyncio.Task[object]) -> None:
        """A batch request's answer is awaited (``dispatch``): until it comes (``answered_batch``), an
        interactive request that must wait may cancel it (``_cut_one``)."""
        self._preemptible.append(answer)

    def answered_batch(self, answer: asyncio.Task[object]) -> None:
        if answer in self._preemptible:
            self._preemptible.remove(answer)

    def _cut_one(self) -> None:
        """Preempt the batch request started last whose answer has not come, if any: its dispatch sees it
        cancelled (not by its client), gives its slot back, and queues again."""
        while self._preemptible:
            answer = self._preemptible.pop()
            if answer.cancel():
                self.preempted += 1
                return

    def release(self, replica: Replica, failed: bool = False, priority: Priority = "interactive") -> None:
        """Give the slot back (``priority``: the class it was acquired with). ``failed`` (connection error,
        5xx, a stream broken mid-response) ejects the replica for a cooldown that doubles with each
        consecutive failure; a success ends the streak."""
        replica.outstanding -= 1
        self.batch -= priority == "batch"
        if failed:
            now = time.monotonic()
            replica.request_failed(now)
            # Requests queued behind the ejection get the replica back the moment its cooldown ends, not
            # whenever some other replica next frees a slot.
            asyncio.get_running_loop().call_later(replica.ejected_until - now, self._dispatch)
        else:
            replica.request_succeeded()
        self._dispatch()

    def sent(self, replica: Replica, first_byte_by: float) -> None:
        """A request went to ``replica``; it must answer by ``first_byte_by`` (time.monotonic)."""
        replica.awaiting.append(first_byte_by)

    def answered(self, replica: Replica, first_byte_by: float) -> None:
        """The request ``sent`` with that deadline got its first byte, failed, or was given up."""
        stuck = replica.stuck(time.monotonic())
        replica.awaiting.remove(first_byte_by)  # any equal deadline will do: they are interchangeable
        if stuck:
            self._dispatch()  # back in rotation, if that was all that kept it out

    def probed(self, replica: Replica, ok: bool) -> bool:
        """Record a health probe's result; True when it moved the replica into or out of rotation. Queued
        requests are dispatched on any change: a replica back in rotation takes them at once, and the last
        one leaving it can start panic routing to replicas that are out only by their probes."""
        changed = replica.probed(ok, time.monotonic())
        if changed:
            self._dispatch()
        return changed

    def lose(self, index: int) -> Backend:
        """Replica ``index``'s host is gone: out of rotation now, for good. Returns its backend (to stop)."""
        replica = self.replicas[index]
        replica.lost = True
        return replica.backend

    def replace(self, index: int, backend: Backend) -> None:
        """A new backend takes lost replica ``index``'s place, and the requests queued may use it at once."""
        self.replicas[index] = Replica(index, backend)
        self._dispatch()

    def _dispatch(self) -> None:
        now = time.monotonic()
        while len(self._waiters):
            replica = self._pick()
            if replica is None:
                return
            taken = self._waiters.take(now, batch=self.batch_may_start(now))
            if taken is None:  # only requests that gave up were left, or batch ones that must wait
                replica.outstanding -= 1
                return
            waiter, priority = taken
            self.batch += priority == "batch"
            waiter.set_result(replica)

    def _forget_gone(self) -> None:
        """Requests that gave up leave the queue's memory once they outnumber the places."""
        if len(self._waiters) > 2 * self.max_queue + 8:
            self._waiters.compact()

    def fail_waiters(self, error: GatewayError) -> int:
        """Wake every queued request with ``error`` (the model is going away); returns how many."""
        failed = 0
        while (waiter := self._waiters.pop(time.monotonic())) is not None:
            waiter.set_exception(error)
            failed += 1
        return failed
