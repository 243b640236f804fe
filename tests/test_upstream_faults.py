"""Balancing, affinity, retries and fault handling against fake upstreams (fault injection only: the real
path is proven against llama-server in test_llama_server.py)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import openai
import pytest

from gateway.routing.balancing import preferred_replica
from tests.conftest import RunningGateway, free_port, wait_for
from tests.fake_upstream import FakeUpstream, RunningUpstream, _chunk

# A failed replica stays out for 30 s, not 1 s: the counts below must not depend on how fast this machine is.
pytestmark = pytest.mark.usefixtures("long_cooldown")


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


def session_for(index: int, replicas: int = 2) -> str:
    """A session id whose affinity sends it to replica ``index`` whenever that replica is in rotation."""
    return next(s for i in range(1000) if preferred_replica(s := f"session-{i}", replicas) == index)


def replica_state(gw: RunningGateway, index: int, model: str = "m") -> dict[str, Any]:
    return dict(gw.model_state(model)["replicas"][index])


def test_a_failing_replica_is_retried_around_and_ejected(
    serve: Callable[..., RunningGateway], upstreams: Callable[..., list[RunningUpstream]]
) -> None:
    bad, good = upstreams(FakeUpstream("error500"), FakeUpstream())
    # No probes: a passed probe would end the ejection early, and this test is about the requests.
    gw = serve([{**remote("m", [bad, good], upstream_model="inner"), "health_check_interval": 0}])
    # Between two idle replicas the balancer picks at random: ask until it has tried the bad one (each try
    # fails and is retried on the good one, so every request is answered). 1 in 2**64 never would.
    answered = 0
    while bad.app.requests == 0 and answered < 64:
        assert ask(gw) == "ok"
        answered += 1
    assert bad.app.requests == 1
    for _ in range(6):
        assert ask(gw) == "ok"
    # Ejected after its failure, not hammered: out for its cooldown (``long_cooldown``), tried no more.
    assert bad.app.requests == 1 and good.app.requests == answered + 6
    assert list(good.app.models) == ["inner"] * (answered + 6)  # the upstream's own name for the model
    # Its failure streak is unbroken: each try failed, none was taken for a success.
    assert gw.model_state("m")["replicas"][0]["failures"] == bad.app.requests


def test_every_replica_failing_is_a_clear_upstream_error(
    serve: Callable[..., RunningGateway], upstreams: Callable[..., list[RunningUpstream]]
) -> None:
    bad = upstreams(FakeUpstream("error500"), FakeUpstream("error500"))
    gw = serve([{**remote("m", bad), "health_check_interval": 0}])
    with pytest.raises(openai.APIStatusError) as err:
        ask(gw)
    # Each replica tried once; the client gets the last one's failure, tagged as the upstream's.
    assert err.value.status_code == 502
    error = err.value.response.json()["error"]
    assert (error["source"], error["code"]) == ("upstream", "upstream_unavailable")
    # which model and replica, not where it runs; the upstream's own message after it
    assert re.fullmatch(r"model 'm' replica [01]: injected failure", error["message"]), error["message"]
    assert [u.app.requests for u in bad] == [1, 1]
    # Both are ejected now: the next request is refused by the gateway itself, without trying them again.
    with pytest.raises(openai.APIStatusError) as refused:
        ask(gw)
    assert refused.value.status_code == 503 and refused.value.response.headers["retry-after"] == "30"
    error = refused.value.response.json()["error"]
    assert (error["source"], error["code"]) == ("gateway", "model_unavailable")
    assert [u.app.requests for u in bad] == [1, 1]


def test_reset_mid_stream_ends_with_an_error_event_not_a_retry(
    serve: Callable[..., RunningGateway], upstreams: Callable[..., list[RunningUpstream]]
) -> None:
    flaky, good = upstreams(FakeUpstream("reset"), FakeUpstream())
    # Two replicas, the session's home the flaky one: a retry after the first byte would reach the good one.
    gw = serve([{**remote("m", [flaky, good]), "health_check_interval": 0}])
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    headers = {"X-Session-Id": session_for(0)}
    with httpx.stream(
        "POST", f"{gw.base_url}/v1/chat/completions", json=body, timeout=30, headers=headers
    ) as r:
        assert r.status_code == 200
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[:2] == [_chunk(0).decode()[6:].strip(), _chunk(1).decode()[6:].strip()]  # bytes untouched
    assert len(events) == 3 and json.loads(events[-1])["error"]["source"] == "upstream"
    assert flaky.app.requests == 1 and good.app.requests == 0  # the client had bytes: no second try


def test_a_replica_failing_its_health_check_leaves_the_rotation_before_a_request_fails_on_it(
    serve: Callable[..., RunningGateway], upstreams: Callable[..., list[RunningUpstream]]
) -> None:
    sick, well = upstreams(FakeUpstream(), FakeUpstream())
    gw = serve([{**remote("m", [sick, well]), "health_check_interval": 0.05}])
    client = gw.client(default_headers={"X-Session-Id": session_for(0)})

    def ask_home() -> str | None:
        r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        return r.choices[0].message.content

    assert ask_home() == "ok" and sick.app.requests == 1  # its home replica, while that one is well
    sick.app.health_status = 503
    sick.app.mode = "error500"  # a request sent to it now would fail (and be retried on the other one)
    wait_for(lambda: not replica_state(gw, 0)["healthy"], "the health check to take replica 0 out")
    out = replica_state(gw, 0)
    assert out["reason"] == "health check failed"
    assert out["failures"] == 0  # taken out by the probe, not by a failed request
    for _ in range(5):
        assert ask_home() == "ok"
    assert sick.app.requests == 1 and well.app.requests == 5  # nothing was sent to it while it was down
    assert replica_state(gw, 0)["failures"] == 0

    sick.app.health_status = 200
    sick.app.mode = "ok"
    wait_for(lambda: replica_state(gw, 0)["healthy"], "a passing probe to bring replica 0 back")
    assert replica_state(gw, 0)["reason"] is None
    assert ask_home() == "ok" and sick.app.requests == 2  # back in rotation: its sessions return to it
    # Probed on the timer, beside the requests: more probes come without any request (waited for, not
    # counted at an instant: on a loaded machine the timer may have fired only twice so far).
    probes = sick.app.probes
    wait_for(lambda: sick.app.probes >= probes + 2, "the timer to probe replica 0 again")
    assert sick.app.requests == 2


def test_a_failing_health_endpoint_alone_does_not_take_the_model_down(
    serve: Callable[..., RunningGateway], upstreams: Callable[..., list[RunningUpstream]]
) -> None:
    """The only replica fails its probes (a busy llama-server misses them: its HTTP threads are all
    streaming) but serves: requests still reach it, and a served request puts it back in rotation."""
    (busy,) = upstreams(FakeUpstream())
    gw = serve([{**remote("m", [busy]), "health_check_interval": 0.05}])
    assert ask(gw) == "ok"
    busy.app.health_status = 503
    wait_for(lambda: not replica_state(gw, 0)["healthy"], "the health check to take the replica out")
    assert replica_state(gw, 0)["reason"] == "health check failed"
    probes = busy.app.probes
    wait_for(lambda: busy.app.probes > probes + 2, "more failed probes")
    for _ in range(3):
        assert ask(gw) == "ok"  # not 503: a probe alone never makes the model unservable
    assert busy.app.requests == 4

    busy.app.mode = "error500"  # now the requests themselves fail: that ejects it, and the model is refused
    with pytest.raises(openai.APIStatusError) as failed:
        ask(gw)
    assert failed.value.status_code == 502
    with pytest.raises(openai.APIStatusError) as refused:
        ask(gw)
    assert refused.value.status_code == 503 and refused.value.response.headers["retry-after"] == "30"


def test_a_stream_broken_mid_response_ejects_its_replica(
    serve: Callable[..., RunningGateway], upstreams: Callable[..., list[RunningUpstream]]
) -> None:
    flaky, good = upstreams(FakeUpstream("reset"), FakeUpstream())
    # No active checks: a passing probe would end the ejection early; this is about the passive side.
    gw = serve([{**remote("m", [flaky, good]), "health_check_interval": 0}])
    home = session_for(0)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with httpx.stream(
        "POST", f"{gw.base_url}/v1/chat/completions", json=body, timeout=30, headers={"X-Session-Id": home}
    ) as r:
        assert r.status_code == 200
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[-1])["error"]["source"] == "upstream"
    assert flaky.app.requests == 1
    wait_for(lambda: replica_state(gw, 0)["failures"] == 1, "the broken stream to count against replica 0")
    # Within the cooldown, the session's next request goes to the other replica (non-streamed: the flaky
    # upstream would even answer it; it is the ejection that keeps it away).
    reply = gw.client(default_headers={"X-Session-Id": home}).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}]
    )
    assert reply.choices[0].message.content == "ok"
    assert flaky.app.requests == 1 and good.app.requests == 1


def test_a_client_leaving_mid_stream_is_not_the_replicas_failure(
    serve: Callable[..., RunningGateway], upstreams: Callable[..., list[RunningUpstream]]
) -> None:
    (slow,) = upstreams(FakeUpstream(chunks=400, chunk_delay=0.01))
    gw = serve([{**remote("m", [slow]), "health_check_interval": 0}])
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        next(lines)
        next(lines)
    wait_for(lambda: replica_state(gw, 0)["outstanding"] == 0, "the gateway to let go of the stream")
    state = replica_state(gw, 0)
    assert state["failures"] == 0 and state["healthy"] and state["ejected_for"] == 0, state
    assert ask(gw) == "ok"  # still in rotation: the only replica serves at once


def test_requests_spread_over_replicas(
    serve: Callable[..., RunningGateway], upstreams: Callable[..., list[RunningUpstream]]
) -> None:
    ups = upstreams(FakeUpstream(chunks=20, chunk_delay=0.01), FakeUpstream(chunks=20, chunk_delay=0.01))
    gw = serve([remote("m", ups, max_concurrency=3)])

    def worker() -> None:
        with gw.client() as client:  # one client per thread, as a real load generator would
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
    assert [r["served"] for r in gw.model_state("m")["replicas"]] == counts  # the admin's count is right


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


class _ClosesSecondRequest:
    """A raw HTTP/1.1 server that answers the first request on a connection (keep-alive) and closes the
    connection on the second without a byte: what a stale pooled connection to llama-server looks like."""

    BODY = b'{"id":"x","object":"chat.completion","created":0,"model":"m","choices":[]}'

    def __init__(self) -> None:
        self.port = free_port()
        self.dropped = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            for served in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.lower().split(b"\r\n")
                length = int(next((x.split(b":")[1] for x in lines if x.startswith(b"content-length")), b"0"))
                await reader.readexactly(length)
                if served:
                    self.dropped += 1
                    return
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (len(self.BODY), self.BODY)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection first
        finally:
            writer.close()
            self.writers.discard(writer)

    def __enter__(self) -> _ClosesSecondRequest:
        self.thread.start()
        start = asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def shutdown() -> None:
            assert self.server is not None
            self.server.close()
            for w in list(self.writers):
                w.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_a_stale_kept_alive_connection_is_retried_on_a_fresh_one(
    serve: Callable[..., RunningGateway],
) -> None:
    with _ClosesSecondRequest() as upstream:
        gw = serve(
            [
                {
                    "name": "m",
                    "backend": {
                        "kind": "remote",
                        "endpoints": [{"url": f"http://127.0.0.1:{upstream.port}"}],
                    },
                }
            ]
        )
        for _ in range(4):
            r = httpx.post(
                f"{gw.base_url}/v1/chat/completions",
                timeout=30,
                json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
            )
            assert r.status_code == 200, r.text
        assert upstream.dropped >= 1  # the stale connection really was hit, and the client never saw it
