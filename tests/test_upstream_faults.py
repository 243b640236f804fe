"""Balancing, affinity, retries and fault handling against fake upstreams (fault injection only: the real
path is proven against llama-server in test_llama_server.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import httpx
import openai
import pytest

from tests.conftest import RunningGateway, free_port
from tests.fake_upstream import FakeUpstream, RunningUpstream, _chunk


@pytest.fixture
def upstreams() -> Iterator[Callable[..., list[RunningUpstream]]]:
    with ExitStack() as stack:

        def start(*apps: FakeUpstream) -> list[RunningUpstream]:
            return [stack.enter_context(RunningUpstream(app, free_port())) for app in apps]

        yield start


def remote(name: str, ups: list[RunningUpstream], **extra: object) -> dict[str, object]:
    cap = extra.pop("max_concurrency", 64)
    endpoints = [{"url": u.url, "max_concurrency": cap} for u in ups]
    return {"name": name, "backend": {"kind": "remote", "endpoints": endpoints, **extra}}


def ask(gw: RunningGateway, model: str = "m", **kw: object) -> str | None:
    r = gw.client().chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], **kw)
    return r.choices[0].message.content


def test_a_failing_replica_is_retried_around_and_ejected(
    serve: Callable[..., RunningGateway], upstreams: Callable[..., list[RunningUpstream]]
) -> None:
    bad, good = upstreams(FakeUpstream("error500"), FakeUpstream())
    gw = serve([remote("m", [bad, good], upstream_model="inner")])
    for _ in range(6):
        assert ask(gw) == "ok"
    assert bad.app.requests <= 2 and good.app.requests == 6  # ejected after its failure, not hammered
    assert good.app.models == ["inner"] * 6  # the upstream's own name for the model
    assert gw.model_state("m")["replicas"][0]["ejected_for"] > 0


def test_every_replica_failing_is_a_clear_upstream_error(
    serve: Callable[..., RunningGateway], upstreams: Callable[..., list[RunningUpstream]]
) -> None:
    (bad,) = upstreams(FakeUpstream("error500"))
    gw = serve([remote("m", [bad])])
    with pytest.raises(openai.APIStatusError) as err:
        ask(gw)
    assert err.value.status_code in (502, 503)
    assert err.value.response.json()["error"]["source"] in ("upstream", "gateway")


def test_reset_mid_stream_ends_with_an_error_event_not_a_retry(
    serve: Callable[..., RunningGateway], upstreams: Callable[..., list[RunningUpstream]]
) -> None:
    flaky, good = upstreams(FakeUpstream("reset"), FakeUpstream())
    gw = serve(
        [
            remote(
                "m",
                [flaky],
            )
        ]
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[:2] == [_chunk(0).decode()[6:].strip(), _chunk(1).decode()[6:].strip()]  # bytes untouched
    assert json.loads(events[-1])["error"]["source"] == "upstream"
    assert good.app.requests == 0


def test_requests_spread_over_replicas(
    serve: Callable[..., RunningGateway], upstreams: Callable[..., list[RunningUpstream]]
) -> None:
    ups = upstreams(FakeUpstream(chunks=20, chunk_delay=0.01), FakeUpstream(chunks=20, chunk_delay=0.01))
    gw = serve([remote("m", ups, max_concurrency=3)])

    def worker() -> None:
        client = gw.client()  # one client per thread, as a real load generator would
        for _ in range(5):
            list(
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "x"}], stream=True
                )
            )

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = [u.app.requests for u in ups]
    # Least-outstanding choice: 8 concurrent clients over two replicas that take 3 each never pile onto one.
    assert sum(counts) == 40 and min(counts) >= 12, counts


def test_session_affinity_sticks_and_degrades_when_busy(
    serve: Callable[..., RunningGateway], upstreams: Callable[..., list[RunningUpstream]]
) -> None:
    ups = upstreams(FakeUpstream(chunks=400, chunk_delay=0.01), FakeUpstream(chunks=400, chunk_delay=0.01))
    gw = serve([remote("m", ups, max_concurrency=1)])
    client = gw.client(default_headers={"X-Session-Id": "conversation-42"})
    for _ in range(6):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    counts = [u.app.requests for u in ups]
    assert sorted(counts) == [0, 6], counts  # the same replica every time
    home = counts.index(6)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with httpx.stream(
        "POST",
        f"{gw.base_url}/v1/chat/completions",
        json=body,
        timeout=30,
        headers={"X-Session-Id": "conversation-42"},
    ) as r:
        lines = r.iter_lines()
        next(lines)  # the home replica is now busy (max_concurrency 1)
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert ups[1 - home].app.requests == 1  # served by the other one instead of waiting
