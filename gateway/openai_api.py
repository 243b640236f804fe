"""The ``/v1/*`` handlers: validate, resolve the model, take a lease, pick a replica, forward, stream back."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backends.base import Endpoint, OpenAIRequest
from gateway.requests import ChatRequest, CompletionRequest, EmbeddingRequest, _Body, parse_body
from gateway.streaming import PassThroughResponse

if TYPE_CHECKING:
    from gateway.app import Gateway


class OpenAIRoutes:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.created = int(time.time())

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{name:path}", self.model, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
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
        data = [self._model_card(n) for n in self.gw.registry.names]
        return JSONResponse({"object": "list", "data": data})

    async def model(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.gw.registry.resolve(name)
        return JSONResponse(self._model_card(name))

    async def chat(self, request: Request) -> Response:
        return await self._forward(request, "chat/completions", ChatRequest)

    async def completions(self, request: Request) -> Response:
        return await self._forward(request, "completions", CompletionRequest)

    async def embeddings(self, request: Request) -> Response:
        return await self._forward(request, "embeddings", EmbeddingRequest)

    async def _forward(self, request: Request, endpoint: Endpoint, schema: type[_Body]) -> Response:
        started = time.perf_counter()
        body = parse_body(await request.body(), schema)
        gw = self.gw
        slot = gw.registry.resolve(body["model"])
        lease = await gw.scheduler.acquire(slot, gw.settings.load_timeout)
        try:
            replica = await lease.pool.acquire(gw.settings.queue_timeout)
        except BaseException:
            lease.release()
            raise
        try:
            upstream = await replica.backend.forward(OpenAIRequest(endpoint, body, bool(body.get("stream"))))
        except BaseException:
            lease.pool.release(replica)
            lease.release()
            raise

        def finished(_: object) -> None:
            lease.pool.release(replica)
            lease.release()

        upstream.finished.add_done_callback(finished)
        gw.metrics.requests.labels(slot.name, endpoint, str(upstream.status)).inc()
        ttfb = gw.metrics.time_to_first_byte.labels(slot.name, endpoint)
        response = PassThroughResponse(upstream, ttfb.observe)
        response.started = started
        return response  # type: ignore[return-value]  # an ASGI app, which Starlette accepts as a response
