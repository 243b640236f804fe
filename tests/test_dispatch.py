"""Dispatch (``gateway.routing.dispatch``): pick a replica, forward, retry another one before the first byte,
eject on failure, and keep a replica that holds a request past its first-byte deadline out of rotation. Unit
tests against a scripted fake backend: no sockets, no sleeps (the request path over real sockets is in
test_upstream_faults.py and test_timeouts.py)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from starlette.datastructures import Headers

from backends.base import Backend, OpenAIRequest, ReplicaInfo, Timeouts, UpstreamResponse
from backends.errors import GatewayError, GatewayTimeout, InvalidRequest, UpstreamUnavailable
from gateway.http.errors import ModelUnavailable
from gateway.routing.balancing import preferred_replica
from gateway.routing.dispatch import affinity_key, dispatch
from gateway.routing.pool import Pool, Replica

REQUEST = OpenAIRequest("chat/completions", {"model": "m", "messages": []}, stream=True)


class FakeBackend:
    """A replica whose ``forward`` answers from a script: a response, or an error raised before the first
    byte. It records every request it was sent."""

    def __init__(self, *script: GatewayError | str, capacity: int = 4) -> None:
        self.script = list(script)
        self.capacity = capacity
        self.sent: list[OpenAIRequest] = []
        self.responses: list[UpstreamResponse] = []
        self.gate: asyncio.Event | None = None  # when set, forward waits on it (a slow first byte)
        self.forwarded = asyncio.Event()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def health(self) -> bool:
        return True

    def describe(self) -> ReplicaInfo:
        return ReplicaInfo()

    async def forward(self, request: OpenAIRequest) -> UpstreamResponse:
        self.sent.append(request)
        self.forwarded.set()
        if self.gate is not None:
            await self.gate.wait()
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, GatewayError):
            raise step
        finished: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        async def body() -> Any:
            yield step.encode()

        response = UpstreamResponse(200, {}, body(), lambda: None, finished)
        self.responses.append(response)
        return response


def pool_of(*backends: FakeBackend, max_queue: int = 8) -> Pool:
    return Pool("m", list[Backend](backends), max_queue, random.Random(0))


class Hooks:
    def __init__(self) -> None:
        self.scheduled = 0
        self.errors: list[tuple[str, str]] = []

    def on_scheduled(self) -> None:
        self.scheduled += 1

    def on_error(self, model: str, kind: str) -> None:
        self.errors.append((model, kind))


async def send(
    pool: Pool, hooks: Hooks | None = None, key: str | None = None
) -> tuple[Replica, UpstreamResponse]:
    hooks = hooks or Hooks()
    return await dispatch(
        pool, REQUEST, key, 30.0, scheduled=hooks.on_scheduled, upstream_error=hooks.on_error
    )


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


def test_the_replica_that_answers_holds_its_slot_until_the_response_is_finished() -> None:
    async def main() -> None:
        backend = FakeBackend()
        pool = pool_of(backend)
        hooks = Hooks()
        replica, response = await send(pool, hooks)
        assert [r.body for r in backend.sent] == [REQUEST.body] and [c async for c in response.body] == [
            b"ok"
        ]
        assert replica.outstanding == 1 and replica.served == 1 and hooks.scheduled == 1
        response.finished.set_result(True)
        await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
        assert replica.outstanding == 0 and replica.failures == 0 and hooks.errors == []

    run(main)


def test_a_replica_failing_before_the_first_byte_is_ejected_and_another_one_answers() -> None:
    async def main() -> None:
        bad, good = FakeBackend(UpstreamUnavailable("refused")), FakeBackend()
        pool = pool_of(bad, good)
        hooks = Hooks()
        key = next(k for i in range(100) if preferred_replica(k := f"s{i}", 2) == 0)  # bad is tried first
        replica, _ = await send(pool, hooks, key)
        assert replica.backend is good and len(bad.sent) == 1 and len(good.sent) == 1
        failed = pool.replicas[0]
        assert failed.outstanding == 0 and failed.failures == 1
        assert failed.ejected_until > 0 and not failed.healthy(failed.ejected_until - 0.01)
        assert hooks.errors == [("m", "upstream_unavailable")] and hooks.scheduled == 2

    run(main)


def test_a_timeout_before_the_first_byte_is_retried_like_any_unavailable_replica() -> None:
    async def main() -> None:
        slow, good = FakeBackend(GatewayTimeout("no head in 0.3s")), FakeBackend()
        pool = pool_of(slow, good)
        hooks = Hooks()
        key = next(k for i in range(100) if preferred_replica(k := f"s{i}", 2) == 0)
        replica, _ = await send(pool, hooks, key)
        assert replica.backend is good and pool.replicas[0].failures == 1
        assert hooks.errors == [("m", "upstream_timeout")]

    run(main)


def test_when_every_replica_fails_the_last_error_is_raised_after_one_try_each() -> None:
    async def main() -> None:
        first, last = UpstreamUnavailable("first"), GatewayTimeout("last")
        a, b = FakeBackend(first, first), FakeBackend(last, last)
        pool = pool_of(a, b)
        hooks = Hooks()
        key = next(k for i in range(100) if preferred_replica(k := f"s{i}", 2) == 0)
        with pytest.raises(GatewayTimeout) as raised:
            await send(pool, hooks, key)
        assert raised.value is last
        assert len(a.sent) == 1 and len(b.sent) == 1  # each replica once, none twice
        assert [r.failures for r in pool.replicas] == [1, 1] and pool.outstanding == 0
        assert [kind for _, kind in hooks.errors] == ["upstream_unavailable", "upstream_timeout"]
        with pytest.raises(ModelUnavailable):  # both ejected: the next request is refused at once
            await send(pool)
        assert len(a.sent) == 1 and len(b.sent) == 1

    run(main)


def test_an_error_that_is_not_the_replicas_unavailability_is_not_retried_and_does_not_eject() -> None:
    async def main() -> None:
        a, b = FakeBackend(InvalidRequest("bad field")), FakeBackend(InvalidRequest("bad field"))
        pool = pool_of(a, b)
        hooks = Hooks()
        with pytest.raises(InvalidRequest):
            await send(pool, hooks)
        assert len(a.sent) + len(b.sent) == 1
        assert pool.outstanding == 0 and all(r.failures == 0 for r in pool.replicas)
        assert hooks.errors == []

    run(main)


@pytest.mark.parametrize(
    ("ending", "ejected"), [("ok", False), ("failed", True), ("cancelled", False), ("raised", True)]
)
def test_a_response_failing_mid_way_ejects_its_replica_and_one_the_client_left_does_not(
    ending: str, ejected: bool
) -> None:
    async def main() -> None:
        pool = pool_of(FakeBackend())
        replica, response = await send(pool)
        if ending == "ok":
            response.finished.set_result(True)
        elif ending == "failed":
            response.finished.set_result(False)
        elif ending == "cancelled":
            response.finished.cancel()
        else:
            response.finished.set_exception(RuntimeError("engine crashed"))
            response.finished.exception()  # retrieved: no "never retrieved" warning
        await asyncio.sleep(0)
        assert replica.outstanding == 0
        assert (replica.failures == 1) is ejected

    run(main)


def test_a_request_cancelled_while_the_replica_works_on_it_frees_the_slot_without_ejecting() -> None:
    async def main() -> None:
        backend = FakeBackend()
        backend.gate = asyncio.Event()  # never set: the first byte never comes
        pool = pool_of(backend)
        task = asyncio.create_task(send(pool))
        await backend.forwarded.wait()
        assert pool.replicas[0].outstanding == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.replicas[0].outstanding == 0 and pool.replicas[0].failures == 0

    run(main)


def test_the_affinity_key_sends_a_session_to_its_replica() -> None:
    async def main() -> None:
        backends = [FakeBackend(), FakeBackend(), FakeBackend()]
        pool = pool_of(*backends)
        for i in range(12):
            key = f"session-{i}"
            replica, response = await send(pool, key=key)
            assert replica.index == preferred_replica(key, 3)
            response.finished.set_result(True)
            await asyncio.sleep(0)

    run(main)


def test_affinity_key_by_mode() -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}], "user": "u1"}
    assert affinity_key("none", chat, Headers({"x-session-id": "s"})) is None
    assert affinity_key("session", chat, Headers({"x-session-id": "s"})) == "s"  # the header wins
    assert affinity_key("session", chat, Headers()) == "u1"
    assert affinity_key("session", {"messages": []}, Headers()) is None
    anonymous = {"messages": [{"role": "user", "content": "hi"}]}
    assert affinity_key("prefix", anonymous, Headers()) == '[{"role": "user", "content": "hi"}]'
    assert affinity_key("prefix", {"prompt": "x" * 2000}, Headers()) == ('"' + "x" * 2000)[:512]
    assert affinity_key("prefix", chat, Headers()) == "u1"  # a session still beats the prefix


def test_every_try_carries_the_models_timeouts_and_one_total_deadline() -> None:
    async def main() -> None:
        a, b = FakeBackend(UpstreamUnavailable("refused")), FakeBackend(UpstreamUnavailable("refused"))
        pool = pool_of(a, b)
        timeouts = Timeouts(connect=1.0, first_byte=2.0, idle=3.0, total=50.0)
        before = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamUnavailable):
            await dispatch(pool, REQUEST, None, 30.0, timeouts=timeouts)
        (first,), (second,) = a.sent, b.sent
        assert first.timeouts == second.timeouts == timeouts
        assert first.deadline == second.deadline  # a retry does not start the total over
        assert first.deadline is not None and before + 50.0 <= first.deadline
        assert first.deadline <= asyncio.get_running_loop().time() + 50.0

    run(main)


def test_no_retry_once_the_total_deadline_has_passed() -> None:
    async def main() -> None:
        a, b = FakeBackend(GatewayTimeout("late")), FakeBackend(GatewayTimeout("late"))
        pool = pool_of(a, b)
        with pytest.raises(GatewayTimeout):
            await dispatch(pool, REQUEST, None, 30.0, timeouts=Timeouts(total=0.0))
        assert len(a.sent) + len(b.sent) == 1

    run(main)


def test_the_pool_knows_the_first_byte_deadline_of_a_request_until_it_is_answered() -> None:
    async def main() -> None:
        backend = FakeBackend()
        backend.gate = asyncio.Event()
        pool = pool_of(backend)
        replica = pool.replicas[0]
        sending = asyncio.create_task(dispatch(pool, REQUEST, None, 30.0, timeouts=Timeouts(first_byte=7.0)))
        before = time.monotonic()
        await backend.forwarded.wait()
        (deadline,) = replica.awaiting
        assert before + 6.0 < deadline <= time.monotonic() + 7.0
        assert not replica.stuck(deadline - 0.001) and replica.stuck(deadline)
        backend.gate.set()
        await sending
        assert replica.awaiting == [] and not replica.stuck(deadline + 1)

    run(main)


def test_a_replica_holding_a_request_past_its_first_byte_deadline_is_out_even_for_panic_routing() -> None:
    """Both replicas are out by their probes alone (panic routing sends to them), but replica 0 holds a
    request past its first-byte deadline: it is hung, and gets nothing more; with both hung, 503."""

    async def main() -> None:
        pool = pool_of(FakeBackend(), FakeBackend())
        hung, other = pool.replicas
        now = time.monotonic()
        pool.sent(hung, now - 1.0)
        assert hung.ejected(now) and hung.reason(now) == "a request has waited past its first-byte deadline"
        for r in pool.replicas:
            pool.probed(r, ok=False)
        assert {(await pool.acquire(1.0)).index for _ in range(3)} == {other.index}
        for _ in range(3):
            pool.release(other)
        pool.probed(other, ok=False)  # a passed request put it back in rotation; out by its probe again
        pool.sent(other, now - 1.0)
        with pytest.raises(ModelUnavailable) as refused:
            await pool.acquire(1.0)
        assert refused.value.retry_after is not None and refused.value.retry_after > 0

    run(main)


def test_an_answer_puts_a_stuck_replica_back_and_hands_it_to_the_queue() -> None:
    async def main() -> None:
        pool = pool_of(FakeBackend(capacity=2), FakeBackend(capacity=1))
        stuck, busy = pool.replicas
        late = time.monotonic() - 1.0
        pool.sent(stuck, late)
        assert stuck.ejected(time.monotonic())
        assert await pool.acquire(30.0) is busy
        waiting = asyncio.create_task(pool.acquire(30.0))
        await asyncio.sleep(0)
        assert not waiting.done()  # one replica stuck, the other full: the request queues
        pool.answered(stuck, late)
        assert await waiting is stuck

    run(main)


def test_a_replica_that_timed_out_is_ejected_before_a_queued_request_could_have_it() -> None:
    """The request that timed out was past its first-byte deadline (the replica counted as stuck); when it
    fails, the replica must be ejected, not handed for a moment to the request queued behind it (nor to the
    timed-out request's own retry)."""

    async def main() -> None:
        backend = FakeBackend(GatewayTimeout("no head"), capacity=2)
        backend.gate = asyncio.Event()
        pool = pool_of(backend, FakeBackend(capacity=1))
        hung = Timeouts(first_byte=0.0)  # stuck as soon as it is sent
        key = next(k for i in range(100) if preferred_replica(k := f"s{i}", 2) == 0)
        first = asyncio.create_task(dispatch(pool, REQUEST, key, 30.0, timeouts=hung))
        await backend.forwarded.wait()
        busy = await pool.acquire(30.0)  # the other replica is full: a request now has to queue
        queued = asyncio.create_task(dispatch(pool, REQUEST, None, 30.0, timeouts=hung))
        await asyncio.sleep(0)
        backend.gate.set()
        for _ in range(10):  # turns of the loop: the failure, the retry, anything handed on
            await asyncio.sleep(0)
        assert pool.replicas[0].failures == 1 and pool.replicas[0].outstanding == 0
        assert len(backend.sent) == 1
        assert not queued.done() and not first.done()  # both wait: for the cooldown, or the busy replica
        for task in (first, queued):
            task.cancel()
        await asyncio.gather(first, queued, return_exceptions=True)
        pool.release(busy)

    run(main)


def test_an_interactive_request_preempts_a_batch_one_only_when_the_slot_would_go_to_it() -> None:
    """One slot, held by a batch request whose answer has not come (preemptible). An interactive request
    that must wait cuts it; but not while a batch request that has aged is next in line: the freed slot
    would go to that one, and the cut would only have thrown work away."""

    async def main(aging: float, gave_up: bool = False) -> tuple[int, bool]:
        pool = Pool("m", [FakeBackend(capacity=1)], 8, random.Random(0), aging=aging, preempt=3)
        held = await pool.acquire(1, priority="batch")
        answer = asyncio.ensure_future(asyncio.Event().wait())  # the batch request's answer, still coming
        pool.preemptible(answer)  # type: ignore[arg-type]
        waiting_batch = asyncio.ensure_future(pool.acquire(5, priority="batch"))
        await asyncio.sleep(0)  # queued (aged at once when aging is 0)
        if gave_up:  # its client left: it must not count as the batch request next in line
            waiting_batch.cancel()
            await asyncio.gather(waiting_batch, return_exceptions=True)
            waiting_batch = asyncio.ensure_future(asyncio.Event().wait())
        interactive = asyncio.ensure_future(pool.acquire(5, priority="interactive"))
        await asyncio.sleep(0)
        cut = answer.cancelled() or answer.cancelling() > 0
        answer.cancel()
        pool.release(held, priority="batch")
        first = await asyncio.wait({waiting_batch, interactive}, return_when=asyncio.FIRST_COMPLETED)
        batch_first = waiting_batch in first[0]
        for task in (waiting_batch, interactive):
            task.cancel()
        await asyncio.gather(waiting_batch, interactive, return_exceptions=True)
        return pool.preempted, cut and not batch_first

    assert asyncio.run(main(aging=30.0)) == (1, True)  # the interactive one is next: the batch one is cut
    preempted, _ = asyncio.run(main(aging=0.0))  # the waiting batch request has aged: it is next
    assert preempted == 0
    assert asyncio.run(main(aging=0.0, gave_up=True)) == (1, True)  # it gave up: the interactive one is next
