"""The order of a model's queue: interactive before batch (batch ages, never starves), API keys in turns,
FIFO within a key. The data structure on its own (with a property test), then over real sockets with the
real SmolLM2: a batch flood and a flooding key do not push an interactive request or another key's to the
back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from hypothesis import given
from hypothesis import strategies as st

from gateway.routing.fair_queue import FairQueue, Priority
from tests.conftest import SMOLLM2, RunningGateway, llama_manifest, wait_for


def test_classes_keys_and_arrival() -> None:
    q: FairQueue[str] = FairQueue(aging=30.0)
    for i in range(3):
        q.push(f"flood{i}", "bulk", "interactive", now=0.0)
    q.push("alice0", "alice", "interactive", now=1.0)
    q.push("alice1", "alice", "interactive", now=1.0)
    q.push("batch0", "bob", "batch", now=0.0)
    order = [q.pop(now=2.0) for _ in range(6)]
    # keys take turns (the flooder's line is one of two), batch last; FIFO within a key
    assert order == ["flood0", "alice0", "flood1", "alice1", "flood2", "batch0"]
    assert q.pop(now=2.0) is None and len(q) == 0


def test_batch_ages_ahead_of_interactive() -> None:
    q: FairQueue[str] = FairQueue(aging=30.0)
    q.push("old batch", "b", "batch", now=0.0)
    q.push("new interactive", "a", "interactive", now=29.0)
    assert q.pop(now=30.0) == "old batch"


def test_dead_items_are_skipped_and_forgotten() -> None:
    gone = {"x"}
    q: FairQueue[str] = FairQueue(aging=30.0, dead=lambda item: item in gone)
    q.push("x", "k", "interactive", now=0.0)
    q.push("y", "k", "interactive", now=0.0)
    q.compact()
    assert len(q) == 1 and q.items() == ["y"] and q.pop(now=0.0) == "y"


@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.sampled_from(["interactive", "batch"]), st.floats(0, 100)),
        max_size=40,
    )
)
def test_every_item_comes_out_once_in_each_keys_order(pushes: list[tuple[str, Priority, float]]) -> None:
    q: FairQueue[int] = FairQueue(aging=30.0)
    now = 0.0
    for i, (key, priority, gap) in enumerate(pushes):
        now += gap
        q.push(i, key, priority, now)
    out = []
    while (item := q.pop(now)) is not None:
        out.append(item)
    assert sorted(out) == list(range(len(pushes)))
    for key in "abc":
        for priority in ("interactive", "batch"):
            mine = [i for i in out if pushes[i][0] == key and pushes[i][1] == priority]
            assert mine == sorted(mine)  # FIFO within a key and class
    # a batch item goes ahead of a waiting interactive one only when some batch item has aged
    for position, item in enumerate(out):
        rest = out[position:]
        if pushes[item][1] == "batch" and any(pushes[i][1] == "interactive" for i in rest):
            oldest = min(_arrival(pushes, i) for i in rest if pushes[i][1] == "batch")
            assert now - oldest >= 30.0


def _arrival(pushes: list[tuple[str, Priority, float]], item: int) -> float:
    return sum(gap for _, _, gap in pushes[: item + 1])


# --- over real sockets ---------------------------------------------------------------------------------

FLOOD = 5
SMOLLM2_ENDS = ("0", "1", "2")  # <|endoftext|>, <|im_start|>, <|im_end|>: SmolLM2's ends of a turn
FLOOD_QUEUED = FLOOD - 1  # one in service


def _served_order(
    gw: RunningGateway, flood: list[dict[str, str]], late: dict[str, str]
) -> tuple[list[str], list[str]]:
    """Send the flood (one request in service, the rest queued), then the late request; the order in which
    they finished (one replica, one slot: the order they were admitted)."""
    finished: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    body: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": "Count."}],
        # Each in service for a second or so (no end of turn sampled): the late request, sent once the flood
        # has queued, must not find two of them already finished on a machine that stalls it.
        "max_tokens": 64,
        "logit_bias": dict.fromkeys(SMOLLM2_ENDS, -100),
    }

    def send(name: str, headers: dict[str, str]) -> None:
        with httpx.Client(base_url=gw.base_url, timeout=300) as http:
            r = http.post("/v1/chat/completions", json=body, headers=headers)
        with lock:
            (finished if r.status_code == 200 else errors).append(name if r.status_code == 200 else r.text)

    threads = [threading.Thread(target=send, args=(f"flood{i}", h)) for i, h in enumerate(flood)]
    for t in threads:
        t.start()
        time.sleep(0.05)  # arrival order within the flood
    wait_for(lambda: _queued(gw) >= FLOOD_QUEUED, "the flood to queue", deadline=120)
    late_thread = threading.Thread(target=send, args=("late", late))
    late_thread.start()
    for t in [*threads, late_thread]:
        t.join(300)
    return finished, errors


def _admin_model(gw: RunningGateway) -> dict[str, Any]:
    admin = httpx.get(
        f"{gw.base_url}/admin/models/m", headers={"authorization": "Bearer sk-admin"}, timeout=30
    )
    return dict(admin.json())


def _queued(gw: RunningGateway) -> int:
    return int(_admin_model(gw)["queued"])


def test_a_flooding_key_and_a_batch_flood_do_not_push_others_back(
    serve: Callable[..., RunningGateway],
) -> None:
    keys = {"bulk": "sk-bulk", "alice": "sk-alice"}
    gw = serve([llama_manifest("m", SMOLLM2, backend={"n_threads": 1})], api_keys=keys, admin_key="sk-admin")
    gw.client(api_key="sk-alice").models.list()
    bulk = {"authorization": "Bearer sk-bulk"}
    alice = {"authorization": "Bearer sk-alice"}
    httpx.post(  # loaded before the flood, so that the flood waits for the replica, not the load
        f"{gw.base_url}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
        headers=alice,
        timeout=120,
    )

    # One key floods; another key's request is admitted at its turn: right after the one in service (or the
    # next, if that one ended as it arrived), not behind the whole flood as first-come order would have it.
    finished, errors = _served_order(gw, [bulk] * FLOOD, alice)
    assert errors == [] and finished.index("late") <= 2, finished

    # The same key: a batch flood, then an interactive request, which goes ahead of every waiting batch one.
    finished, errors = _served_order(gw, [{**alice, "x-priority": "batch"}] * FLOOD, alice)
    assert errors == [] and finished.index("late") <= 2, finished
    assert sorted(finished) == sorted([*(f"flood{i}" for i in range(FLOOD)), "late"])  # all served


BULK, ALICE = {"authorization": "Bearer sk-bulk"}, {"authorization": "Bearer sk-alice"}
SHORT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
# A long prompt and a long answer (the ends of a turn are never sampled): under way for seconds.
LONG = {
    **SHORT,
    "messages": [{"role": "user", "content": "Count the words: " + "one two three four " * 120}],
    "max_tokens": 300,
    "logit_bias": dict.fromkeys(SMOLLM2_ENDS, -100),
}


def _capped_gateway(serve: Callable[..., RunningGateway], **caps: Any) -> RunningGateway:
    """One in-process SmolLM2 (one slot), keys ``bulk`` and ``alice``, and the per-key ``caps`` settings."""
    keys = {"bulk": "sk-bulk", "alice": "sk-alice"}
    manifest = llama_manifest("m", SMOLLM2, backend={"n_threads": 1, "n_ctx": 1024})
    return serve([manifest], api_keys=keys, admin_key="sk-admin", **caps)


def test_a_key_over_its_concurrency_cap_gets_a_429(serve: Callable[..., RunningGateway]) -> None:
    gw = _capped_gateway(serve, key_max_concurrency={"bulk": 1})
    bulk, alice, short, long = BULK, ALICE, SHORT, LONG
    assert httpx.post(f"{gw.base_url}/v1/chat/completions", json=short, headers=alice, timeout=120).is_success
    first: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: first.append(
            httpx.post(f"{gw.base_url}/v1/chat/completions", json=long, headers=bulk, timeout=300)
        )
    )
    thread.start()
    wait_for(lambda: _admin_model(gw)["in_flight"] == 1, "bulk's first request to be under way")
    with httpx.Client(base_url=gw.base_url, timeout=300) as http:
        refused = http.post("/v1/chat/completions", json=short, headers=bulk)
        other = http.post("/v1/chat/completions", json=short, headers=alice)  # not held to bulk's cap
        thread.join(300)
        again = http.post("/v1/chat/completions", json=short, headers=bulk)  # its place came back
    assert refused.status_code == 429 and refused.headers["retry-after"], refused.text
    assert refused.json()["error"]["code"] == "key_concurrency_exceeded"
    assert first[0].status_code == 200 and other.status_code == 200 and again.status_code == 200


def test_a_key_over_its_queue_cap_gets_a_429(serve: Callable[..., RunningGateway]) -> None:
    """``key_max_queued``: a key with that many requests waiting (here for the one busy replica) has its
    next request that would wait refused with a 429; another key's request still waits and is served."""
    gw = _capped_gateway(serve, key_max_queued={"bulk": 1})
    bulk, alice, short, long = BULK, ALICE, SHORT, LONG
    # served at once while the replica is free: never refused for the key's queue
    assert httpx.post(f"{gw.base_url}/v1/chat/completions", json=short, headers=bulk, timeout=120).is_success
    answers: list[httpx.Response] = []

    def send(body: dict[str, Any], headers: dict[str, str]) -> threading.Thread:
        def post() -> None:
            answers.append(
                httpx.post(f"{gw.base_url}/v1/chat/completions", json=body, headers=headers, timeout=300)
            )

        thread = threading.Thread(target=post)
        thread.start()
        return thread

    running = send(long, bulk)  # takes the replica
    wait_for(lambda: _admin_model(gw)["in_flight"] == 1, "bulk's first request to be under way")
    waiting = send(short, bulk)  # waits for the replica: bulk's one queue place
    wait_for(lambda: _queued(gw) == 1, "bulk's second request to wait")
    with httpx.Client(base_url=gw.base_url, timeout=300) as http:
        refused = http.post("/v1/chat/completions", json=short, headers=bulk)
        other = send(short, alice)  # not held to bulk's cap: it waits
        wait_for(lambda: _queued(gw) == 2, "alice's request to wait")
        for t in (running, waiting, other):
            t.join(300)
        again = http.post("/v1/chat/completions", json=short, headers=bulk)  # its place came back
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1, refused.text
    assert refused.json()["error"]["code"] == "key_queue_full"
    assert [a.status_code for a in answers] == [200, 200, 200] and again.status_code == 200
