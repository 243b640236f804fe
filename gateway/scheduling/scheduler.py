"""Loads, evictions and idle unloads: every move of every model's state goes through here.

- ``acquire`` is the one way in for requests: it returns a lease on a ready model, starting a load if needed
  (``gateway.scheduling.waiting``). Concurrent first requests join the one load task of their model.
- One placement decision at a time (the decision lock): the pure ``placement.plan`` says where the model goes
  (per device: the host, each engine's RAM and GPUs) and what to evict there; the
  victims are marked draining under the lock, drained (grace period, then cancelled) and unloaded outside
  it, and the target decides again once they are gone. A model starts loading only when it fits, so the
  estimates of models holding memory never add up to more than any device's budget.
- Memory freed for a load goes to that load: from the decision that evicts for it until it starts loading
  (or gives up), the target holds a reservation of what it will take, which every other decision counts as
  held. Without it, the evicted model's next request took the memory back before the target could, and the
  target never loaded (``gateway.scheduling.holdings``).
- When the target only fails to fit because other models are loading or draining, it waits for those
  transitions and decides again (llama-swap's "stopping waits, then starts"), instead of failing.
- Tasks (loads, unloads, idle timers) are keyed by the slot, never by its name, which a reload reuses; a
  reload retires the old version's slot, which cancels its load at any stage and can never load again.
- Engine loads and drains run outside the decision lock, so a slow load or a long drain does not hold up a
  load of another model that fits.
- A failed load returns the model to UNLOADED with the error; requests during the backoff that follows get
  503 with the error and a Retry-After, then the next request tries again.
- Idle TTL: each model with an ``idle_ttl`` gets its own timer when it becomes ready, stopped when it
  unloads (``gateway.scheduling.idle``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from backends.base import Backend
from backends.errors import (
    GatewayError,
    InsufficientMemory,
    LoadFailed,
    ModelUnavailable,
)
from gateway.routing.fair_queue import Priority
from gateway.scheduling.admission import Policy
from gateway.scheduling.explain import Plan, explain
from gateway.scheduling.holdings import Holdings
from gateway.scheduling.hooks import Delegate, Events, LoadWatch, Quiet
from gateway.scheduling.idle import IdleTimers
from gateway.scheduling.lifecycle import Lease, ModelSlot, State
from gateway.scheduling.placement import DoesNotFit, Fits, Option, Resident, plan
from gateway.scheduling.turns import Turns
from gateway.scheduling.waiting import ModelWaits

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        slots: Iterable[ModelSlot],
        budgets: Mapping[str, int],
        *,
        drain_grace: float,
        load_failure_backoff: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        events: Events | None = None,
        policy: Policy | None = None,
        max_swap_wait: float = 10.0,
        watch: LoadWatch | None = None,
    ) -> None:
        """``clock`` and ``sleep`` drive the idle timers and the swap waits (a test gives them a virtual
        time). ``policy`` and ``max_swap_wait`` (the default of a model's own): swap-aware admission.
        ``watch``: sees each load start and end (to measure what it took)."""
        self.events: Events = events or Quiet()
        self.watch: LoadWatch = watch or Quiet()
        self.slots = {s.name: s for s in slots}
        self.budgets = dict(budgets)  # per device (gateway.scheduling.placement)
        self.drain_grace = drain_grace
        self.load_failure_backoff = load_failure_backoff
        self.policy = policy or Policy()
        self.max_swap_wait = max_swap_wait
        self._clock = clock
        self._sleep = sleep
        self._decision = asyncio.Lock()
        self._loads: dict[ModelSlot, asyncio.Task[None]] = {}
        self._unloads: dict[ModelSlot, asyncio.Task[None]] = {}
        self._cancelled: set[ModelSlot] = set()  # loads an operator cancelled
        self.holdings = Holdings(self.slots, self.budgets)
        self._since: dict[ModelSlot, int] = {}  # loads under way, in the order they were asked for
        self._turns = 0
        self.idle = IdleTimers(self.unload, clock, sleep)
        self.delegate: Delegate | None = None  # cluster mode: loads left to the fleet's leader
        self.turns = Turns(self.slots, self._since, self.policy, max_swap_wait, drain_grace)
        self._waits = ModelWaits(self, clock)

    # -- the request path --------------------------------------------------------------------------------
    def acquire(
        self,
        slot: ModelSlot,
        timeout: float,
        priority: Priority = "interactive",
        client: Hashable | None = None,
    ) -> Coroutine[Any, Any, Lease]:
        """A lease on ``slot`` once it is ready, loading it if needed (``ModelWaits.acquire``; its coroutine
        itself, not one more around it: this is on every request's path)."""
        return self._waits.acquire(slot, timeout, priority, client)

    def load_under_way(self, slot: ModelSlot) -> asyncio.Task[None] | None:
        """The load task of ``slot``, if one runs (a load, or a request to the fleet's leader for one)."""
        return self._loads.get(slot)

    def adopt(self, slot: ModelSlot) -> None:
        """Serve ``slot`` under its name (a reload's new or changed model). Idempotent. The version it
        replaces must hold no memory any more: only one slot of a name is ever a resident."""
        old = self.slots.get(slot.name)
        assert old is None or old is slot or old.state is State.UNLOADED
        self.slots[slot.name] = slot

    def retire(self, slot: ModelSlot) -> None:
        """``slot`` is a version a reload replaced or removed: it never loads again (a load under way gives
        up at its next decision, or is cancelled by ``cancel_load``)."""
        slot.retired = True

    def abandon(self, slot: ModelSlot) -> None:
        """Stop tracking ``slot`` without unloading it: its replicas run on for another gateway (cluster mode,
        a leader handing over at shutdown). Its idle timer, if any, is stopped."""
        self.idle.stop(slot)
        if self.slots.get(slot.name) is slot:
            del self.slots[slot.name]

    def forget(self, slot: ModelSlot) -> None:
        """Stop tracking ``slot`` (a reload removed it, and it has unloaded)."""
        if self.slots.get(slot.name) is slot:
            del self.slots[slot.name]

    def used(self) -> dict[str, int]:
        """Bytes held per device (``Holdings.used``)."""
        return self.holdings.used()

    def reserved(self) -> dict[str, int]:
        """Of ``used``, the bytes held for loads under way (``Holdings.reserved``)."""
        return self.holdings.reserved()

    def residents(self, excluding: ModelSlot | None = None) -> list[Resident]:
        """What holds memory, as the placement sees it (``Holdings.residents``)."""
        return self.holdings.residents(excluding)

    # -- loads -------------------------------------------------------------------------------------------
    def load(self, slot: ModelSlot) -> asyncio.Task[None]:
        """The load task of ``slot``, started if none runs. Waiters share it; it outlives any one of them."""
        task = self._loads.get(slot)
        if task is None and self.delegate is not None and self.delegate.delegates(slot):
            # Not in the turns of local loads: it takes no memory here, so no local load waits for it.
            task = asyncio.create_task(self.delegate.request(slot), name=f"ask:{slot.name}")
            self._loads[slot] = task
            task.add_done_callback(self._load_done(slot))
        if task is None:
            self._turns += 1
            self._since[slot] = self._turns
            task = asyncio.create_task(self._load(slot), name=f"load:{slot.name}")
            self._loads[slot] = task
            task.add_done_callback(self._load_done(slot))
        return task

    async def mirror(self, slot: ModelSlot, backends: list[Backend]) -> bool:
        """Make ``slot`` ready with another gateway's replicas (cluster mode: the fleet's table says they
        serve); False, with the backends stopped, when the slot is not unloaded or no longer served."""
        async with self._decision:
            if slot.state is not State.UNLOADED or slot.retired or self.slots.get(slot.name) is not slot:
                await asyncio.gather(*(b.stop() for b in backends))
                return False
            slot.begin_mirror()
        try:
            await slot.start_with(backends)
        except BaseException:
            slot.load_cancelled()
            raise
        return True

    async def take_over(self, slot: ModelSlot, placement: Sequence[Option]) -> None:
        """A mirrored ``slot`` becomes this gateway's own (it leads the fleet now): it holds ``placement``
        in the budgets, and its idle timer starts."""
        async with self._decision:
            slot.take_over(placement)
            self.idle.start(slot)

    def _load_done(self, slot: ModelSlot) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            if self._loads.get(slot) is task:
                del self._loads[slot]
                self._since.pop(slot, None)
            self.holdings.release(slot)  # a load that gave up frees what was kept for it
            if not task.cancelled() and task.exception() is not None:
                log.warning("load of %s failed: %s", slot.name, task.exception())

        return done

    async def _load(self, slot: ModelSlot) -> None:
        while True:
            async with self._decision:
                step = self._decide(slot)
            if step is None:
                return  # loaded already, or a version a reload retired: its waiters move on
            if step is _BEGUN:
                break
            # Outside the lock: drains and other loads go on; then decide again with what is resident.
            try:
                await asyncio.wait(step.tasks, return_when=step.until)
            finally:
                for w in step.own:  # this load's own waits (a timer, a model's waiters): not left behind
                    w.cancel()
        await self._start(slot)

    def _decide(self, slot: ModelSlot) -> _Wait | None:
        """One placement decision for ``slot``'s load (the decision lock held): it begins (``_BEGUN``), or
        there is what to wait for before deciding again, or nothing to do (None)."""
        if slot.state is not State.UNLOADED or slot.retired or self.slots.get(slot.name) is not slot:
            return None
        residents = self.residents(excluding=slot)
        admission = self.turns.admission(slot, residents, self._clock())
        guarded = [replace(r, evictable=False) if r.name in admission.protected else r for r in residents]
        decision = plan(slot.name, slot.demand, guarded, self.budgets)
        if isinstance(decision, Fits) and not decision.evict:
            self.holdings.release(slot)
            slot.begin_load(decision.choice)  # the memory is the slot's own from here
            return _BEGUN
        if isinstance(decision, Fits):
            older = self._older_loads(slot)
            if older:
                # First come, first served among loads that must evict: the older ones decide first
                # (without this, two models' clients took turns and a third one's load never came).
                return _Wait(older, asyncio.FIRST_COMPLETED)
            return self._evict_for(slot, decision)
        if admission.recheck_at is not None and isinstance(
            plan(slot.name, slot.demand, residents, self.budgets), Fits
        ):
            # Busy models keep the memory for now (swap-aware admission): decide again when one stops being
            # busy or this model's turn comes, or when another transition ends.
            timer = asyncio.create_task(self._after(admission.recheck_at - self._clock()))
            others = [t for other, t in self._loads.items() if other is not slot]
            return _Wait([timer, *others, *self._unloads.values()], asyncio.FIRST_COMPLETED, [timer])
        waits, own = self._transitions_that_could_make_room(slot, residents)
        if not waits:
            raise InsufficientMemory(decision.reason, retry_after=10)
        return _Wait(waits, asyncio.FIRST_COMPLETED, own)

    def _evict_for(self, slot: ModelSlot, decision: Fits) -> _Wait:
        """Begin the unloads ``decision`` names, keeping what they free for ``slot``."""
        log.info("evicting %s to load %s", ", ".join(decision.evict), slot.name)
        chosen = [unit[i] for unit, i in zip(slot.demand, decision.choice, strict=True)]
        self.holdings.keep(slot, chosen)  # freed for this load, and kept for it
        victims = {s.name: s for s in self.slots.values()}
        unloads = [
            self._begin_unload(
                victims[n],
                f"evicted to load '{slot.name}'",
                "swap" if victims[n].in_flight or victims[n].queued else "lru",
            )
            for n in decision.evict
        ]
        return _Wait(unloads, asyncio.ALL_COMPLETED)  # deciding again before all are gone would evict more

    async def _start(self, slot: ModelSlot) -> None:
        """Start the engines of ``slot``, which holds its memory (LOADING)."""
        started = self._clock()
        self.watch.starting(slot)
        try:
            await slot.start()
        except BaseException as exc:  # cancelled (shutdown) too: the slot must not stay LOADING
            result = "failure" if isinstance(exc, Exception) else "cancelled"
            self.events.load_finished(slot.name, self._clock() - started, result)
            if slot in self._cancelled:  # an operator's choice, not the model's failure: no backoff
                self._cancelled.discard(slot)
                slot.load_cancelled()
                raise
            message = exc.message if isinstance(exc, GatewayError) else f"{type(exc).__name__}: {exc}"
            failure = slot.load_failed(message, self.load_failure_backoff)
            if not isinstance(exc, Exception):
                raise
            raise LoadFailed(
                f"model '{slot.name}' failed to load: {message}",
                retry_after=failure.retry_at - self._clock(),
            ) from exc
        slot.load_seconds = self._clock() - started
        self.events.load_finished(slot.name, slot.load_seconds, "success")
        log.info("loaded %s in %.2fs", slot.name, self._clock() - started)
        self.watch.loaded(slot)
        self.idle.start(slot)

    def _transitions_that_could_make_room(
        self, slot: ModelSlot, residents: list[Resident]
    ) -> tuple[list[asyncio.Task[None]], list[asyncio.Task[None]]]:
        """The loads and drains to wait for when ``slot`` would fit once they are over ([] if it never will),
        and which of those waits are tasks of the caller's own.

        Only models that hold memory are waited on, and they are past their own decision, so two loads can
        never wait on each other."""
        settled = [replace(r, evictable=True) for r in residents]
        if isinstance(plan(slot.name, slot.demand, settled, self.budgets), DoesNotFit):
            return [], []
        holders = {s.name: s for s in (*self.slots.values(), *self.holdings.keeping())}
        busy = [holders[r.name] for r in residents if not r.evictable and r.name in holders]
        tasks = [t for s in busy if (t := self._loads.get(s) or self._unloads.get(s)) is not None]
        # A model just loaded for waiting requests: until they have their leases (its next loop turn). These
        # waits are the caller's own tasks, to cancel once it has decided again.
        own = [
            asyncio.create_task(s.waiters_served(), name=f"served:{s.name}")
            for s in busy
            if s.state is State.READY
        ]
        return tasks + own, own

    async def _after(self, delay: float) -> None:
        await self._sleep(max(delay, 0.0))  # a timer, not synchronisation

    def _older_loads(self, slot: ModelSlot) -> list[asyncio.Task[None]]:
        """The load tasks asked for before ``slot``'s that still wait for their memory, except those that
        let it go first (``Turns.yields``)."""
        mine = self._since.get(slot, 0)
        now = self._clock()
        older = [s for s, turn in self._since.items() if turn < mine and s.state is State.UNLOADED]
        return [self._loads[s] for s in older if s in self._loads and not self.turns.yields(s, slot, now)]

    # -- unloads -----------------------------------------------------------------------------------------
    def plan(self, slot: ModelSlot) -> Plan:
        """What loading ``slot`` now would do: the same placement call a load makes, without the load."""
        return explain(slot.name, slot.demand, self.residents(), self.budgets)

    async def cancel_load(self, slot: ModelSlot) -> bool:
        """Cancel ``slot``'s load if one runs (its waiters get a 503); True if there was one."""
        task = self._loads.get(slot)
        if task is None or task.done():
            return False
        self._cancelled.add(slot)
        task.cancel()
        await asyncio.wait({task})
        self._cancelled.discard(slot)
        return True

    def _begin_unload(
        self, slot: ModelSlot, why: str, reason: str | None, grace: float | None = None
    ) -> asyncio.Task[None]:
        """Mark a READY model draining and start its unload. Call with the decision lock held. ``reason``
        labels the eviction in the metrics (None: not an eviction, a shutdown)."""
        slot.begin_drain()
        if reason is not None:
            self.events.evicted(slot.name, reason)
        self.idle.stop(slot)
        task = asyncio.create_task(
            self._drain_and_unload(slot, why, self.drain_grace if grace is None else grace),
            name=f"unload:{slot.name}",
        )
        self._unloads[slot] = task
        task.add_done_callback(lambda _: self._unloads.pop(slot, None))
        return task

    async def _drain_and_unload(self, slot: ModelSlot, why: str, grace: float) -> None:
        began = self._clock()
        if not await slot.wait_idle(grace):
            log.warning("%s: %d requests still running after %.0fs grace", slot.name, slot.in_flight, grace)
        elif self.delegate is not None and not slot.cut_short:
            left = grace - (self._clock() - began)  # the same grace covers the other gateways' requests
            if left > 0 and not await self.delegate.drained(slot, left):
                log.warning("%s: other gateways' requests still running after %.0fs grace", slot.name, grace)
        cancelled = await slot.finish_unload(
            ModelUnavailable(f"model '{slot.name}' was {why}", retry_after=1)
        )
        if cancelled:
            log.warning("unloaded %s (%s), cancelling %d requests", slot.name, why, cancelled)
        else:
            log.info("unloaded %s (%s)", slot.name, why)

    async def unload(
        self,
        slot: ModelSlot,
        why: str,
        reason: str | None = "admin",
        idle_for: float | None = None,
        grace: float | None = None,
    ) -> bool:
        """Drain (for ``grace``, default the drain grace; 0 cuts in-flight requests at once) and unload
        ``slot`` if it is ready (and, with ``idle_for``, idle that long and not pinned); False if not. A
        drain already under way is waited for."""
        async with self._decision:
            running = self._unloads.get(slot)
            if running is not None and grace == 0:
                slot.cut()  # forced: the drain under way ends now
            if running is None:
                if slot.state is not State.READY:
                    return False
                if idle_for is not None and (
                    slot.pinned or slot.in_flight or self._clock() - slot.last_used < idle_for
                ):
                    return False  # pinned or used while this waited for the lock
                running = self._begin_unload(slot, why, reason, grace)
        await asyncio.wait({running})
        return True

    async def place_again(self, slot: ModelSlot, units: Sequence[int]) -> list[Backend] | str:
        """Place ``units`` of a ready ``slot`` again (their host is gone), where they fit beside what is
        resident, evicting nobody; their memory is held from here. Returns their new replicas (to start),
        or why they do not fit. The host-loss hook's one decision (``gateway.scheduling.host_loss``)."""
        async with self._decision:
            if slot.state is not State.READY:
                return f"'{slot.name}' is {slot.state}"
            demand = [slot.demand[i] for i in units]
            residents = [replace(r, evictable=False) for r in self.residents()]
            # under a name of its own: the placement takes a resident target for one already placed
            decision = plan(f"{slot.name} (lost units)", demand, residents, self.budgets)
            if isinstance(decision, DoesNotFit):
                return decision.reason
            return slot.place(units, [unit[i] for unit, i in zip(demand, decision.choice, strict=True)])

    # -- background work ---------------------------------------------------------------------------------
    def start_background(self) -> None:
        for slot in self.slots.values():
            if slot.pinned:
                self.load(slot)

    async def shutdown(self, grace: float | None = None) -> None:
        """Cancel the loads under way (each stops what it had started), then drain every model at once
        within one grace period (default: the drain grace), cut what is still running, and say how many.
        uvicorn has already stopped accepting and waited for open connections by the time this runs."""
        await self.idle.stop_all()
        loads = list(self._loads.values())
        for task in loads:
            task.cancel()
        await asyncio.gather(*loads, return_exceptions=True)
        async with self._decision:
            running = sum(s.in_flight for s in self.slots.values() if s.state is State.READY)
            unloads = [
                self._begin_unload(s, "shut down", None, grace)
                for s in list(self.slots.values())
                if s.state is State.READY
            ]
            unloads += [t for t in self._unloads.values() if t not in unloads]
        log.info(
            "shutdown: %d loads cancelled, %d models unloading at once, %d requests still running",
            len(loads), len(unloads), running,
        )  # fmt: skip
        await asyncio.gather(*unloads, return_exceptions=True)


@dataclass(frozen=True)
class _Wait:
    """What a load waits for before it decides again: ``tasks`` (until the first or all of them end), and
    which of them are its own, to cancel once it has decided."""

    tasks: list[asyncio.Task[None]]
    until: str
    own: list[asyncio.Task[None]] = field(default_factory=list)


_BEGUN = _Wait([], asyncio.ALL_COMPLETED)  # the decision: the load begins
