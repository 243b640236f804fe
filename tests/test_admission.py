"""Swap-aware admission: the pure rule (``gateway.scheduling.admission``), and the real ``Scheduler`` on a
virtual clock under arbitrary arrivals of requests for models that do not fit together: every request gets
its model within its ``max_swap_wait`` (loads and drains take no virtual time here), none starves, and a
busy model keeps serving while others wait instead of being swapped out for each request."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.routing.fair_queue import Priority
from gateway.scheduling.admission import OPEN, Activity, Admission, Policy, Waiting, admit
from gateway.scheduling.lifecycle import Lease
from gateway.scheduling.placement import HOST
from gateway.scheduling.scheduler import Scheduler
from tests.test_scheduler_property import Engines, SchedulerMachine, VirtualTime

Arrival = tuple[int, float, float, Priority]  # model, gap after the previous arrival, hold, class
SWAP_WAIT = 10.0
POLICY = Policy("swap-aware", linger=0.5)


def test_a_busy_resident_is_protected_until_the_bound() -> None:
    busy = Activity("a", in_flight=1, queued=0, last_used=99.0)
    target = Waiting(oldest=95.0, max_swap_wait=SWAP_WAIT)
    assert admit(target, [busy], 100.0, POLICY) == Admission(frozenset({"a"}), 100.5)
    assert admit(target, [busy], 105.0, POLICY) == OPEN  # 95 + 10: its turn
    # idle residents go at once; a request just served still counts (its client's next one is coming)
    idle = Activity("b", in_flight=0, queued=0, last_used=90.0)
    just = Activity("c", in_flight=0, queued=0, last_used=99.8)
    assert admit(target, [idle, just], 100.0, POLICY) == Admission(frozenset({"c"}), 100.3)
    queued = Activity("d", in_flight=0, queued=2, last_used=10.0)
    assert admit(target, [queued], 100.0, POLICY).protected == {"d"}
    # an operator's load (no request waits) and the fifo policy protect nothing
    assert admit(Waiting(None, SWAP_WAIT), [busy], 100.0, POLICY) == OPEN
    assert admit(target, [busy], 100.0, Policy("fifo")) == OPEN


def test_interactive_requests_do_not_wait_for_a_batch_flood() -> None:
    """A resident busy with batch work only is drained at once for a model an interactive request waits
    for; against a load only batch requests wait for, it keeps its turn like any busy resident. One with
    interactive work is protected from both."""
    flood = Activity("flood", in_flight=4, queued=8, last_used=99.9, interactive=False)
    mixed = Activity("mixed", in_flight=1, queued=0, last_used=99.9)
    interactive = Waiting(oldest=99.0, max_swap_wait=SWAP_WAIT)
    batch = Waiting(oldest=99.0, max_swap_wait=SWAP_WAIT, interactive=False)
    assert admit(interactive, [flood], 100.0, POLICY) == OPEN
    assert admit(batch, [flood], 100.0, POLICY).protected == {"flood"}
    assert admit(interactive, [flood, mixed], 100.0, POLICY).protected == {"mixed"}
    assert admit(batch, [flood, mixed], 100.0, POLICY).protected == {"flood", "mixed"}


@given(
    start=st.floats(0, 1000),
    wait=st.floats(0.1, 100),
    elapsed=st.floats(0, 200),
    residents=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.floats(0, 1200), st.booleans()), max_size=4
    ),
    interactive=st.booleans(),
)
def test_the_answer_never_outlives_the_bound(
    start: float,
    wait: float,
    elapsed: float,
    residents: list[tuple[int, int, float, bool]],
    interactive: bool,
) -> None:
    now = start + elapsed
    activity = [Activity(f"r{i}", f, q, min(u, now), c) for i, (f, q, u, c) in enumerate(residents)]
    answer = admit(Waiting(start, wait, interactive), activity, now, POLICY)
    if now >= start + wait:
        assert answer == OPEN
    if answer.protected:
        assert answer.recheck_at is not None and now <= answer.recheck_at <= start + wait
    if interactive:  # a batch-only resident never holds up a model an interactive request waits for
        assert not answer.protected & {r.name for r in activity if not r.interactive}


# --- the real scheduler, on a virtual clock ------------------------------------------------------------

arrivals = st.lists(
    st.tuples(
        st.integers(0, 2),  # which model
        st.floats(0, 3, allow_nan=False),  # seconds after the previous arrival
        st.floats(0, 4, allow_nan=False),  # how long it holds its lease
        st.sampled_from(["interactive", "batch"]),  # its priority class
    ),
    min_size=1,
    max_size=25,
)


class _Run:
    """Three models under a budget that holds one; requests arrive at virtual times and hold their lease
    for a while; the loop runs until nothing can move, then the clock jumps to the next thing due."""

    def __init__(self) -> None:
        self.machine = SchedulerMachine()  # its fake engines, virtual clock and slots
        self.loop = self.machine.loop
        self.time: VirtualTime = self.machine.time
        self.slots = [self.machine.make_slot(f"m{i}", 600, False) for i in range(3)]
        for slot in self.slots:
            slot.max_queue = 100  # every request of a script waits: none is refused for a full queue
        self.machine.engines = Engines()
        self.scheduler = Scheduler(
            self.slots, {HOST: 1000}, drain_grace=0, load_failure_backoff=0,
            clock=self.time.clock, sleep=self.time.sleep, policy=POLICY, max_swap_wait=SWAP_WAIT,
        )  # fmt: skip
        self.waits: list[float] = []
        self.by_model: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.loads = 0

    async def request(self, model: int, hold: float, priority: Priority = "interactive") -> None:
        began = self.time.now
        lease: Lease = await self.scheduler.acquire(self.slots[model], timeout=10_000, priority=priority)
        self.waits.append(self.time.now - began)
        self.by_model[model].append(self.time.now - began)
        await self.time.sleep(hold)
        lease.release()

    def settle(self) -> None:
        async def turns() -> None:
            for _ in range(50):  # enough turns of the loop for every ready callback to run
                await asyncio.sleep(0)

        self.loop.run_until_complete(turns())

    def play(self, script: Sequence[tuple[int, float, float] | Arrival]) -> list[asyncio.Task[Any]]:
        tasks = []
        for model, gap, hold, *priority in script:
            self.advance(gap)
            tasks.append(self.loop.create_task(self.request(model, hold, *priority)))
            self.settle()
        while not all(t.done() for t in tasks):
            due = [at for at, f in self.time._sleepers if not f.done()]
            assert due, "requests wait with nothing due: a request starved"
            self.advance(min(due) - self.time.now)
        return tasks

    def advance(self, seconds: float) -> None:
        """Move the clock in steps no longer than any timer, running the loop after each."""
        end = self.time.now + seconds
        while True:
            due = [at for at, f in self.time._sleepers if not f.done() and at <= end]
            step_to = min(due, default=end)
            self.time.advance(max(step_to - self.time.now, 0.0))
            self.settle()
            if step_to >= end:
                return


@settings(max_examples=60, deadline=None)
@given(script=arrivals)
def test_every_request_gets_its_model_within_its_bound(script: list[Arrival]) -> None:
    """With both priority classes mixed: interactive requests drain batch-only models at once, and every
    request, batch ones included, still gets its model within its bound."""
    run = _Run()
    try:
        tasks = run.play(script)
        for task in tasks:
            assert task.exception() is None, task.exception()
        assert len(run.waits) == len(script)
        # Loads and drains take no virtual time here, so the bound is max_swap_wait itself.
        assert max(run.waits) <= SWAP_WAIT + 1e-6, run.waits
    finally:
        run.loop.run_until_complete(run.scheduler.shutdown(grace=0))
        run.loop.close()


def test_a_busy_model_keeps_serving_while_another_waits() -> None:
    """Clients of one model keep it busy; a request for another waits its bound, not a swap per request."""
    run = _Run()
    try:
        # m0 serves a steady stream (each request 1 s, the next 0.1 s after); m1 asks once at t=2.
        script = [(0, 0.0, 1.0)] + [(0, 1.1, 1.0)] * 20
        script.insert(3, (1, 0.0, 1.0))
        run.play(script)
        assert run.slots[0].loads == 2 and run.slots[1].loads == 1  # one swap there and one back
        # m1 waited its whole bound while m0 served (first come, first served would have swapped at once,
        # cutting m0's request in flight); m0's requests that came while m1 was in were served after it.
        assert run.by_model[1] == [SWAP_WAIT]
        assert max(run.waits) <= SWAP_WAIT + 1e-6
    finally:
        run.loop.run_until_complete(run.scheduler.shutdown(grace=0))
        run.loop.close()


def test_an_interactive_request_does_not_wait_for_a_batch_flood() -> None:
    """The scheduler passes the requests' classes to admission: m0 busy with batch work only is drained at
    once for an interactive request for m1 (a batch one waits its bound); m0's flood gets it back after."""
    for priority, waited in (("interactive", 0.0), ("batch", SWAP_WAIT)):
        run = _Run()
        try:
            script: list[Arrival] = [(0, 0.0, 1.0, "batch")] + [(0, 1.1, 1.0, "batch")] * 20
            script.insert(3, (1, 0.0, 1.0, priority))
            tasks = run.play(script)
            assert all(t.exception() is None for t in tasks)
            assert run.by_model[1] == [waited], priority
            assert run.slots[0].loads == 2 and run.slots[1].loads == 1  # one swap there and one back
        finally:
            run.loop.run_until_complete(run.scheduler.shutdown(grace=0))
            run.loop.close()


def test_an_interactive_load_goes_ahead_of_a_batch_load_waiting_its_turn() -> None:
    """m0 busy with batch work; a batch request for m1 waits its turn; an interactive request for m2 that
    comes after it does not wait behind m1's load (loads that must evict otherwise go first come, first
    served), and m1's request still gets its model within its bound."""
    run = _Run()
    try:
        script: list[Arrival] = [(0, 0.0, 1.0, "batch")] + [(0, 1.1, 1.0, "batch")] * 20
        script.insert(3, (1, 0.0, 1.0, "batch"))
        script.insert(5, (2, 0.0, 1.0, "interactive"))
        tasks = run.play(script)
        assert all(t.exception() is None for t in tasks)
        assert run.by_model[2] == [0.0]
        assert run.by_model[1][0] <= SWAP_WAIT + 1e-6 and max(run.waits) <= SWAP_WAIT + 1e-6, run.waits
    finally:
        run.loop.run_until_complete(run.scheduler.shutdown(grace=0))
        run.loop.close()
