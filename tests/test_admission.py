"""Swap-aware admission: the pure rule (``gateway.scheduling.admission``), and the real ``Scheduler`` on a
virtual clock under arbitrary arrivals of requests for models that do not fit together: every request gets
its model within its ``max_swap_wait`` (where loads and drains take no virtual time), none starves, and a
busy model keeps serving while others wait instead of being swapped out for each request. With loads and
drains that take virtual time, closed-loop clients of three models still get theirs within
``max_swap_wait`` plus the error of the drain estimates (the turn comes early by the swap's expected time).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.routing.fair_queue import Priority
from gateway.scheduling.admission import (
    DUE_WITHIN,
    OPEN,
    Activity,
    Admission,
    Policy,
    Waiting,
    admit,
    busy,
    expected_drain,
    turn_due,
)
from gateway.scheduling.hooks import Quiet
from gateway.scheduling.lifecycle import Lease, ModelSlot
from gateway.scheduling.placement import HOST
from gateway.scheduling.scheduler import Scheduler
from gateway.scheduling.waiting import BOUND_LOG_EVERY
from tests.test_scheduler_property import Engines, FakeBackend, SchedulerMachine, VirtualTime

Arrival = tuple[int, float, float, Priority]  # model, gap after the previous arrival, hold, class
SWAP_WAIT = 10.0
POLICY = Policy("swap-aware", linger=0.5, margin=0.0)  # the rule exactly; the margin is tested apart


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


def test_a_linger_ends_at_the_instant_admission_asks_again() -> None:
    """Where ``now - last_used`` rounds below the linger at ``last_used + linger`` (these floats), the
    resident counted as busy at the very instant admission had said to ask again, which then said the same
    instant again: the load was decided again and again without the clock moving (a hang found by a run of
    the whole suite beside a busy loop)."""
    last = 511.74921327834824
    assert (last + 0.5) - last < 0.5  # the rounding itself
    idle = Activity("a", in_flight=0, queued=0, last_used=last)
    target = Waiting(oldest=last, max_swap_wait=SWAP_WAIT)
    answer = admit(target, [idle], last + 0.1, POLICY)
    assert answer == Admission(frozenset({"a"}), last + 0.5)
    assert not busy(idle, last + 0.5, 0.5)
    assert admit(target, [idle], answer.recheck_at, POLICY) == OPEN  # type: ignore[arg-type]


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


def test_the_turn_comes_early_by_the_swap_it_takes() -> None:
    """A load expected to take 1 s beside a resident whose requests in flight are expected to take 2 s to
    end: the turn comes 3 s before the bound, so that the request has its model at the bound; never before
    the floor (half the bound), however long the swap; earlier for a load queued behind it."""
    busy = Activity("a", in_flight=2, queued=0, last_used=99.0, drain=2.0)
    target = Waiting(oldest=90.0, max_swap_wait=SWAP_WAIT, load=1.0)
    assert turn_due(target, 2.0, POLICY) == 97.0
    assert admit(target, [busy], 96.9, POLICY) == Admission(frozenset({"a"}), 97.0)
    assert admit(target, [busy], 97.0, POLICY) == OPEN
    slow = Waiting(oldest=90.0, max_swap_wait=SWAP_WAIT, load=30.0)
    assert turn_due(slow, 2.0, POLICY) == 95.0  # the floor: 90 + 10 * 0.5
    # a load queued behind it keeps its bound if this one's turn begins by 98, before the residents' drain
    queued = Waiting(oldest=90.0, max_swap_wait=SWAP_WAIT, load=1.0, behind=(98.0,))
    assert turn_due(queued, 2.0, POLICY) == 96.0
    # The margin for the estimates' errors: a twentieth of max_swap_wait earlier, the floor still the floor.
    spare = Policy("swap-aware", margin=0.05)
    assert turn_due(target, 2.0, spare) == 96.5 and turn_due(queued, 2.0, spare) == 95.5
    assert turn_due(slow, 2.0, spare) == 95.0
    assert expected_drain(3, 0.5, grace=30.0) == 1.5 and expected_drain(3, 0.5, grace=1.0) == 1.0
    assert expected_drain(3, None, grace=30.0) == 0.0  # no request has ended yet: nothing to go by


@given(
    start=st.floats(0, 1000),
    wait=st.floats(0.1, 100),
    elapsed=st.floats(0, 200),
    residents=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.floats(0, 1200), st.booleans(), st.floats(0, 50)),
        max_size=4,
    ),
    interactive=st.booleans(),
    load=st.floats(0, 50),
    behind=st.lists(st.floats(0, 1300), max_size=3),
)
def test_the_answer_never_outlives_the_bound(
    start: float,
    wait: float,
    elapsed: float,
    residents: list[tuple[int, int, float, bool, float]],
    interactive: bool,
    load: float,
    behind: list[float],
) -> None:
    now = start + elapsed
    activity = [Activity(f"r{i}", f, q, min(u, now), c, d) for i, (f, q, u, c, d) in enumerate(residents)]
    target = Waiting(start, wait, interactive, load, tuple(behind))
    answer = admit(target, activity, now, POLICY)
    if now >= start + wait:
        assert answer == OPEN
    if answer.protected:
        assert answer.recheck_at is not None and now <= answer.recheck_at <= start + wait
        # Asked again when it said, the answer has moved on (a resident stopped counting as busy, or the
        # turn came): an answer that stayed the same would be asked again at once, forever.
        assert admit(target, activity, answer.recheck_at, POLICY) != answer
    if interactive:  # a batch-only resident never holds up a model an interactive request waits for
        assert not answer.protected & {r.name for r in activity if not r.interactive}
    # the turn comes early by the swap's expected time (the drain of the busy residents it would evict and
    # its own load), never before the floor: until then a busy resident keeps serving
    eligible = [r for r in activity if busy(r, now, POLICY.linger) and (r.interactive or not interactive)]
    if eligible:
        drain = max(r.drain for r in eligible)
        own = start + wait - (load + drain)
        due = max(min([own, *(b - drain for b in behind)]), start + POLICY.floor * wait)
        assert (answer == OPEN) == (now >= due - DUE_WITHIN)
        assert due >= start + POLICY.floor * wait


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


class _SlowBackend(FakeBackend):
    """A fake engine whose start takes ``seconds`` of virtual time (a load that takes time)."""

    def __init__(self, model: str, engines: Engines, owner: ModelSlot, time: VirtualTime, seconds: float):
        super().__init__(model, engines, owner)
        self.time, self.seconds = time, seconds

    async def start(self) -> None:
        await self.time.sleep(self.seconds)
        await super().start()


class _Run:
    """Three models under a budget that holds one; requests arrive at virtual times and hold their lease
    for a while; the loop runs until nothing can move, then the clock jumps to the next thing due.

    ``loads``: each model's load time (virtual seconds; none: loads take no time), and ``drain_grace``: with
    one, a drain waits for the evicted model's requests to end (up to that grace); without, it cuts them at
    once."""

    def __init__(self, loads: Sequence[float] = (), drain_grace: float = 0.0) -> None:
        self.machine = SchedulerMachine()  # its fake engines, virtual clock and slots
        self.loop = self.machine.loop
        self.time: VirtualTime = self.machine.time
        self.slots = [self.machine.make_slot(f"m{i}", 600, False) for i in range(3)]
        for i, slot in enumerate(self.slots):
            slot.max_queue = 100  # every request of a script waits: none is refused for a full queue
            if loads:
                slot._make_backends = self._slow(slot, loads[i])
        self.machine.engines = Engines()
        self.scheduler = Scheduler(
            self.slots, {HOST: 1000}, drain_grace=drain_grace, load_failure_backoff=0,
            clock=self.time.clock, sleep=self.time.sleep, policy=POLICY, max_swap_wait=SWAP_WAIT,
        )  # fmt: skip
        self.waits: list[float] = []
        self.by_model: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.loads = 0

    def _slow(self, slot: ModelSlot, seconds: float) -> Callable[[object], list[Any]]:
        def make(_: object) -> list[Any]:
            return [_SlowBackend(slot.name, self.machine.engines, slot, self.time, seconds)]

        return make

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
        self.finish(tasks)
        return tasks

    def finish(self, tasks: Sequence[asyncio.Task[Any]]) -> None:
        """Run until ``tasks`` are done, the clock jumping to the next thing due each time nothing moves."""
        self.settle()
        while not all(t.done() for t in tasks):
            due = [at for at, f in self.time._sleepers if not f.done()]
            assert due, "requests wait with nothing due: a request starved"
            self.advance(min(due) - self.time.now)

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


clients = st.tuples(
    st.lists(st.sampled_from(["interactive", "batch"]), max_size=2),  # each model's clients, by class
    st.lists(st.sampled_from(["interactive", "batch"]), max_size=2),
    st.lists(st.sampled_from(["interactive", "batch"]), max_size=2),
)


@settings(max_examples=40, deadline=None)
@given(
    clients=clients,
    holds=st.lists(st.floats(0.05, 1.5), min_size=1, max_size=8),  # each request's time in service, in turn
    thinks=st.lists(st.floats(0, 0.3), min_size=1, max_size=4),  # a client's pause before its next request
    loads=st.lists(st.floats(0.2, 1.0), min_size=3, max_size=3),  # each model's load time
)
def test_closed_loop_clients_get_their_model_within_the_bound_when_swaps_take_time(
    clients: tuple[list[Priority], ...], holds: list[float], thinks: list[float], loads: list[float]
) -> None:
    """Closed-loop clients of three models (as ``bench/swap_thrash.py``'s), for a virtual minute, with loads
    that take their time and drains that wait for the evicted model's requests in flight (a drain grace
    of a minute). A turn comes early by the swap's expected time (the load measured before, the drain from
    the requests in flight at their measured pace), so every request has its model within
    ``max_swap_wait`` plus the error of the drain estimates: a request's time in service for each of the
    (at most two) drains before it, and a recheck's ``linger``. Each model is loaded once first, so that
    its load time is known (before, the longest measured stands in)."""
    run = _Run(loads, drain_grace=60.0)
    try:
        run.play([(0, 0.0, 0.0), (1, 0.0, 0.0), (2, 0.0, 0.0)])  # each model loaded once
        run.waits.clear()
        end = run.time.now + 60.0

        async def client(model: int, k: int, priority: Priority) -> None:
            i = k
            while run.time.now < end:
                await run.request(model, holds[i % len(holds)], priority)
                await run.time.sleep(thinks[i % len(thinks)])
                i += 1

        tasks = [
            run.loop.create_task(client(model, k, priority))
            for model, classes in enumerate(clients)
            for k, priority in enumerate(classes)
        ]
        run.finish(tasks)
        for task in tasks:
            assert task.exception() is None, task.exception()
        slack = 2 * max(holds) + POLICY.linger
        assert max(run.waits, default=0.0) <= SWAP_WAIT + slack, (max(run.waits), slack)
    finally:
        run.loop.run_until_complete(run.scheduler.shutdown(grace=0))
        run.loop.close()


def test_a_wait_past_the_bound_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Swap-aware admission promises a model within ``max_swap_wait`` plus one load; a wait past that (the
    swap's estimates were off) is counted (the metrics) and logged with its numbers, at most once a minute
    per model; first-come order promises no bound, and counts and logs nothing."""
    run = _Run()
    past: list[str] = []

    class Recorder(Quiet):
        def waited_past_bound(self, model: str) -> None:
            past.append(model)

    try:
        scheduler, slot = run.scheduler, run.slots[0]
        scheduler.events = Recorder()
        slot.load_seconds = 0.5
        with caplog.at_level(logging.WARNING, logger="gateway.scheduling.waiting"):
            scheduler._waits._check_bound(slot, SWAP_WAIT + 0.5)  # at the bound: kept
            assert not past and not caplog.records
            scheduler._waits._check_bound(slot, SWAP_WAIT + 0.75)
            scheduler._waits._check_bound(slot, SWAP_WAIT + 2)  # the same minute: counted, not logged again
            assert past == ["m0", "m0"]
            assert [r.getMessage() for r in caplog.records] == [
                f"model m0: a request waited {SWAP_WAIT + 0.75:.2f} s for it, past its max_swap_wait of "
                f"{SWAP_WAIT:g} s plus its load of 0.50 s (gateway_model_wait_past_bound_total counts them)"
            ]
            run.time.advance(BOUND_LOG_EVERY)
            scheduler._waits._check_bound(slot, SWAP_WAIT + 3)
            assert len(past) == 3 and len(caplog.records) == 2
            past.clear()
            caplog.clear()
            scheduler.policy = Policy(mode="fifo")
            scheduler._waits._check_bound(slot, SWAP_WAIT * 10)
            assert not past and not caplog.records
    finally:
        run.loop.run_until_complete(run.scheduler.shutdown(grace=0))
        run.loop.close()


def test_a_client_switching_models_does_not_wait_for_its_own_linger() -> None:
    """The linger keeps a model a moment after its last request, for its client's next one. When that
    client is the one now asking for another model (one client switching models: an agent, a person), the
    switch happens at once; a request from another client still waits out the linger (a closed-loop client
    of the resident may be about to send)."""
    for asker, waited in (("same", 0.0), ("other", POLICY.linger - 0.1)):
        run = _Run()
        try:

            async def switch(run: _Run, asker: str) -> float:
                lease = await run.scheduler.acquire(run.slots[0], timeout=100, client=("127.0.0.1", 1))
                lease.release()
                await run.time.sleep(0.1)
                began = run.time.now
                client = ("127.0.0.1", 1) if asker == "same" else ("127.0.0.1", 2)
                (await run.scheduler.acquire(run.slots[1], timeout=100, client=client)).release()
                return run.time.now - began

            task = run.loop.create_task(switch(run, asker))
            run.finish([task])
            assert abs(task.result() - waited) < 1e-6, (asker, task.result())
            assert run.slots[1].loads == 1 and run.slots[0].loads == 1
        finally:
            run.loop.run_until_complete(run.scheduler.shutdown(grace=0))
            run.loop.close()
