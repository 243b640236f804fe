"""Idle TTL timers (``gateway.scheduling.idle``) on a virtual clock, through the real scheduler and model
slots (the engines are the state machine's fakes: these tests are about the timer, not an engine)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.config.manifest import ModelManifest
from gateway.scheduling.admission import Policy
from gateway.scheduling.lifecycle import ModelSlot, State
from gateway.scheduling.placement import HOST, Option
from gateway.scheduling.scheduler import Scheduler
from tests.test_scheduler_property import ANY_FILE, Engines, FakeBackend, VirtualTime

TTL = 5.0


def _setup(time: VirtualTime, engines: Engines, ttl: float = TTL) -> tuple[Scheduler, ModelSlot]:
    manifest = ModelManifest.model_validate(
        {
            "name": "m",
            "idle_ttl": ttl,
            "health_check_interval": "1h",
            "backend": {"kind": "llama_cpp", "model": str(ANY_FILE)},
        }
    )
    slot: ModelSlot

    def make(_: object) -> list[Any]:
        return [FakeBackend("m", engines, slot)]

    slot = ModelSlot(manifest, [[Option({HOST: 100})]], make, max_queue=4, clock=time.clock)
    scheduler = Scheduler(
        [slot],
        {HOST: 1000},
        drain_grace=0,
        load_failure_backoff=0,
        clock=time.clock,
        sleep=time.sleep,
        policy=Policy("fifo"),
    )
    return scheduler, slot


async def _settle() -> None:
    for _ in range(50):  # let every task that can run, run (the virtual clock does not move meanwhile)
        await asyncio.sleep(0)


def test_a_model_used_again_while_its_idle_unload_waited_is_still_reaped_later() -> None:
    """The timer's unload waits for the scheduler's decision lock; a request that comes meanwhile makes the
    model busy again, and the unload declines. The timer must go on: it once ended there, and the model was
    never unloaded for idleness again."""
    asyncio.run(_used_again_while_the_unload_waited())


async def _used_again_while_the_unload_waited() -> None:
    time, engines = VirtualTime(), Engines()
    scheduler, slot = _setup(time, engines)
    (await scheduler.acquire(slot, timeout=5)).release()
    assert slot.state is State.READY
    async with scheduler._decision:  # a load decision of another model, say
        time.advance(TTL + 1)
        await _settle()
        assert not time._sleepers  # the timer has woken, and its unload waits for the lock
        (await scheduler.acquire(slot, timeout=5)).release()  # used again, at the new time
    await _settle()
    assert slot.state is State.READY  # not idle for its TTL since that request: kept
    time.advance(TTL + 1)
    await _settle()
    assert slot.state is State.UNLOADED
    assert engines.running["m"] == 0
    assert not scheduler.idle._timers  # the timer, ended, is not left behind


def test_a_model_pinned_while_its_idle_unload_waited_is_kept() -> None:
    asyncio.run(_pinned_while_the_unload_waited())


async def _pinned_while_the_unload_waited() -> None:
    time, engines = VirtualTime(), Engines()
    scheduler, slot = _setup(time, engines)
    (await scheduler.acquire(slot, timeout=5)).release()
    async with scheduler._decision:
        time.advance(TTL + 1)
        await _settle()
        assert not time._sleepers  # the timer's unload waits for the lock
        slot.pinned = True  # what the admin API's pin does
    await _settle()
    assert slot.state is State.READY
    slot.pinned = False
    time.advance(1.0)  # the timer looks again every second (at most its TTL) while the model is pinned
    await _settle()
    assert slot.state is State.UNLOADED


def test_the_timer_reads_the_idle_time_as_the_unload_does() -> None:
    """``last_used + ttl - now`` can be 0 where ``now - last_used < ttl`` (rounding): the timer then called
    an unload that declined, without a yield between, forever. An unload that is asked for more than twice
    stops the timer here, so that such a loop fails the test rather than hanging it."""
    asyncio.run(_rounding())


async def _rounding() -> None:
    time, engines = VirtualTime(), Engines()
    time.now = 761201.482467663
    scheduler, slot = _setup(time, engines, ttl=0.1)
    asked = 0
    unload = scheduler.idle._unload

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal asked
        asked += 1
        if asked > 2:
            raise asyncio.CancelledError  # ends the timer (an exception would be logged and retried)
        return unload(*args, **kwargs)

    scheduler.idle._unload = counted
    (await scheduler.acquire(slot, timeout=5)).release()
    await _settle()
    time.advance(0.1)  # now == last_used + 0.1 as a float; now - last_used is still a hair under 0.1
    await _settle()
    assert slot.state is State.READY and asked == 0
    time.advance(0.001)
    await _settle()
    assert slot.state is State.UNLOADED
    assert asked == 1


def test_the_timer_of_an_unloaded_model_starts_again_when_it_is_loaded_again() -> None:
    asyncio.run(_loaded_twice())


async def _loaded_twice() -> None:
    time, engines = VirtualTime(), Engines()
    scheduler, slot = _setup(time, engines)
    for _ in range(2):
        (await scheduler.acquire(slot, timeout=5)).release()
        assert slot.state is State.READY
        time.advance(TTL - 1)
        await _settle()
        assert slot.state is State.READY  # not yet
        time.advance(2)
        await _settle()
        assert slot.state is State.UNLOADED
    await scheduler.shutdown()


def test_an_idle_unload_that_fails_is_tried_again_after_the_ttl() -> None:
    asyncio.run(_failed_once())


async def _failed_once() -> None:
    time, engines = VirtualTime(), Engines()
    scheduler, slot = _setup(time, engines)
    asked = 0
    unload = scheduler.idle._unload

    def fails_first(*args: Any, **kwargs: Any) -> Any:
        nonlocal asked
        asked += 1
        if asked == 1:
            raise RuntimeError("the engine would not stop")
        return unload(*args, **kwargs)

    scheduler.idle._unload = fails_first
    (await scheduler.acquire(slot, timeout=5)).release()
    time.advance(TTL + 1)
    await _settle()
    assert asked == 1 and slot.state is State.READY  # failed: logged, and the timer waits a TTL
    time.advance(TTL)
    await _settle()
    assert asked == 2 and slot.state is State.UNLOADED
