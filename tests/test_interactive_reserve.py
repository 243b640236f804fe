"""Capacity kept for interactive work (``interactive_reserve``): on a model with several slots, batch requests
hold at most ``batch_limit`` of them, so that an interactive request beside a batch flood is served at once.

The decision on its own (``fair_queue.batch_limit`` and ``FairQueue.take``), then the real ``Pool`` under
arbitrary arrivals and ends of both classes (a Hypothesis property: batch never holds more than its share, no
slot stays free while a request that may take it waits, an interactive request waits only when every slot
is taken, and every request is served once the arrivals stop), then over real sockets: a real in-process
SmolLM2 with two engine instances behind the gateway, the official ``openai`` SDK as the client.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.routing.fair_queue import FairQueue, Priority, batch_limit
from gateway.routing.pool import Pool, Replica
from tests.conftest import SMOLLM2, RunningGateway, llama_manifest, wait_for


def test_batch_limit() -> None:
    assert batch_limit(1, 1) == 1  # one slot: nothing kept back (it would shut batch work out)
    assert batch_limit(2, 1) == 1
    assert batch_limit(2, 0) == 2
    assert batch_limit(8, 1) == 7
    assert batch_limit(8, 3) == 5
    assert batch_limit(3, 5) == 1  # a reserve as large as the model: batch still has one slot
    assert batch_limit(0, 1) == 0  # nothing in rotation


def test_a_batch_request_that_may_not_start_lets_an_interactive_one_go() -> None:
    q: FairQueue[str] = FairQueue(aging=30.0)
    q.push("old batch", "b", "batch", now=0.0)
    q.push("interactive", "a", "interactive", now=29.0)
    # aged, the batch request is next, but batch holds all it may: the free slot goes to the interactive one
    assert q.take(now=31.0, batch=False) == ("interactive", "interactive")
    assert q.take(now=31.0, batch=False) is None and len(q) == 1  # it waits; it is not dropped
    assert q.take(now=31.0) == ("old batch", "batch")


class _Slots:
    """The least a Pool needs from a backend: its capacity."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity


@settings(max_examples=150, deadline=None)
@given(
    capacities=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    reserve=st.integers(0, 4),
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("arrive"), st.sampled_from(["interactive", "batch"])),
            st.tuples(st.just("end"), st.integers(0, 20)),
        ),
        max_size=40,
    ),
)
def test_the_pool_keeps_the_reserve_and_leaves_no_slot_idle(
    capacities: list[int], reserve: int, steps: list[tuple[str, Any]]
) -> None:
    capacity = sum(capacities)
    limit = batch_limit(capacity, reserve)

    async def main() -> None:
        pool = Pool("m", [_Slots(c) for c in capacities], 1000, random.Random(0), reserve=reserve)  # type: ignore[misc]
        waiting: list[tuple[asyncio.Task[Replica], Priority]] = []
        held: list[tuple[Replica, Priority]] = []
        served = 0

        async def settle() -> None:
            nonlocal served
            for _ in range(5):
                await asyncio.sleep(0)
            for task, priority in [w for w in waiting if w[0].done()]:
                waiting.remove((task, priority))
                held.append((task.result(), priority))
                served += 1

        def check() -> None:
            batch_held = sum(1 for _, p in held if p == "batch")
            assert pool.batch == batch_held <= limit
            assert sum(r.outstanding for r in pool.replicas) == len(held)
            free = len(held) < capacity
            # no slot idle while a request that may take it waits; an interactive one waits only when
            # every slot is taken (so a batch flood never makes it wait: it holds at most ``limit``)
            if any(p == "interactive" for _, p in waiting):
                assert not free, (held, waiting)
            if any(p == "batch" for _, p in waiting):
                assert not free or batch_held == limit, (held, waiting)

        for kind, arg in steps:
            if kind == "arrive":
                waiting.append((asyncio.ensure_future(pool.acquire(1e6, None, "k", arg)), arg))
            elif held:
                replica, priority = held.pop(arg % len(held))
                pool.release(replica, priority=priority)
            await settle()
            check()
        arrived = sum(1 for kind, _ in steps if kind == "arrive")
        while held:  # the arrivals stop: everything waiting is served, batch included (none starves)
            replica, priority = held.pop(0)
            pool.release(replica, priority=priority)
            await settle()
            check()
        assert served == arrived and not waiting and pool.batch == 0

    asyncio.run(main())


# --- over real sockets ---------------------------------------------------------------------------------

SMOLLM2_ENDS = ("0", "1", "2")  # <|endoftext|>, <|im_start|>, <|im_end|>: SmolLM2's ends of a turn
FLOOD = 3
# A long answer (the ends of a turn are never sampled): each batch request is under way for seconds.
LONG: dict[str, Any] = {
    "messages": [{"role": "user", "content": "Count the words: " + "one two three four " * 60}],
    "max_tokens": 200,
    "logit_bias": dict.fromkeys(SMOLLM2_ENDS, -100),
}


def _model(gw: RunningGateway) -> dict[str, Any]:
    answer = httpx.get(f"{gw.base_url}/admin/models/m", timeout=30)
    return dict(answer.json())


def _held(model: dict[str, Any]) -> int:
    """Slots held now, summed over the model's replicas."""
    return sum(int(r["outstanding"]) for r in model["replicas"])


def test_an_interactive_request_beside_a_batch_flood_is_served_at_once(
    serve: Callable[..., RunningGateway],
) -> None:
    """Two engine instances (two slots) and the default reserve of one: a batch flood holds one slot and
    queues the rest; an interactive request takes the other slot at once (its first token comes while the
    batch request in service is still under way and every other batch request still waits), and the batch
    requests are all served."""
    manifest = llama_manifest("m", SMOLLM2, backend={"n_threads": 1, "parallel": 2, "n_ctx": 1024})
    gw = serve([manifest])
    client = gw.client()
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    events: list[str] = []  # in the order they happened
    lock = threading.Lock()

    def batch(i: int) -> None:
        answer = client.chat.completions.create(
            model="m", **LONG, extra_headers={"X-Priority": "batch"}, timeout=600
        )
        with lock:
            events.append(f"batch {i} {answer.choices[0].finish_reason}")

    flood = [threading.Thread(target=batch, args=(i,)) for i in range(FLOOD)]
    for t in flood:
        t.start()

    # batch holds all it may (two slots, one kept): one slot taken, the other batch requests queued
    def arrived() -> dict[str, Any] | None:
        m = _model(gw)
        return m if m["in_flight"] == FLOOD and m["queued"] + _held(m) == FLOOD else None

    before = wait_for(arrived, "the flood to reach the replicas", 120)
    assert _held(before) == 1 and before["queued"] == FLOOD - 1, before

    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            with lock:
                events.append("interactive first token")
            break
    for _ in stream:
        pass
    for t in flood:
        t.join(600)
    # admitted at once: both slots held, the batch requests behind it all still queued, and its first token
    # came before any batch answer ended (with one slot it would have waited for the one in service)
    # A snapshot of the slots at that moment raced with a batch request ending (CI, loaded): the order is
    # the proof. Without the reserve both slots would be batch's, and the first token would come after one
    # of them ended.
    assert events[0] == "interactive first token", events
    assert sorted(events[1:]) == [f"batch {i} length" for i in range(FLOOD)], events  # all served


def test_an_interactive_request_preempts_a_batch_request_on_a_model_with_one_slot(
    serve: Callable[..., RunningGateway],
) -> None:
    """One slot: nothing can be kept back, so an interactive request that finds a batch request in service
    preempts it (the batch request has sent its client nothing yet: it is cut, and runs again from the start
    once the interactive one is done). The interactive answer comes first; the batch request is answered
    whole (its full length, as asked), and the model counts one preemption."""
    manifest = llama_manifest("m", SMOLLM2, backend={"n_threads": 1, "parallel": 1, "n_ctx": 1024})
    gw = serve([manifest])
    client = gw.client()
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    events: list[str] = []
    lock = threading.Lock()
    answers: list[Any] = []

    def batch() -> None:
        answer = client.chat.completions.create(
            model="m", **LONG, extra_headers={"X-Priority": "batch"}, timeout=600
        )
        answers.append(answer)
        with lock:
            events.append(f"batch {answer.choices[0].finish_reason}")

    flood = threading.Thread(target=batch)
    flood.start()
    wait_for(lambda: _held(_model(gw)) == 1, "the batch request to be in service", 120)
    answer = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
    )
    with lock:
        events.append("interactive")
    flood.join(600)
    assert events == ["interactive", "batch length"], events
    (long,) = answers
    assert answer.choices[0].message.content and long.usage.completion_tokens == LONG["max_tokens"]
    assert _model(gw)["preempted"] == 1
