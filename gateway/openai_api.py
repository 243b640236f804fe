"""The ``/v1/*`` handlers: validate, resolve the model, take a lease, pick a replica, forward, stream back.

The POST handlers are ASGI endpoints rather than request/response functions, so that one disconnect watcher
covers the request from the moment its body is read until its last byte is sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from backends.base import Endpoint, OpenAIRequest, UpstreamResponse
from backends.http import UpstreamUnavailable
from gateway.balancing import preferred_replica
from gateway.errors import GatewayError, InvalidRequest
from gateway.lifecycle import ModelSlot
from gateway.pool import Pool, Replica
from gateway.requests import ChatRequest, CompletionRequest, EmbeddingRequest, _Body, parse_body
from gateway.streaming import cancel_on_disconnect, stream_through

if TYPE_CHECKING:
    from gateway.app import Gateway

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Asgi:
    """Marks a coroutine as an ASGI endpoint for Starlette's router."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


SCHEMAS: dict[Endpoint, type[_Body]] = {
    "chat/completions": ChatRequest,
    "completions": CompletionRequest,
    "embeddings": EmbeddingRequest,
}


class OpenAIRoutes:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.created = int(time.time())

    def routes(self) -> list[Route]:
        def post(endpoint: Endpoint) -> Route:
            async def handler(scope: Scope, receive: Receive, send: Send) -> None:
                await self._forward(scope, receive, send, endpoint)

            return Route(f"/v1/{endpoint}", _Asgi(handler), methods=["POST"])

        return [
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{name:path}", self.model, methods=["GET"]),
            *(post(e) for e in SCHEMAS),
        ]

    def _model_card(self, name: str) -> dict[str, object]:
        slot = self.gw.registry.names[name]
        return {
            "id": name,
            "object": "model",
            "created": self.created,
            "owned_by": "llm-gateway",
            "root": slot.name,
            "status": slot.state.value,
        }

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card(n) for n in self.gw.registry.names]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.gw.registry.resolve(name)
        return JSONResponse(self._model_card(name))

    async def _forward(self, scope: Scope, receive: Receive, send: Send, endpoint: Endpoint) -> None:
        started = time.perf_counter()
        raw = await Request(scope, receive).body()
        model = ""
        try:
            body = parse_body(raw, SCHEMAS[endpoint])
            slot = self.gw.registry.resolve(body["model"])
            model = slot.name
            _check_endpoint(slot, endpoint, body["model"])
            async with cancel_on_disconnect(receive):
                await self._serve(slot, endpoint, body, Headers(scope=scope), send, started)
        except GatewayError as err:
            self.gw.metrics.requests.labels(model, endpoint, str(err.status)).inc()
            raise

    async def _serve(
        self,
        slot: ModelSlot,
        endpoint: Endpoint,
        body: dict[str, Any],
        headers: Headers,
        send: Send,
        started: float,
    ) -> None:
        gw = self.gw
        lease = await gw.scheduler.acquire(slot, gw.settings.load_timeout)
        request = OpenAIRequest(endpoint, body, bool(body.get("stream")))
        key = affinity_key(slot.manifest.affinity, body, headers)
        try:
            replica, upstream = await _first_answer(lease.pool, request, key, gw.settings.queue_timeout)
        except BaseException:
            lease.release()
            raise

        def finished(ended: asyncio.Future[bool]) -> None:
            lease.pool.release(replica, failed=not _replica_did_its_part(ended))
            lease.release()

        upstream.finished.add_done_callback(finished)
        gw.metrics.requests.labels(slot.name, endpoint, str(upstream.status)).inc()
        try:
            await stream_through(
                upstream, send, started, gw.metrics.time_to_first_byte.labels(slot.name, endpoint).observe
            )
        finally:
            upstream.close()


async def _first_answer(
    pool: Pool, request: OpenAIRequest, key: str | None, timeout: float
) -> tuple[Replica, UpstreamResponse]:
    """A replica's response, up to its first byte. A replica that fails before that is ejected for a
    cooldown and the request goes to another one (every replica at most once): nothing reached the client."""
    tried = 0
    while True:
        preferred = preferred_replica(key, len(pool.replicas)) if key else None
        replica = await pool.acquire(timeout, preferred)
        try:
            response = await replica.backend.forward(request)
        except UpstreamUnavailable:
            pool.release(replica, failed=True)
            tried += 1
            if tried >= len(pool.replicas):
                raise
        except BaseException:
            # The backend has let go (or, cancelled mid-prompt, stops at its next token; an in-process
            # replica runs one job at a time, so the next request simply starts after it).
            pool.release(replica)
            raise
        else:
            replica.served += 1
            return replica, response


def _replica_did_its_part(ended: asyncio.Future[bool]) -> bool:
    """How a response ended, for the replica's record: False when it failed mid-response (it is ejected as
    for a failure before the first byte). A client that left is not the replica's failure."""
    if ended.cancelled():
        return True
    return ended.exception() is None and ended.result()


def affinity_key(mode: str, body: dict[str, Any], headers: Headers) -> str | None:
    if mode == "none":
        return None
    session = headers.get("x-session-id") or body.get("user")
    if session or mode == "session":
        return str(session) if session else None
    prompt = body.get("messages") or body.get("prompt") or body.get("input")
    return json.dumps(prompt)[:512]


def _check_endpoint(slot: ModelSlot, endpoint: Endpoint, name: str) -> None:
    """Refuse a request the model cannot serve before it costs a load or a queue place."""
    serves_embeddings = getattr(slot.manifest.backend, "embeddings", None)
    if serves_embeddings is not None and (endpoint == "embeddings") != serves_embeddings:
        what = "embeddings only" if serves_embeddings else "no embeddings"
        raise InvalidRequest(f"model '{name}' serves {what}; it cannot answer /v1/{endpoint}", param="model")
