"""Streaming an upstream response through to the client, and noticing when the client goes away.

Bytes go out as they arrive: no buffering, no re-chunking. ``CancelOnDisconnect`` watches the connection for
the whole life of a request, not only while it streams: a client that leaves while its request waits in the
queue, while its model loads, or before the first token, cancels the request there and then, so an abandoned
request never holds a replica or triggers a load. The caller closes the upstream in a ``finally``; nothing
relies on Starlette's background tasks, which do not run on a disconnect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from starlette.types import Message, Receive, Send

from backends.base import UpstreamResponse
from gateway.api.usage import StreamReader
from gateway.observability.metrics import Trace


class ClientGone(Exception):
    """The client disconnected before its response was complete."""


class SlowClient(Exception):
    """The client stopped reading its response: a piece waited longer than the send timeout to go out."""


class Watchdog:
    """The deadline on sending each piece of a response to the client (``send_timeout``): one timer per
    response, moved lazily, so a piece costs two assignments and a clock read. A client that stops reading
    makes uvicorn's ``send`` wait forever (its write buffer is full); past the timeout the request's task is
    cancelled, and the caller turns that into ``SlowClient``: its upstream request is cancelled, its slot
    freed, and its connection cut."""

    __slots__ = ("_deadline", "_handle", "_loop", "_since", "_task", "fired", "timeout")

    def __init__(self, timeout: float, deadline: float | None = None) -> None:
        """``deadline`` (loop time): the request's total deadline, enforced by the same timer, so that an
        engine that never checks it (the in-process one) is held to it too."""
        self.timeout = timeout
        self.fired: str | None = None
        self._deadline = deadline
        self._since = 0.0  # when the send under way began (loop time); 0: none
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        first = self._loop.time() + timeout
        at = first if deadline is None else min(first, deadline)
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(at, self._check)

    def guard(self, send: Send) -> Send:
        clock = self._loop.time

        async def guarded(message: Message) -> None:
            self._since = clock()
            await send(message)
            self._since = 0.0

        return guarded

    def _check(self) -> None:
        since = self._since
        now = self._loop.time()
        late = "send" if since and now - since >= self.timeout else None
        if late is None and self._deadline is not None and now >= self._deadline:
            late = "total"
        if late is not None:
            self.fired = late
            self._handle = None
            self._task.cancel()
            return
        at = (since or now) + self.timeout
        self._handle = self._loop.call_at(
            at if self._deadline is None else min(at, self._deadline), self._check
        )

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class CancelOnDisconnect:
    """``async with CancelOnDisconnect(receive):`` runs the body until the client disconnects; then the task
    is cancelled wherever it waits (queue, load, upstream) and the block raises ``ClientGone``.

    Enter it after the request body has been read: from then on, the next ASGI message is the disconnect. It
    is plain asyncio (one watcher task, ``Task.cancel``/``uncancel``) rather than an anyio cancel scope, which
    cost several per cent of the gateway's CPU per proxied request (bench/README.md). A cancellation that
    did not come from the watcher (a server shutdown) passes through untouched."""

    __slots__ = ("_gone", "_receive", "_task", "_watcher")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._gone = False

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._gone = True
        self._task.cancel()

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._watcher.cancel()
        cancelled = exc_type is not None and issubclass(exc_type, asyncio.CancelledError)
        if self._gone and cancelled and self._task.uncancel() == 0:
            raise ClientGone from None


async def relay(upstream: UpstreamResponse, send: Send, trace: Trace | None, strip_usage: bool) -> None:
    """Send the upstream's response on as it arrives. With a ``trace`` (metrics on), note on it when the
    first bytes went out, the gaps between pieces, and what the response said about itself (usage, finish
    reasons, a final error); the rest is done later, in a batch (``Metrics.flush``)."""
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in upstream.headers.items()]
    await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
    if "content-length" in upstream.headers:  # a complete body (not a stream): one write, no chunked framing
        body = b"".join([chunk async for chunk in upstream.body])
        await send({"type": "http.response.body", "body": body, "more_body": False})
        if trace is not None:
            trace.first = time.perf_counter()
            trace.body = body  # read for usage when the metrics are next brought up to date
            trace.completed = True
        return
    if trace is None:
        async for chunk in upstream.body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    await _relay_traced(upstream.body, send, trace, StreamReader(strip_usage, every_chunk=trace.n > 1))


async def _relay_traced(body: AsyncIterator[bytes], send: Send, trace: Trace, reader: StreamReader) -> None:
    """A stream with metrics on. Per chunk this is the whole of their cost (bench/README.md, issue 16): a
    clock read and the gap since the piece before (the first "gap" is the wait for the first piece: it
    gives ``trace.first`` and is dropped), the chunk kept for the end of the stream (a deque's append), and,
    when the gateway strips the usage event it asked for, a test of the chunk's last byte and one substring
    search. Only a chunk that may hold the usage event, or that ends inside a line while stripping, goes
    through ``StreamReader.feed`` (``StreamReader`` says why that is enough)."""
    gaps = trace.gaps
    gap, clock, keep, feed = gaps.append, time.perf_counter, reader.keep, reader.feed
    strip = reader.strip_usage
    held = False  # reader.holding, read again after each ``feed``
    ended = False
    began = last = clock()
    try:
        if reader.every_chunk:  # several choices: each chunk is read as it passes
            async for chunk in body:
                if chunk := feed(chunk):
                    now = clock()
                    gap(now - last)
                    last = now
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        else:
            async for chunk in body:
                if strip and (held or not chunk or chunk[-1] != 10 or chunk.rpartition(USAGE_KEY)[1]):
                    chunk = feed(chunk)
                    held = reader.holding
                    if not chunk:
                        continue
                else:
                    keep(chunk)
                now = clock()
                gap(now - last)
                last = now
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": reader.close(), "more_body": False})
        ended = True
    finally:
        # Also when the client left: one that has had ``[DONE]`` may close before the upstream has ended,
        # and its response was complete all the same.
        reader.close()
        if gaps:
            trace.first = began + gaps[0]
            del gaps[0]
        trace.usage, trace.finish_reasons, trace.timings = reader.usage, reader.finish_reasons, reader.timings
        trace.completed = reader.error_status is None and (reader.done or ended)
        if reader.error_status is not None:
            trace.status = reader.error_status


USAGE_KEY = b'"usage"'  # rpartition: a one-argument method, cheaper to call than rfind (bench/README.md)
