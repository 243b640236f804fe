"""Streaming an upstream response through to the client, and noticing when the client goes away.

Bytes go out as they arrive: no buffering, no re-chunking. ``cancel_on_disconnect`` watches the connection for
the whole life of a request, not only while it streams: a client that leaves while its request waits in the
queue, while its model loads, or before the first token, cancels the request there and then, so an abandoned
request never holds a replica or triggers a load. The caller closes the upstream in a ``finally``; nothing
relies on Starlette's background tasks, which do not run on a disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import anyio
from starlette.types import Receive, Send

from backends.base import UpstreamResponse


@contextlib.asynccontextmanager
async def cancel_on_disconnect(receive: Receive) -> AsyncIterator[anyio.CancelScope]:
    """Run the body in a cancel scope that is cancelled when the client disconnects.

    Call it after the request body has been read: from then on, the next ASGI message is the disconnect."""
    with anyio.CancelScope() as scope:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            scope.cancel()

        watcher = asyncio.create_task(watch())
        try:
            yield scope
        finally:
            watcher.cancel()


async def stream_through(
    upstream: UpstreamResponse, send: Send, started: float, on_first_byte: Callable[[float], None]
) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in upstream.headers.items()]
    await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
    if "content-length" in upstream.headers:  # a complete body (not a stream): one write, no chunked framing
        body = b"".join([chunk async for chunk in upstream.body])
        on_first_byte(time.perf_counter() - started)
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return
    first = True
    async for chunk in upstream.body:
        if first:
            on_first_byte(time.perf_counter() - started)
            first = False
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
