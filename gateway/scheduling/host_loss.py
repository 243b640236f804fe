"""Hosts that go down and come back, as an orchestrating engine (a swarm's manager) reports them: the hook
between its watch and the scheduler. The decisions are pure (``lifecycle.ModelSlot.units_on``, ``lose``);
the moves go through the scheduler.

A host that goes down, at once (before any request fails on it):

- its devices' budgets become 0, so no placement chooses it;
- every model with units there: those units' memory is released, and their replicas leave the rotation;
- then, per model: if replicas are left, it keeps serving from them, and the lost units are placed again
  beside what is resident (``Scheduler.place_again``: evicting nobody; where they do not fit, the model
  serves from fewer replicas); if none is left (or a helper of them all, an RPC worker, was lost), it is
  unloaded at once and loaded again, placed on the hosts left (requests meanwhile wait for that load, or
  get 503 with Retry-After, as for any load); a load under way onto the lost host is cancelled and started
  again. Other models are not touched. The lost replicas are stopped in the background (their engine
  removes what it can reach; what it cannot is removed when the host comes back).

A host that comes back: its budgets are restored, placements use it again, and the models that serve from
fewer replicas than they should (their lost ones fitted nowhere) have those placed again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import Any

from backends.base import Backend
from gateway.scheduling.lifecycle import ModelSlot, State
from gateway.scheduling.scheduler import Scheduler

log = logging.getLogger(__name__)


class HostLoss:
    """``host_down`` and ``host_up`` (an engine's ``HostListener``), for hosts whose devices ``devices``
    names."""

    def __init__(self, scheduler: Scheduler, devices: Mapping[str, Sequence[str]]) -> None:
        self.scheduler = scheduler
        self.devices = devices
        self.down: dict[str, float] = {}  # hosts down, and when it was reported (loop time)
        self._kept: dict[str, int] = {}  # the budgets of the devices of hosts that are down
        self._tasks: set[asyncio.Task[None]] = set()

    def host_down(self, host: str) -> None:
        if host in self.down:
            return
        loop = asyncio.get_running_loop()
        self.down[host] = loop.time()
        budgets = self.scheduler.budgets
        for device in self.devices.get(host, ()):
            self._kept[device] = budgets.get(device, 0)
            budgets[device] = 0
        for slot in list(self.scheduler.slots.values()):
            units = slot.units_on(host)
            if not units:
                continue
            state = slot.state
            lost, serving = slot.lose(units)
            log.warning(
                "%s: %d units on %s, which is down, are out (%s)",
                slot.name, len(units), host, "serving from the rest" if serving else "placed again",
            )  # fmt: skip
            self._spawn(self._recover(slot, state, units, lost, serving, host))

    def host_up(self, host: str) -> None:
        if self.down.pop(host, None) is None:
            return
        budgets = self.scheduler.budgets
        for device in self.devices.get(host, ()):
            if device in self._kept:
                budgets[device] = self._kept.pop(device)
        for slot in list(self.scheduler.slots.values()):
            units = slot.units_lost()
            if units and slot.state is State.READY:
                self._spawn(self._replace(slot, units))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("recovering from a lost host failed: %r", task.exception())

    async def _recover(
        self,
        slot: ModelSlot,
        state: State,
        units: Sequence[int],
        lost: Iterable[Backend],
        serving: bool,
        host: str,
    ) -> None:
        stopping = asyncio.gather(*(b.stop() for b in lost), return_exceptions=True)
        scheduler = self.scheduler
        try:
            if state is State.READY and serving:
                await self._replace(slot, units)
            elif state is State.READY:
                await scheduler.unload(slot, f"unloaded: its host {host} is down", "host-down", grace=0)
                scheduler.load(slot)  # placed again, on the hosts left
            elif state is State.LOADING and await scheduler.cancel_load(slot):
                scheduler.load(slot)
        finally:
            await stopping

    async def _replace(self, slot: ModelSlot, units: Sequence[int]) -> None:
        placed = await self.scheduler.place_again(slot, units)
        if isinstance(placed, str):
            log.warning(
                "%s serves from fewer replicas: the lost ones do not fit elsewhere: %s", slot.name, placed
            )
            return
        pool = slot.pool
        results = await asyncio.gather(*(b.start() for b in placed), return_exceptions=True)
        for unit, backend, result in zip(units, placed, results, strict=True):
            if isinstance(result, BaseException) or slot.pool is not pool or pool is None:
                await backend.stop()
                if slot.pool is pool:
                    slot.unplace(unit)
                if isinstance(result, BaseException):
                    log.warning("%s: the replacement of replica %d failed: %s", slot.name, unit, result)
                continue
            pool.replace(unit, backend)
            log.info("%s: replica %d placed again", slot.name, unit)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
