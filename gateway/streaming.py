"""The pass-through response: upstream bytes go to the client as they arrive, unbuffered and un-rechunked.

It watches the client connection while it streams. When the client goes away, the upstream is closed at
once (an in-process engine stops within a token), and ``close()`` always runs in a ``finally``: nothing relies
on Starlette's background tasks, which do not run on a disconnect. The replica slot and the model lease are
released when the backend reports it has really finished (``UpstreamResponse.finished``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
from starlette.types import Receive, Scope, Send

from backends.base import UpstreamResponse


class PassThroughResponse:
    def __init__(
        self,
        upstream: UpstreamResponse,
        on_first_byte: Callable[[float], None] | None = None,
    ) -> None:
        self.upstream = upstream
        self._on_first_byte = on_first_byte
        self.started = time.perf_counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        up = self.upstream
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in up.headers.items()]
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
                await send({"type": "http.response.start", "status": up.status, "headers": headers})
                first = True
                async for chunk in up.body:
                    if first and self._on_first_byte is not None:
                        self._on_first_byte(time.perf_counter() - self.started)
                    first = False
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
        finally:
            up.close()


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
