"""Rows of the fault matrix (README, "Fault matrix") that no other test file covers, over real sockets:

- an upstream that answers garbage: bytes that are not HTTP, a broken head, a 200 whose body is not JSON,
  an event stream that is not one, garbage in the middle of a stream;
- stale keep-alive connections: an upstream that drops (FIN or RST) a reused connection without answering,
  one that closes or resets every connection once it has answered, and one that closes idle connections;

Slow-loris clients, the matrix's one row about clients rather than upstreams, are in ``test_slow_clients.py``.

In each, clients of another model (``Bystanders``) stream while the fault happens, and every one of their
answers must arrive whole.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
import uvicorn

from tests.conftest import RunningGateway, free_port, wait_for
from tests.fake_upstream import FakeUpstream, RunningUpstream, _chunk

CHAT = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
TOKENS = [_chunk(i).decode()[6:].strip() for i in range(8)]  # what a FakeUpstream streams, event by event


# --- upstreams ------------------------------------------------------------------------------------------


def http_response(status: int, content_type: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        status,
        content_type,
        len(body),
        body,
    )


def chunked_response(content_type: bytes, pieces: list[bytes]) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ntransfer-encoding: chunked\r\n\r\n" % content_type
    return head + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


WHOLE = json.dumps(
    {
        "id": "chatcmpl-raw",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    }
).encode()
STREAM = [_chunk(i) for i in range(8)] + [b"data: [DONE]\n\n"]


def well_formed(request: dict[str, Any]) -> bytes:
    """A good answer to ``request``: the FakeUpstream's events when it streams, else one JSON object."""
    if request.get("stream"):
        return chunked_response(b"text/event-stream", STREAM)
    return http_response(200, b"application/json", WHOLE)


def always(answer: bytes) -> Callable[[dict[str, Any]], bytes]:
    return lambda request: answer


class RawUpstream:
    """A raw HTTP/1.1 server on its own thread and event loop, for what an ASGI app cannot send: bytes that
    are not HTTP, a broken head, a connection closed or reset at a chosen moment.

    Each request is answered with ``answer(request body)``. Then, by ``after``, the connection is kept
    (``keep``), closed (``fin``) or reset (``rst``), without a ``connection: close`` header either way. With
    ``drop_reused`` set (``fin`` or ``rst``), a request that arrives on a connection that has answered before
    is not answered: the connection is closed or reset, as a server that had dropped it while idle would."""

    def __init__(
        self,
        answer: Callable[[dict[str, Any]], bytes] = well_formed,
        after: str = "keep",
        drop_reused: str | None = None,
    ) -> None:
        self.answer, self.after, self.drop_reused = answer, after, drop_reused
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.answered = 0
        self.dropped = 0  # requests not answered: their connection was closed or reset instead
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    @staticmethod
    def _end(writer: asyncio.StreamWriter, how: str) -> None:
        if how == "rst":  # a zero linger turns the close into a reset
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.lower().split(b"\r\n")
                length = int(next((x.split(b":")[1] for x in lines if x.startswith(b"content-length")), b"0"))
                request = json.loads(await reader.readexactly(length) or b"{}")
                if served and self.drop_reused:
                    self.dropped += 1
                    self._end(writer, self.drop_reused)
                    return
                self.answered += 1  # before the answer goes out: a client that has it may count at once
                writer.write(self.answer(request))
                await writer.drain()
                served += 1
                if self.after != "keep":
                    self._end(writer, self.after)
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            if not writer.is_closing():
                writer.close()
            self.writers.discard(writer)

    def __enter__(self) -> RawUpstream:
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


def remote(name: str, *urls: str) -> dict[str, Any]:
    endpoints = [{"url": u} for u in urls]
    return {"name": name, "backend": {"kind": "remote", "endpoints": endpoints}, "health_check_interval": 0}


# --- clients --------------------------------------------------------------------------------------------


def post(base_url: str, stream: bool, model: str = "m") -> httpx.Response:
    """One chat request, read to its end (a stream's events stay in its text)."""
    body = {**CHAT, "model": model, "stream": stream}
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)


def events(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]


def assert_whole(response: httpx.Response, stream: bool) -> None:
    """A FakeUpstream's (or ``well_formed``'s) answer, complete and untouched."""
    assert response.status_code == 200, response.text
    if stream:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert events(response) == [*TOKENS, "[DONE]"]
    else:
        assert response.json()["choices"][0]["message"]["content"] == "ok"


def assert_upstream_error(response: httpx.Response, status: int = 502) -> dict[str, Any]:
    """A clear OpenAI error from the upstream, as JSON before any byte of an answer."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["source"] == "upstream" and response.headers["x-error-source"] == "upstream"
    assert error["type"] == "server_error" and error["message"]
    return error


class Bystanders:
    """Clients of a healthy model that stream and ask whole answers while a fault happens elsewhere; every
    answer must arrive whole. At least ``at_least`` answers are waited for before the fault, and as many
    again after it."""

    def __init__(self, base_url: str, model: str = "other", clients: int = 4, at_least: int = 8) -> None:
        self.base_url, self.model, self.at_least = base_url, model, at_least
        self.results: list[tuple[bool, httpx.Response]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i % 2 == 0,)) for i in range(clients)]

    def _run(self, stream: bool) -> None:
        while not self.stop.is_set():
            self.results.append((stream, post(self.base_url, stream, self.model)))

    def __enter__(self) -> Bystanders:
        for t in self.threads:
            t.start()
        wait_for(lambda: len(self.results) >= self.at_least, "the bystanders' first answers")
        return self

    def __exit__(self, *exc: object) -> None:
        seen = len(self.results)
        try:
            wait_for(
                lambda: len(self.results) >= seen + self.at_least, "the bystanders' answers after the fault"
            )
        finally:
            self.stop.set()
            for t in self.threads:
                t.join()
        for stream, response in self.results:
            assert_whole(response, stream)


# --- garbage from the upstream --------------------------------------------------------------------------

NOT_HTTP = {
    "ssh banner": b"SSH-2.0-OpenSSH_9.6\r\n",
    "binary": bytes(range(256)),
    "broken head": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: nope\r\n\r\n{}",
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("garbage", NOT_HTTP.values(), ids=NOT_HTTP.keys())
def test_an_upstream_that_does_not_speak_http_is_a_502(
    serve: Callable[..., RunningGateway],
    stack: ExitStack,
    healthy: RunningUpstream,
    garbage: bytes,
    stream: bool,
) -> None:
    bad = stack.enter_context(RawUpstream(always(garbage)))
    gw = serve([remote("m", bad.url), remote("other", healthy.url)])
    with Bystanders(gw.base_url):
        error = assert_upstream_error(post(gw.base_url, stream))
    assert error["code"] == "upstream_unavailable" and "invalid HTTP response" in error["message"]
    assert bad.answered == 1


@pytest.mark.usefixtures("long_cooldown")  # out for 30 s: a loaded machine does not see it come back
def test_a_replica_that_does_not_speak_http_is_ejected_and_the_request_answered_by_another(
    serve: Callable[..., RunningGateway], stack: ExitStack
) -> None:
    bad = stack.enter_context(RawUpstream(always(NOT_HTTP["ssh banner"])))
    good = stack.enter_context(RawUpstream())
    gw = serve([remote("m", bad.url, good.url)])
    # Between two idle replicas the balancer picks at random: ask until it has tried the bad one (each try
    # fails and is retried on the good one, so every request is answered). 1 in 2**64 never would.
    asked = 0
    while bad.answered == 0 and asked < 64:
        assert_whole(post(gw.base_url, asked % 2 == 1), asked % 2 == 1)
        asked += 1
    assert bad.answered == 1
    for stream in [False, True] * 6:
        assert_whole(post(gw.base_url, stream), stream)
    # Ejected after its failure, not hammered: out for its cooldown, tried no more (left in rotation, it
    # would be picked for about half of the twelve).
    assert bad.answered == 1 and good.answered == asked + 12
    assert gw.model_state("m")["replicas"][0]["ejected_for"] > 0


def test_an_upstream_error_status_with_an_html_page_is_passed_on_as_an_openai_error(
    serve: Callable[..., RunningGateway], stack: ExitStack, healthy: RunningUpstream
) -> None:
    page = b"<html><body><h1>500 Internal Server Error</h1></body></html>"
    bad = stack.enter_context(RawUpstream(always(http_response(500, b"text/html", page))))
    gw = serve([remote("m", bad.url), remote("other", healthy.url)])
    with Bystanders(gw.base_url):
        error = assert_upstream_error(post(gw.base_url, stream=False))
    assert "500 Internal Server Error" in error["message"]


def test_an_answer_cut_short_of_its_length_is_a_502(
    serve: Callable[..., RunningGateway], stack: ExitStack, healthy: RunningUpstream
) -> None:
    short = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n" + WHOLE[:20]
    bad = stack.enter_context(RawUpstream(always(short), after="fin"))
    gw = serve([remote("m", bad.url), remote("other", healthy.url)])
    with Bystanders(gw.base_url):
        error = assert_upstream_error(post(gw.base_url, stream=False))
    assert error["code"] == "upstream_unavailable"


GARBAGE_200 = {
    "html page": http_response(200, b"text/html", b"<html><body>Welcome to nginx!</body></html>"),
    "not json": http_response(200, b"application/json", b"<html>oops</html>"),
    "truncated json": http_response(200, b"application/json", WHOLE[:40]),
}


@pytest.mark.parametrize("answer", GARBAGE_200.values(), ids=GARBAGE_200.keys())
def test_a_200_whose_body_is_not_json_is_a_502(
    serve: Callable[..., RunningGateway], stack: ExitStack, healthy: RunningUpstream, answer: bytes
) -> None:
    bad = stack.enter_context(RawUpstream(always(answer)))
    gw = serve([remote("m", bad.url), remote("other", healthy.url)])
    with Bystanders(gw.base_url):
        assert_upstream_error(post(gw.base_url, stream=False))


INVALID_STREAMS = {
    "not sse": chunked_response(b"text/event-stream", [b"this is not an event stream\n\n"]),
    "data not json": chunked_response(b"text/event-stream", [b"data: {not json}\n\n", b"data: [DONE]\n\n"]),
}


@pytest.mark.parametrize("answer", INVALID_STREAMS.values(), ids=INVALID_STREAMS.keys())
def test_an_invalid_event_stream_is_a_502(
    serve: Callable[..., RunningGateway], stack: ExitStack, healthy: RunningUpstream, answer: bytes
) -> None:
    bad = stack.enter_context(RawUpstream(always(answer)))
    gw = serve([remote("m", bad.url), remote("other", healthy.url)])
    with Bystanders(gw.base_url):
        assert_upstream_error(post(gw.base_url, stream=True))


def test_garbage_in_the_middle_of_a_stream_ends_it_with_an_error_event(
    serve: Callable[..., RunningGateway], stack: ExitStack, healthy: RunningUpstream
) -> None:
    pieces = [*STREAM[:2], b"data: {garbage\n\n", *STREAM[2:]]
    bad = stack.enter_context(RawUpstream(always(chunked_response(b"text/event-stream", pieces))))
    gw = serve([remote("m", bad.url), remote("other", healthy.url)])
    with Bystanders(gw.base_url):
        r = post(gw.base_url, stream=True)
    assert r.status_code == 200  # the head went out with the first events
    got = events(r)
    assert got[:2] == TOKENS[:2] and len(got) == 3, got  # the good events untouched, then the error
    error = json.loads(got[2])["error"]
    assert error["source"] == "upstream" and "{garbage" in error["message"]
    assert gw.model_state("m")["replicas"][0]["failures"] == 1  # ejected, as a replica failing mid-stream is


# --- stale keep-alive connections -----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("how", ["fin", "rst"])
def test_a_reused_connection_the_upstream_dropped_is_retried_on_a_fresh_one(
    serve: Callable[..., RunningGateway], stack: ExitStack, healthy: RunningUpstream, how: str, stream: bool
) -> None:
    """llama-server's habit: a kept-alive connection it has dropped fails the next request before any byte.
    Here every reused connection is dropped, so every request but the first meets a stale one."""
    upstream = stack.enter_context(RawUpstream(drop_reused=how))
    gw = serve([remote("m", upstream.url), remote("other", healthy.url)])
    with Bystanders(gw.base_url):
        for _ in range(6):
            assert_whole(post(gw.base_url, stream), stream)
    assert upstream.dropped == 5 and upstream.answered == 6  # each retry was on a fresh connection, once
    state = gw.model_state("m")["replicas"][0]
    assert state["failures"] == 0 and state["healthy"]  # a stale connection is not the replica's failure


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("after", ["fin", "rst"])
def test_an_upstream_that_ends_every_connection_after_answering_is_served_without_a_failure(
    serve: Callable[..., RunningGateway], stack: ExitStack, after: str, stream: bool
) -> None:
    """No ``connection: close`` header: the gateway pools the connection and learns of the close (or the
    reset) only from the socket, possibly after it has picked the connection for the next request."""
    upstream = stack.enter_context(RawUpstream(after=after))
    gw = serve([remote("m", upstream.url)])
    for _ in range(20):
        assert_whole(post(gw.base_url, stream), stream)
    assert upstream.answered == 20
    assert gw.model_state("m")["replicas"][0]["failures"] == 0


class _Uvicorn(RunningUpstream):
    """A FakeUpstream under uvicorn with a short keep-alive timeout: it closes connections left idle."""

    def __init__(self, app: FakeUpstream, port: int, keep_alive: float) -> None:
        super().__init__(app, port)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical")
        config.timeout_keep_alive = keep_alive  # type: ignore[assignment]
        self.server = uvicorn.Server(config)

    def open_connections(self) -> int:
        return len(self.server.server_state.connections)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_upstream_that_closes_idle_connections_is_served_without_a_failure(
    serve: Callable[..., RunningGateway], stack: ExitStack, healthy: RunningUpstream, stream: bool
) -> None:
    app = FakeUpstream()
    upstream = stack.enter_context(_Uvicorn(app, free_port(), keep_alive=0.05))
    gw = serve([remote("m", upstream.url), remote("other", healthy.url)])
    with Bystanders(gw.base_url):
        for _ in range(5):
            assert_whole(post(gw.base_url, stream), stream)
            wait_for(lambda: upstream.open_connections() == 0, "the upstream to close the idle connection")
    assert app.requests == 5
    assert gw.model_state("m")["replicas"][0]["failures"] == 0
