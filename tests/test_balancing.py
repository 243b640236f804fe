"""Replica choice (``gateway.routing.balancing.choose``): never a full or unhealthy replica, affinity when
possible, and the less loaded replicas get more of the traffic. And what takes a replica out of rotation and
brings it back (``gateway.routing.pool.Replica``): failed requests (passive) and health probes (active)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.http.errors import ModelUnavailable
from gateway.routing.balancing import ReplicaView, choose
from gateway.routing.pool import COOLDOWN, MAX_COOLDOWN, Pool, Replica


def test_none_when_every_replica_is_full_or_down() -> None:
    rng = random.Random(0)
    assert choose([], rng) is None
    replicas = [
        ReplicaView(0, outstanding=2, capacity=2),
        ReplicaView(1, outstanding=0, capacity=2, healthy=False),
        ReplicaView(2, outstanding=5, capacity=4),  # over capacity counts as full
    ]
    assert choose(replicas, rng) is None
    assert choose(replicas, rng, preferred=1) is None


def test_never_picks_an_unhealthy_or_full_replica() -> None:
    rng = random.Random(1)
    replicas = [
        ReplicaView(0, outstanding=0, capacity=1, healthy=False),
        ReplicaView(1, outstanding=1, capacity=1),
        ReplicaView(2, outstanding=3, capacity=4),
        ReplicaView(3, outstanding=0, capacity=2),
        ReplicaView(4, outstanding=4, capacity=4),
    ]
    picks = {choose(replicas, rng) for _ in range(500)}
    assert picks <= {2, 3}
    # Asking for a full or unhealthy replica does not get it either.
    assert all(choose(replicas, rng, preferred=p) in {2, 3} for p in (0, 1, 4) for _ in range(50))


def test_the_only_replica_with_room_is_chosen() -> None:
    replicas = [ReplicaView(0, 1, 1), ReplicaView(1, 0, 1, healthy=False), ReplicaView(2, 0, 1)]
    assert choose(replicas, random.Random(2)) == 2


def test_preferred_replica_wins_when_it_has_room() -> None:
    rng = random.Random(3)
    replicas = [ReplicaView(0, 0, 4), ReplicaView(1, 3, 4), ReplicaView(2, 0, 4)]
    # Affinity beats load: replica 1 is the busiest but still has a free slot.
    assert all(choose(replicas, rng, preferred=1) == 1 for _ in range(100))


def test_preferred_replica_that_is_full_degrades_to_another() -> None:
    rng = random.Random(4)
    replicas = [ReplicaView(0, 0, 2), ReplicaView(1, 2, 2), ReplicaView(2, 1, 2)]
    picks = Counter(choose(replicas, rng, preferred=1) for _ in range(200))
    assert set(picks) <= {0, 2} and picks[0] > 0


def test_preferred_replica_that_is_down_degrades_to_another() -> None:
    rng = random.Random(5)
    replicas = [ReplicaView(0, 0, 2, healthy=False), ReplicaView(1, 1, 2)]
    assert choose(replicas, rng, preferred=0) == 1


def test_unknown_preferred_replica_is_ignored() -> None:
    replicas = [ReplicaView(0, 1, 2), ReplicaView(1, 0, 2)]
    assert choose(replicas, random.Random(6), preferred=7) == 1


def test_load_is_relative_to_capacity() -> None:
    # Two of eight slots busy is lighter than one of two.
    replicas = [ReplicaView(0, outstanding=1, capacity=2), ReplicaView(1, outstanding=2, capacity=8)]
    rng = random.Random(7)
    assert all(choose(replicas, rng) == 1 for _ in range(50))


def test_least_loaded_replica_gets_more_traffic_than_the_most_loaded() -> None:
    rng = random.Random(8)
    replicas = [
        ReplicaView(0, outstanding=3, capacity=4),
        ReplicaView(1, outstanding=0, capacity=4),
        ReplicaView(2, outstanding=2, capacity=4),
        ReplicaView(3, outstanding=1, capacity=4),
    ]
    draws = 2000
    picks = Counter(choose(replicas, rng) for _ in range(draws))
    assert sum(picks.values()) == draws
    assert picks[1] > picks[0]
    # More than a uniform share: the spread favours the idle replica, it does not merely tolerate it.
    assert picks[1] > draws / len(replicas)
    # Ranked by load, busier replicas never get more traffic than less busy ones.
    assert picks[1] >= picks[3] >= picks[2] >= picks[0]


replica_views = st.lists(
    st.tuples(st.integers(0, 6), st.integers(1, 4), st.booleans()), min_size=0, max_size=6
).map(lambda rows: [ReplicaView(i, out, cap, healthy) for i, (out, cap, healthy) in enumerate(rows)])


@settings(max_examples=300, deadline=None)
@given(replica_views, st.none() | st.integers(0, 7), st.integers(0, 2**32))
def test_choice_property(replicas: list[ReplicaView], preferred: int | None, seed: int) -> None:
    picked = choose(replicas, random.Random(seed), preferred)
    open_ = [r for r in replicas if r.healthy and r.outstanding < r.capacity]
    if not open_:
        assert picked is None
        return
    assert picked in {r.index for r in open_}
    if preferred in {r.index for r in open_}:
        assert picked == preferred


class _NoBackend:
    """Replica's decisions never touch the backend."""

    capacity = 1


def replica() -> Replica:
    return Replica(0, _NoBackend())  # type: ignore[arg-type]


def test_failed_requests_eject_for_a_cooldown_that_doubles_and_a_success_ends_the_streak() -> None:
    r = replica()
    r.request_failed(now=100.0)
    assert not r.healthy(100.0) and r.healthy(100.0 + COOLDOWN)
    assert r.reason(100.0) == "ejected after 1 consecutive failed request(s)"
    r.request_failed(now=200.0)
    assert not r.healthy(200.0 + COOLDOWN) and r.healthy(200.0 + 2 * COOLDOWN)
    for _ in range(20):
        r.request_failed(now=300.0)
    assert r.healthy(300.0 + MAX_COOLDOWN)  # capped
    r.request_succeeded()
    r.request_failed(now=400.0)
    assert r.healthy(400.0 + COOLDOWN)  # the streak started over


def test_a_failed_probe_takes_a_replica_out_until_a_probe_passes() -> None:
    r = replica()
    assert r.probed(ok=True, now=1.0) is False  # already in rotation: no change
    assert r.probed(ok=False, now=2.0) is True
    assert not r.healthy(2.0) and not r.healthy(1e9)  # down is not a cooldown: time alone does not end it
    assert r.reason(1e9) == "health check failed"
    assert r.probed(ok=False, now=3.0) is False  # still down: no change
    assert r.probed(ok=True, now=4.0) is True
    assert r.healthy(4.0) and r.reason(4.0) is None


def test_a_passed_probe_ends_an_ejection_early_but_keeps_the_failure_streak() -> None:
    r = replica()
    r.request_failed(now=10.0)
    r.request_failed(now=10.0)
    assert not r.healthy(10.5)
    assert r.probed(ok=True, now=10.5) is True
    assert r.healthy(10.5)
    r.request_failed(now=20.0)  # the third failure in a row: the cooldown keeps growing
    assert not r.healthy(20.0 + 2 * COOLDOWN) and r.healthy(20.0 + 4 * COOLDOWN)


def test_a_failed_probe_on_an_ejected_replica_keeps_it_out_after_the_cooldown() -> None:
    r = replica()
    r.request_failed(now=0.0)
    assert r.probed(ok=False, now=0.5) is False  # it was already out
    assert not r.healthy(COOLDOWN + 1) and r.reason(COOLDOWN + 1) == "health check failed"


class _Slots:
    """The least a Pool needs from a backend: its capacity."""

    capacity = 1


def test_a_request_queued_behind_an_ejection_gets_the_replica_when_the_cooldown_ends() -> None:
    """Replica 0 fails and is ejected, replica 1 stays busy: the queued request must not wait for replica 1
    to free up; it gets replica 0 back as soon as the cooldown is over."""

    async def main() -> None:
        pool = Pool("m", [_Slots(), _Slots()], max_queue=4, rng=random.Random(0))  # type: ignore[list-item]
        first, second = await pool.acquire(1), await pool.acquire(1)
        waiting = asyncio.create_task(pool.acquire(30))
        await asyncio.sleep(0)
        failed = first if first.index == 0 else second
        pool.release(failed, failed=True)  # ejected for COOLDOWN; the other replica is never released
        got = await asyncio.wait_for(waiting, 30)
        assert got is failed and got.healthy(time.monotonic())

    asyncio.run(main())


def test_a_served_request_outweighs_a_missed_probe() -> None:
    """A server busy with long streams can miss a probe's deadline; a request it then completes shows it
    serves, and puts it back in rotation without waiting for the next probe."""
    r = replica()
    r.probed(ok=False, now=1.0)
    assert not r.healthy(1.0)
    r.request_succeeded()
    assert r.healthy(1.0) and r.reason(1.0) is None


def test_probes_alone_never_make_a_model_unservable() -> None:
    """Panic routing: every replica down by its probe still gets requests (a slow health endpoint must not
    become an outage); one that really fails is ejected, and only then is the model refused."""

    async def main() -> None:
        pool = Pool("m", [_Slots(), _Slots()], max_queue=4, rng=random.Random(0))  # type: ignore[list-item]
        now = time.monotonic()
        pool.replicas[0].probed(ok=False, now=now)
        assert (await pool.acquire(1)).index == 1  # while one replica is in rotation, only it is used
        pool.release(pool.replicas[1])
        pool.replicas[1].probed(ok=False, now=now)
        both = {(await pool.acquire(1)).index, (await pool.acquire(1)).index}
        assert both == {0, 1}  # every replica out by its probe alone: requests still go to them
        for r in pool.replicas:
            pool.release(r, failed=True)  # the requests themselves failed: now they are ejected
        with pytest.raises(ModelUnavailable) as refused:
            await pool.acquire(1)
        assert refused.value.retry_after is not None and 0 < refused.value.retry_after <= COOLDOWN

    asyncio.run(main())


def test_the_last_replica_missing_its_probe_starts_panic_routing_for_the_queue() -> None:
    """Replica 0 missed a probe while idle; replica 1 is busy and a request queues behind it. When replica 1
    misses its probe too, panic routing lets the queued request have replica 0 at once, instead of waiting
    for replica 1's stream to end."""

    async def main() -> None:
        pool = Pool("m", [_Slots(), _Slots()], max_queue=4, rng=random.Random(0))  # type: ignore[list-item]
        idle, busy = pool.replicas
        pool.probed(idle, ok=False)
        assert await pool.acquire(1) is busy
        waiting = asyncio.create_task(pool.acquire(30))
        await asyncio.sleep(0)
        assert not waiting.done()  # replica 0 is out and replica 1 is full: it queues
        pool.probed(busy, ok=False)
        assert await waiting is idle

    asyncio.run(main())
