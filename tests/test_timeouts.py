"""Deadlines on upstreams (a model's ``timeouts``, the gateway's ``upstream_*_timeout`` settings), over real
sockets against hung fake upstreams: no head at all, a head and then nothing, a stream that stops mid-way.

The short deadlines in these manifests (0.3 s) are the feature's settings under test, not limits on how long
a test may take; every wait in the tests themselves is on an event or a poll with a generous deadline.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from backends.base import Timeouts
from backends.upstream.client import Client, TimedOut
from gateway.config.manifest import ModelManifest
from gateway.config.settings import Settings
from gateway.routing.dispatch import upstream_timeouts
from tests.conftest import RunningGateway, free_port, llama_manifest, wait_for
from tests.fake_upstream import FakeUpstream, RunningUpstream, _chunk
from tests.test_upstream_faults import replica_state, session_for

# A failed replica stays out for 30 s, not 1 s: the counts below must not depend on how fast this machine is.
pytestmark = pytest.mark.usefixtures("long_cooldown")

CHAT = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
TOKENS = [_chunk(i).decode()[6:].strip() for i in range(8)]  # what a FakeUpstream streams, event by event


@pytest.fixture
def upstreams() -> Iterator[Callable[..., list[RunningUpstream]]]:
    with ExitStack() as stack:

        def start(*apps: FakeUpstream) -> list[RunningUpstream]:
            return [stack.enter_context(RunningUpstream(app, free_port())) for app in apps]

        yield start


def remote(name: str, ups: list[RunningUpstream], **timeouts: float) -> dict[str, Any]:
    endpoints = [{"url": u.url} for u in ups]
    backend = {"kind": "remote", "endpoints": endpoints, "timeouts": timeouts}
    return {"name": name, "backend": backend, "health_check_interval": 0}


def post(gw: RunningGateway, stream: bool, session: str | None = None, model: str = "m") -> httpx.Response:
    """One request, read to its end (a stream's events stay in its text)."""
    headers = {"X-Session-Id": session} if session else {}
    body = {**CHAT, "model": model, "stream": stream}
    return httpx.post(f"{gw.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def events(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]


def assert_whole(response: httpx.Response, stream: bool) -> None:
    """The fake upstream's answer, complete and untouched."""
    assert response.status_code == 200, response.text
    if stream:
        assert events(response) == [*TOKENS, "[DONE]"]
    else:
        assert response.json()["choices"][0]["message"]["content"] == "ok"


class Bystanders:
    """Clients of a healthy model that stream while a fault happens elsewhere; each answer must be whole."""

    def __init__(self, gw: RunningGateway, model: str, session: str | None = None, clients: int = 4) -> None:
        self.results: list[httpx.Response] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(gw, model, session)) for _ in range(clients)]

    def _run(self, gw: RunningGateway, model: str, session: str | None) -> None:
        while not self.stop.is_set():
            self.results.append(post(gw, stream=True, session=session, model=model))

    def __enter__(self) -> Bystanders:
        for t in self.threads:
            t.start()
        wait_for(lambda: len(self.results) >= 4, "the bystanders' first answers")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()
        for response in self.results:
            assert_whole(response, stream=True)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("mode", ["no_head", "head_only"])
def test_a_replica_hung_before_the_first_byte_is_given_up_and_another_one_answers(
    serve: Callable[..., RunningGateway],
    upstreams: Callable[..., list[RunningUpstream]],
    mode: str,
    stream: bool,
) -> None:
    hung, good = upstreams(FakeUpstream(mode), FakeUpstream())
    gw = serve([remote("m", [hung, good], first_byte=0.3)])
    home = session_for(0)  # the hung replica is tried first
    assert_whole(post(gw, stream, home), stream)
    assert hung.app.requests == 1 and good.app.requests == 1
    wait_for(lambda: hung.app.dropped == 1, "the gateway to drop the hung connection")
    state = replica_state(gw, 0)
    assert state["failures"] == 1 and state["ejected_for"] > 0 and state["outstanding"] == 0
    assert_whole(post(gw, stream, home), stream)  # ejected: the session's next request skips it
    assert hung.app.requests == 1 and good.app.requests == 2


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("mode", ["no_head", "head_only"])
def test_the_only_replica_hung_before_the_first_byte_is_a_504_and_no_one_else_notices(
    serve: Callable[..., RunningGateway],
    upstreams: Callable[..., list[RunningUpstream]],
    mode: str,
    stream: bool,
) -> None:
    hung, healthy = upstreams(FakeUpstream(mode), FakeUpstream())
    gw = serve([remote("m", [hung], first_byte=0.3), remote("other", [healthy])])
    with Bystanders(gw, "other"):
        r = post(gw, stream)
    assert r.status_code == 504, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert (error["code"], error["type"], error["source"]) == ("upstream_timeout", "server_error", "upstream")
    assert "0.3s (timeouts.first_byte)" in error["message"]
    wait_for(lambda: hung.app.dropped == 1, "the gateway to drop the hung connection")
    assert replica_state(gw, 0)["outstanding"] == 0
    refused = post(gw, stream)  # its only replica is ejected: refused at once, not sent to hang again
    assert refused.status_code == 503 and refused.headers["retry-after"] == "30"
    assert hung.app.requests == 1
    metrics = httpx.get(f"{gw.base_url}/metrics", timeout=30).text
    assert 'gateway_upstream_errors_total{model_name="m",kind="upstream_timeout"} 1.0' in metrics


def test_a_stream_that_stops_mid_way_ends_with_an_error_event_and_its_replica_is_ejected(
    serve: Callable[..., RunningGateway], upstreams: Callable[..., list[RunningUpstream]]
) -> None:
    stalls, good = upstreams(FakeUpstream("stall"), FakeUpstream())
    gw = serve([remote("m", [stalls, good], idle=0.3)])
    with Bystanders(gw, "m", session=session_for(1)):
        r = post(gw, stream=True, session=session_for(0))
    assert r.status_code == 200  # the head had gone out with the first chunks
    got = events(r)
    assert got[:2] == TOKENS[:2] and len(got) == 3  # the bytes it sent, untouched, then the error
    error = json.loads(got[2])["error"]
    assert (error["code"], error["source"]) == ("upstream_timeout", "upstream")
    assert "0.3s mid-response (timeouts.idle)" in error["message"]
    wait_for(lambda: replica_state(gw, 0)["failures"] == 1, "the silent replica to be ejected")
    wait_for(lambda: stalls.app.dropped == 1, "the gateway to drop the stalled connection")
    assert stalls.app.requests == 1
    assert_whole(post(gw, stream=True, session=session_for(0)), stream=True)  # now served by the other
    assert stalls.app.requests == 1


def test_the_total_deadline_ends_a_stream_that_is_still_going_without_ejecting_its_replica(
    serve: Callable[..., RunningGateway], upstreams: Callable[..., list[RunningUpstream]]
) -> None:
    (slow,) = upstreams(FakeUpstream(chunks=1000, chunk_delay=0.01))
    gw = serve([remote("m", [slow], total=0.3)])
    r = post(gw, stream=True)
    got = events(r)
    assert r.status_code == 200 and got[0] == TOKENS[0] and len(got) < 1000
    error = json.loads(got[-1])["error"]
    assert error["code"] == "upstream_timeout" and "timeouts.total" in error["message"]
    wait_for(lambda: replica_state(gw, 0)["outstanding"] == 0, "the gateway to let go of the stream")
    state = replica_state(gw, 0)
    assert state["failures"] == 0 and state["healthy"]  # it was sending: the deadline was the request's


def test_panic_routing_sends_nothing_more_to_a_replica_that_hung(
    serve: Callable[..., RunningGateway], upstreams: Callable[..., list[RunningUpstream]]
) -> None:
    """Both replicas fail their probes (panic routing sends to them anyway); the hung one is given up at
    its first-byte deadline and then gets no more requests, while the other keeps serving."""
    hung, busy = upstreams(FakeUpstream("no_head"), FakeUpstream())
    for u in (hung, busy):
        u.app.health_status = 503
    manifest = {**remote("m", [hung, busy], first_byte=0.3), "health_check_interval": 0.05}
    gw = serve([manifest])
    wait_for(
        lambda: all(r["reason"] == "health check failed" for r in gw.model_state("m")["replicas"]),
        "the probes to take both replicas out",
    )
    home = session_for(0)
    for _ in range(3):
        assert_whole(post(gw, stream=True, session=home), stream=True)
    assert hung.app.requests == 1 and busy.app.requests == 3


class Unaccepting:
    """A port whose accept queue is full: the kernel drops new connections' SYNs, so a connect hangs."""

    def __enter__(self) -> Unaccepting:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(0)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.filling: list[socket.socket] = []
        for _ in range(3):  # more than the queue holds
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(self.server.getsockname())
            self.filling.append(c)
        return self

    def __exit__(self, *exc: object) -> None:
        for c in self.filling:
            c.close()
        self.server.close()


def test_an_upstream_that_never_accepts_the_connection_is_a_connect_timeout(
    serve: Callable[..., RunningGateway], upstreams: Callable[..., list[RunningUpstream]]
) -> None:
    (good,) = upstreams(FakeUpstream())
    with Unaccepting() as unaccepting:
        endpoints = [{"url": unaccepting.url}, {"url": good.url}]
        timeouts = {"connect": 0.3}
        m = {"name": "m", "backend": {"kind": "remote", "endpoints": endpoints, "timeouts": timeouts}}
        lone = {
            "name": "lone",
            "backend": {"kind": "remote", "endpoints": endpoints[:1], "timeouts": timeouts},
        }
        gw = serve([{**m, "health_check_interval": 0}, {**lone, "health_check_interval": 0}])
        assert_whole(post(gw, stream=True, session=session_for(0)), stream=True)
        assert good.app.requests == 1 and replica_state(gw, 0)["failures"] == 1
        r = post(gw, stream=False, model="lone")
        assert r.status_code == 504, r.text
        error = r.json()["error"]
        assert error["code"] == "upstream_timeout" and "within 0.3s (timeouts.connect)" in error["message"]


def test_timeouts_come_from_the_manifest_else_the_settings() -> None:
    settings = Settings(upstream_connect_timeout=2, upstream_first_byte_timeout="15m")
    own = ModelManifest.model_validate(
        {"name": "m", "backend": {"kind": "remote", "endpoints": [{"url": "http://h:1"}], "timeouts": {}}}
    )
    assert upstream_timeouts(own.backend, settings) == Timeouts(2.0, 900.0, 120.0, 3600.0)
    own = ModelManifest.model_validate(
        {
            "name": "m",
            "backend": {
                "kind": "remote",
                "endpoints": [{"url": "http://h:1"}],
                "timeouts": {"first_byte": "0.3s", "idle": "1m", "total": 7200},
            },
        }
    )
    assert upstream_timeouts(own.backend, settings) == Timeouts(2.0, 0.3, 60.0, 7200.0)
    assert upstream_timeouts(object(), Settings()) == Timeouts()  # the defaults: 10 s, 10 min, 2 min, 1 h
    for wrong in ({"first_byte": 0}, {"idle": "soon"}, {"read": 5}):
        with pytest.raises(ValidationError):
            ModelManifest.model_validate(
                {
                    "name": "m",
                    "backend": {"kind": "remote", "endpoints": [{"url": "http://h:1"}], "timeouts": wrong},
                }
            )


def test_the_client_gives_up_on_a_missing_head_and_on_a_silent_body_but_not_on_a_slow_one() -> None:
    """``backends.upstream.client`` on its own: a deadline on the head, and deadlines on the body's waits that
    move on with each chunk (one timer per response, moved lazily: it must not fire at a deadline since passed
    on to a later one)."""

    async def main() -> None:
        send_later = asyncio.Event()
        dropped: list[str] = []  # the connections the client dropped, in order
        both_dropped = asyncio.Event()

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            if not dropped:  # the first request gets no head at all
                await reader.read()
                dropped.append("no head")
                return
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await send_later.wait()
            await asyncio.sleep(0.3)  # the upstream is slow, not silent: later than the first deadline
            writer.write(b"6\r\nsecond\r\n")
            await reader.read()  # then silent, until the client drops it
            dropped.append("silent body")
            both_dropped.set()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await answer(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", port := free_port())
        client = Client(f"http://127.0.0.1:{port}")
        loop = asyncio.get_running_loop()
        with pytest.raises(TimedOut):
            await client.request("POST", "/", deadline=loop.time() + 0.2)
        resp = await client.request("POST", "/", deadline=loop.time() + 5)
        assert await resp.next_chunk(loop.time() + 0.05) == b"first"  # arms the timer at this deadline
        send_later.set()
        assert await resp.next_chunk(loop.time() + 5) == b"second"  # the early timer must not end it
        with pytest.raises(TimedOut):
            await resp.next_chunk(loop.time() + 0.2)
        resp.close()
        await both_dropped.wait()
        assert dropped == ["no head", "silent body"]  # each late connection was dropped, not pooled
        await client.aclose()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_the_total_deadline_ends_an_in_process_stream(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    """The in-process engine never checks a deadline itself: the gateway's timer ends the stream at the
    request's total deadline with an error event, and frees the slot (the stream would run for a minute)."""
    gw = serve([llama_manifest("a", model_files["a"], backend={"n_ctx": 65536})], upstream_total_timeout=1)
    body = {"model": "a", "messages": [{"role": "user", "content": "x"}], "stream": True,
            "max_tokens": 100_000, "logit_bias": {"2": -100}}  # fmt: skip
    with httpx.stream("POST", f"{gw.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["code"] == "upstream_timeout", last
    wait_for(lambda: gw.model_state("a")["in_flight"] == 0, "the slot to be freed")
