"""What the handler of every API family shares at the edge: the ASGI plumbing (the hot path past Starlette's
router, a ``send`` that knows whether the response started), the request body read within its limit, and the
``Front`` an API family gives the shared handler (``OpenAIRoutes.handle``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backends.base import OpenAIRequest, UpstreamResponse
from backends.errors import GatewayError, PayloadTooLarge
from gateway.http.relay import ClientGone
from gateway.observability.metrics import Trace
from gateway.scheduling.lifecycle import ModelSlot

__all__ = ["Front", "Handler", "HotPath", "Prepared", "asgi"]


Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


def asgi(handler: Handler) -> _Asgi:
    return _Asgi(handler)


class _Asgi:
    """Marks a coroutine as an ASGI endpoint for Starlette's router."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


class HotPath:
    """Sends the OpenAI POST endpoints straight to their handlers; everything else to ``app`` (Starlette).
    The same handlers are also Starlette routes, so a wrong method still gets its 405."""

    def __init__(self, app: ASGIApp, endpoints: dict[str, Handler]) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.endpoints.get(scope["path"])
            if handler is not None:
                await handler(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Send:
    """``send``, remembering whether the response has started (after that, an error cannot be a response).

    ``early``: the gateway started a stream itself, to send keep-alives while the request waited for its
    model; the answer's own start is then dropped (its status and headers were decided already), and an
    error before any of the answer's bytes goes out as the API's error event."""

    __slots__ = ("answered", "early", "send", "started")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False
        self.early = False
        self.answered = False  # some of the answer itself went out (not only keep-alives)

    async def __call__(self, message: Message) -> None:
        if self.early and message["type"] == "http.response.start":
            return
        self.started = self.answered = True
        await self.send(message)

    async def keepalive(self, headers: list[tuple[bytes, bytes]], line: bytes) -> None:
        """Start the stream (once) and send one keep-alive ``line``."""
        if not self.started:
            await self.send({"type": "http.response.start", "status": 200, "headers": headers})
            self.started = self.early = True
        await self.send({"type": "http.response.body", "body": line, "more_body": True})

    async def end_with(self, event: bytes) -> None:
        await self.send({"type": "http.response.body", "body": event, "more_body": True})
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes: a declared ``content-length`` over it is refused before a
    byte is read, and a chunked body as soon as it passes it. Chunks are joined once (linear in the size)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and int(value) > limit:  # the HTTP parser has checked it is a number
            raise _too_large(limit, f" ({int(value)} bytes)")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _too_large(limit: int, size: str = "") -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body{size} is over this gateway's limit of {limit} bytes (GATEWAY_MAX_BODY_BYTES)"
    )


@dataclass(frozen=True)
class Prepared:
    """A request ready to serve: its model, what its replica gets, and its trace."""

    slot: ModelSlot
    request: OpenAIRequest
    trace: Trace
    strip_usage: bool = False


class Front(Protocol):
    """An API family at the edge (OpenAI's, Anthropic's...): how its body becomes the internal request, how
    the upstream's answer goes back in its shape, and how its errors look. The rest is shared."""

    @property
    def endpoint(self) -> str:
        """The metrics' endpoint label."""
        ...

    @property
    def model(self) -> str:
        """The model resolved so far ("" before): a request refused after that is counted under it."""
        ...

    async def prepare(self, raw: bytes, started: float) -> Prepared: ...

    async def relay(
        self, upstream: UpstreamResponse, send: Send, trace: Trace | None, strip_usage: bool
    ) -> None: ...

    def error(self, err: GatewayError) -> Response: ...

    def error_event(self, err: GatewayError) -> bytes:
        """``err`` inside a stream that has started."""
        ...

    def keepalive(self) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The headers of a stream started before its model was ready, and one keep-alive line for it."""
        ...
