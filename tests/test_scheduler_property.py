"""A stateful property test of the real ``Scheduler`` and ``ModelSlot`` over recording fake engines.

Hypothesis drives random sequences of requests (held or released at once, alone or two at a time), lease
releases, admin unloads, pin changes, engine start failures, reloads (a model changed, added or removed,
also while a request for it is loading it), cancelled loads, idle-TTL expiry on a virtual clock, and a
shutdown in the middle of a load. After every step it checks what an operator relies on: the models that
hold memory, and the engines really running, never add up to more than the budget; every running engine
belongs to a ready slot the scheduler knows (a replaced version never runs); a ready model has a running
engine and its health checks running, an unloaded one has neither (and after shutdown no task at all is
left pending); a pinned ready model is never evicted to make room for another; a lone request gets exactly
the answer the policy promises (served, 503 insufficient_memory naming the holders, 503 model_load_failed,
or 404 once removed); and a model idle past its TTL is unloaded.

Everything runs on one event loop owned by the machine. ``drain_grace=0`` and ``load_failure_backoff=0`` mean
nothing waits on wall time: every step finishes as soon as the loop has run its callbacks, so a request that
times out is reported as a failure (a hang), not as an allowed outcome. The health checks run on an hour's
interval: they are started and cancelled for real, but no probe fires during a run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule

from backends.base import BackendError, OpenAIRequest, ReplicaInfo, UpstreamResponse
from backends.errors import GatewayError, InsufficientMemory, LoadFailed, ModelNotFound, ModelUnavailable
from gateway.config.manifest import ModelManifest
from gateway.scheduling.admission import Policy
from gateway.scheduling.lifecycle import HOLDS_MEMORY, Lease, ModelSlot, State
from gateway.scheduling.placement import HOST, Option
from gateway.scheduling.scheduler import Scheduler

T = TypeVar("T")
BUDGET = 1000
# The manifest validator only checks that the model file exists; the fake engines never read it.
ANY_FILE = Path(__file__).resolve()


class Engines:
    """What the fake engines did, shared by every replica of every model."""

    def __init__(self) -> None:
        self.running: dict[str, int] = {}  # model -> engines started and not yet stopped
        self.fails: dict[str, bool] = {}  # model -> whether its next start raises
        self.starts: dict[str, int] = {}
        self.owners: dict[FakeBackend, ModelSlot] = {}  # running engines, by the slot that made them


class VirtualTime:
    """The idle timers' clock and sleep: time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [f for at, f in self._sleepers if at <= self.now]
        self._sleepers = [(at, f) for at, f in self._sleepers if at > self.now]
        for future in due:
            if not future.done():
                future.set_result(None)


class FakeBackend:
    """One replica: ``start`` succeeds or raises as ``Engines.fails`` says; ``stop`` records."""

    def __init__(self, model: str, engines: Engines, owner: ModelSlot | None = None) -> None:
        self.model = model
        self.engines = engines
        self.owner = owner
        self.started = False

    @property
    def capacity(self) -> int:
        return 1

    async def start(self) -> None:
        await asyncio.sleep(0)  # a yield, so that concurrent requests interleave with the load
        self.engines.starts[self.model] = self.engines.starts.get(self.model, 0) + 1
        if self.engines.fails.get(self.model):
            raise BackendError(f"{self.model}: engine refused to start")
        if not self.started:
            self.started = True
            self.engines.running[self.model] = self.engines.running.get(self.model, 0) + 1
            if self.owner is not None:
                self.engines.owners[self] = self.owner

    async def stop(self) -> None:
        await asyncio.sleep(0)
        if self.started:
            self.started = False
            self.engines.running[self.model] -= 1
            self.engines.owners.pop(self, None)

    async def health(self) -> bool:
        return self.started

    def describe(self) -> ReplicaInfo:
        return ReplicaInfo()

    async def forward(self, request: OpenAIRequest) -> UpstreamResponse:
        raise NotImplementedError("not used by the scheduler")


model_specs = st.lists(
    st.tuples(
        # memory: a few models fit beside each other, one fills the budget exactly, one is bigger than it
        st.sampled_from([100, 250, 300, 450, 500, 600, 700, 1000, 1100]),
        st.sampled_from([False, False, True]),  # pinned
        st.sampled_from([False, False, False, True]),  # fails to start
        st.sampled_from([None, None, 5.0, 30.0]),  # idle_ttl
    ),
    min_size=3,
    max_size=6,
)


class SchedulerMachine(RuleBasedStateMachine):
    slots = Bundle("slots")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        self.engines = Engines()
        self.scheduler: Scheduler | None = None
        self.all_slots: list[ModelSlot] = []
        self.held: list[Lease] = []
        self.time = VirtualTime()
        self.added = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to the end, then let background work (drains the request did not wait for) finish.
        Health checks are background work that only ends with an unload: they are not waited for."""
        result = self.loop.run_until_complete(coro)
        while pending := self.background():
            self.loop.run_until_complete(asyncio.wait(pending))
        return result

    def background(self) -> list[asyncio.Task[Any]]:
        """Pending tasks, but health checks and idle timers: those only end with an unload."""
        checks = {s.health_checks for s in self.all_slots}
        return [
            t
            for t in asyncio.all_tasks(self.loop)
            if not t.done() and t not in checks and not t.get_name().startswith("ttl:")
        ]

    def make_slot(self, name: str, memory: int, pinned: bool, ttl: float | None = None) -> ModelSlot:
        manifest = ModelManifest.model_validate(
            {
                "name": name,
                "pinned": pinned,
                "idle_ttl": ttl,
                "health_check_interval": "1h",
                "backend": {"kind": "llama_cpp", "model": str(ANY_FILE)},
            }
        )
        slot: ModelSlot

        def make(_: object) -> list[Any]:
            return [FakeBackend(name, self.engines, slot)]

        slot = ModelSlot(manifest, [[Option({HOST: memory})]], make, max_queue=4, clock=self.time.clock)
        return slot

    @initialize(target=slots, specs=model_specs)
    def build(self, specs: list[tuple[int, bool, bool, float | None]]) -> Any:
        for i, (memory, pinned, fails, ttl) in enumerate(specs):
            name = f"m{i}"
            self.engines.fails[name] = fails
            self.all_slots.append(self.make_slot(name, memory, pinned, ttl))
        self.scheduler = Scheduler(
            self.all_slots,
            {HOST: BUDGET},
            drain_grace=0,
            load_failure_backoff=0,
            clock=self.time.clock,
            sleep=self.time.sleep,
            # First come, first served: the promises checked here. Swap-aware admission makes a request
            # wait (on the virtual clock) while busy models serve: tests/test_admission.py checks that.
            policy=Policy("fifo"),
        )
        return multiple(*self.all_slots)

    @staticmethod
    def current(slot: ModelSlot) -> ModelSlot:
        """The version a client asking for ``slot``'s name reaches now."""
        while slot.replaced_by is not None:
            slot = slot.replaced_by
        return slot

    # -- helpers ---------------------------------------------------------------------------------------
    @property
    def sched(self) -> Scheduler:
        assert self.scheduler is not None
        return self.scheduler

    def pinned_ready(self) -> set[str]:
        return {s.name for s in self.sched.slots.values() if s.pinned and s.state is State.READY}

    def ready(self) -> dict[str, int]:
        return {s.name: s.in_flight for s in self.sched.slots.values() if s.state is State.READY}

    def check_evictions(self, ready_before: dict[str, int], pinned_before: set[str]) -> None:
        lost = {n for n in pinned_before if self.sched.slots[n].state is not State.READY}
        assert not lost, f"pinned ready models were unloaded by a request for another model: {lost}"
        for name, in_flight in ready_before.items():
            if self.sched.slots[name].state is not State.READY:
                event("evicted a busy model" if in_flight else "evicted an idle model")

    async def acquire(self, slot: ModelSlot) -> Lease | GatewayError:
        try:
            lease = await self.sched.acquire(slot, timeout=5)
        except (InsufficientMemory, LoadFailed, ModelNotFound) as exc:
            event(f"request refused: {exc.code}")
            return exc  # 503s the policy allows; anything else (a timeout) fails the test
        event("request served")
        return lease

    def keep_or_release(self, slot: ModelSlot, got: Lease | GatewayError, hold: bool) -> None:
        if isinstance(got, Lease):
            assert got.slot is self.current(slot)
            if hold:
                self.held.append(got)
            else:
                got.release()

    # -- rules -----------------------------------------------------------------------------------------
    @rule(slot=slots, hold=st.booleans())
    def request(self, slot: ModelSlot, hold: bool) -> None:
        slot = self.current(slot)
        if slot.removed:
            got = self.run(self.acquire(slot))
            assert isinstance(got, ModelNotFound), got
            return
        ready, pinned = self.ready(), self.pinned_ready()
        # What the policy promises a lone request, from the state before it.
        pinned_others = sum(self.sched.slots[n].memory for n in pinned if n != slot.name)
        if slot.state is State.READY:
            expected = "served"
        elif slot.memory + pinned_others > BUDGET:
            expected = "insufficient_memory"
        elif self.engines.fails[slot.name]:
            expected = "model_load_failed"
        else:
            expected = "served"

        in_flight = slot.in_flight  # leases still held from an earlier load count too
        busy = {n for n in ready if self.sched.slots[n].in_flight}
        plan = self.sched.plan(slot)  # the dry run, from the same state: the load must do just this
        got = self.run(self.acquire(slot))
        self.keep_or_release(slot, got, hold)
        self.check_evictions(ready, pinned)
        assert (got.code if isinstance(got, GatewayError) else "served") == expected, got
        assert plan.fits == (expected != "insufficient_memory")
        assert plan.already_loaded == (ready.keys() >= {slot.name})
        gone = {n for n in ready if self.sched.slots[n].state is not State.READY} - {slot.name}
        assert gone == set(plan.evict), (plan, gone)
        assert set(plan.drain) == set(plan.evict) & busy
        if expected == "served":
            assert self.sched.used() == dict(plan.used_after or {})
        elif expected == "model_load_failed":  # evicted for it, then its memory was given back
            assert self.sched.used()[HOST] == (plan.used_after or {})[HOST] - slot.memory
        if isinstance(got, InsufficientMemory):
            assert slot.state is State.UNLOADED
            assert self.ready() == ready, "nothing is evicted for a model that cannot fit anyway"
            if slot.memory > BUDGET:
                assert "more than the whole budget" in got.message
            else:  # the answer names the pinned models that hold the memory
                for name in pinned - {slot.name}:
                    assert f"{name} " in got.message and "(pinned)" in got.message
        elif isinstance(got, LoadFailed):
            assert slot.state is State.UNLOADED and slot.failure is not None
            assert "engine refused to start" in got.message
        else:
            assert slot.state is State.READY
            assert slot.in_flight == in_flight + (1 if hold else 0)

    @rule(first=slots, second=slots, hold=st.booleans())
    def two_requests_at_once(self, first: ModelSlot, second: ModelSlot, hold: bool) -> None:
        ready, pinned = self.ready(), self.pinned_ready()

        async def both() -> list[Lease | GatewayError]:
            return list(await asyncio.gather(self.acquire(first), self.acquire(second)))

        first, second = self.current(first), self.current(second)
        if first.removed or second.removed:
            return
        got = self.run(both())
        for slot, outcome in zip((first, second), got, strict=True):
            self.keep_or_release(slot, outcome, hold)
        self.check_evictions(ready, pinned)
        if first is second:
            # Concurrent first requests for one model share its one load, and so its outcome.
            assert type(got[0]) is type(got[1])
        elif self.each_fits_alone(first, pinned) and self.each_fits_alone(second, pinned):
            # Two models that each fit beside the pinned ones are both served, even when they do not fit
            # together: the second waits for the first's load, then evicts it (no 503 for a transition).
            assert all(isinstance(g, Lease) for g in got), got

    def each_fits_alone(self, slot: ModelSlot, pinned_before: set[str]) -> bool:
        others = sum(self.sched.slots[n].memory for n in pinned_before if n != slot.name)
        return not slot.pinned and not self.engines.fails[slot.name] and slot.memory + others <= BUDGET

    @rule(which=st.integers(min_value=0, max_value=5))
    def release(self, which: int) -> None:
        if not self.held:
            event("nothing to release")
            return
        lease = self.held.pop(which % len(self.held))
        slot = lease.slot
        in_flight = slot.in_flight
        lease.release()
        lease.release()  # idempotent
        assert slot.in_flight == in_flight - 1

    @rule(slot=slots)
    def admin_unload(self, slot: ModelSlot) -> None:
        slot = self.current(slot)
        was_ready = slot.state is State.READY
        unloaded = self.run(self.sched.unload(slot, "unloaded by an operator"))
        assert unloaded == was_ready
        assert slot.state is State.UNLOADED

    @rule(slot=slots, pinned=st.booleans())
    def pin(self, slot: ModelSlot, pinned: bool) -> None:
        slot.pinned = pinned

    @rule(slot=slots)
    def toggle_start_failure(self, slot: ModelSlot) -> None:
        self.engines.fails[slot.name] = not self.engines.fails[slot.name]

    # -- reloads, cancellations, time, shutdown (the reloader's own steps: gateway.control.reload) -------
    async def retire(self, old: ModelSlot) -> None:
        self.sched.retire(old)
        await self.sched.cancel_load(old)
        await self.sched.unload(old, "changed by a reload", "reload")

    async def change(self, old: ModelSlot, memory: int) -> ModelSlot:
        new = self.make_slot(old.name, memory, old.manifest.pinned, old.manifest.idle_ttl)
        old.replaced_by = new
        await self.retire(old)
        self.sched.adopt(new)
        self.all_slots.append(new)
        return new

    @rule(slot=slots, memory=st.sampled_from([100, 300, 600, 1100]), with_request=st.booleans())
    def reload_changes_a_model(self, slot: ModelSlot, memory: int, with_request: bool) -> None:
        """A changed manifest, alone or while a request for that model is loading it (maybe waiting for
        evictions): the old version never loads, the request is served by the new one or refused."""
        old = self.current(slot)
        if old.removed:
            return

        async def both() -> list[Any]:
            request = asyncio.ensure_future(self.acquire(old))
            await asyncio.sleep(0)  # the request's load starts (and may begin evicting)
            new = await self.change(old, memory)
            return [await request, new]

        got, new = self.run(both()) if with_request else [None, self.run(self.change(old, memory))]
        assert old.state is State.UNLOADED and old.retired
        if isinstance(got, Lease):  # served before the reload took effect, or by the new version
            assert got.slot in (old, new)
            got.release()
        elif got is not None:
            assert isinstance(got, (InsufficientMemory, LoadFailed)), got

    @rule(target=slots, memory=st.sampled_from([100, 300, 600]))
    def reload_adds_a_model(self, memory: int) -> ModelSlot:
        name = f"added{self.added}"
        self.added += 1
        self.engines.fails[name] = False
        slot = self.make_slot(name, memory, False, 5.0)
        self.sched.adopt(slot)
        self.all_slots.append(slot)
        return slot

    @rule(slot=slots)
    def reload_removes_a_model(self, slot: ModelSlot) -> None:
        slot = self.current(slot)
        if slot.removed:
            return
        slot.removed = True
        self.run(self.retire(slot))
        self.sched.forget(slot)
        assert slot.state is State.UNLOADED

    @rule(slot=slots)
    def cancel_a_load(self, slot: ModelSlot) -> None:
        slot = self.current(slot)
        if slot.removed or slot.state is not State.UNLOADED:
            return

        async def load_then_cancel() -> tuple[Any, bool]:
            request = asyncio.ensure_future(self.acquire(slot))
            await asyncio.sleep(0)
            cancelled = await self.sched.cancel_load(slot)
            try:
                return await request, cancelled
            except ModelUnavailable as exc:
                return exc, cancelled

        failure = slot.failure
        got, cancelled = self.run(load_then_cancel())
        if isinstance(got, Lease):
            got.release()
        if cancelled:
            assert slot.failure is failure, "a cancelled load is not the model's failure"
            assert isinstance(got, ModelUnavailable) and "cancelled" in got.message, got

    @rule(seconds=st.sampled_from([1.0, 5.0, 31.0]))
    def time_passes(self, seconds: float) -> None:
        idle_since = {s: s.last_used for s in self.sched.slots.values()}
        self.time.advance(seconds)

        async def settle() -> None:
            for _ in range(5):
                await asyncio.sleep(0)

        self.run(settle())
        for slot, last_used in idle_since.items():
            ttl = slot.manifest.idle_ttl
            expired = ttl is not None and self.time.now - last_used >= ttl
            if expired and not slot.pinned and not slot.in_flight and slot.state is not State.UNLOADED:
                raise AssertionError(f"{slot.name} idle past its {ttl}s TTL is still {slot.state}")

    @rule(slot=slots)
    def shutdown_while_loading(self, slot: ModelSlot) -> None:
        slot = self.current(slot)

        async def both() -> None:
            request = asyncio.ensure_future(self.acquire(slot))
            await asyncio.sleep(0)
            await self.sched.shutdown()
            with contextlib.suppress(GatewayError):
                got = await request
                if isinstance(got, Lease):
                    got.release()

        self.run(both())
        for lease in self.held:
            lease.release()
        self.held.clear()
        self.run(self.sched.shutdown())  # what the request loaded after the first one
        assert all(s.state is State.UNLOADED for s in self.sched.slots.values())
        assert not any(self.engines.running.values())

    # -- invariants ------------------------------------------------------------------------------------
    @invariant()
    def memory_held_within_budget(self) -> None:
        held = sum(s.memory for s in self.all_slots if s.state in HOLDS_MEMORY)
        assert held <= BUDGET
        if self.scheduler is not None:
            assert self.sched.used()[HOST] == held

    @invariant()
    def running_engines_within_budget(self) -> None:
        assert sum(owner.memory for owner in self.engines.owners.values()) <= BUDGET
        assert all(n in (0, 1) for n in self.engines.running.values()), self.engines.running

    @invariant()
    def every_running_engine_belongs_to_a_known_ready_slot(self) -> None:
        if self.scheduler is None:
            return
        known = set(self.sched.slots.values())
        for backend, owner in self.engines.owners.items():
            assert owner in known, f"{backend.model}: an engine of a version the scheduler no longer knows"
            assert owner.state is State.READY and not owner.retired, (backend.model, owner.state)

    @invariant()
    def engines_match_states(self) -> None:
        for slot in self.all_slots:
            running = sum(1 for owner in self.engines.owners.values() if owner is slot)
            # Between steps nothing is half way: no load or drain is left stuck.
            assert slot.state in (State.READY, State.UNLOADED), (slot.name, slot.state)
            checks = slot.health_checks
            if slot.state is State.READY:
                assert running == 1, f"{slot.name} is ready without a running engine"
                assert slot.pool is not None
                assert checks is not None and not checks.done(), f"{slot.name} is ready but not checked"
            else:
                assert running == 0, f"{slot.name} is unloaded but its engine still runs"
                assert slot.pool is None
                assert checks is None, f"{slot.name} is unloaded but its health checks still run"

    @invariant()
    def no_unhandled_loop_errors(self) -> None:
        assert not self.loop_errors, self.loop_errors

    def teardown(self) -> None:
        try:
            for lease in self.held:
                lease.release()
            if self.scheduler is not None:
                self.run(self.sched.shutdown())
                assert all(s.state is State.UNLOADED for s in self.all_slots)
                assert not any(self.engines.running.values()), self.engines.running
                assert all(s.in_flight == 0 for s in self.all_slots)
                left = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
                assert not left, f"tasks left pending after shutdown: {left}"
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()


SchedulerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_scheduler_state_machine = SchedulerMachine.TestCase
