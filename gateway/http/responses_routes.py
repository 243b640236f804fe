"""OpenAI's Responses API (``POST /v1/responses``, ``/v1/responses/input_tokens``; ``GET`` and ``DELETE
/v1/responses/{id}``, ``GET /v1/responses/{id}/input_items``) on every model.

The body, after the conversation it continues (``previous_response_id``, read from the store), is translated
to a chat completion (``gateway.api.responses``), which every kind serves, and goes the way an OpenAI request
goes (``OpenAIRoutes.handle``): the same queue, load, affinity (``user`` or ``prompt_cache_key``), deadlines,
failover, limits and metrics. The answer comes back as a response object, or streamed as the API's typed
events. A stored response (``store``, the default) is written before the answer's end goes out, so a client
holding the end can already continue from it. ``input_tokens`` asks the engine for one token and reports
the prompt's tokens it counted, as ``/v1/messages/count_tokens`` does.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from backends.base import UpstreamResponse
from backends.errors import GatewayError, InvalidRequest, NotFound
from gateway.api.responses import Turn, new_id, to_chat
from gateway.api.responses_output import Outcome, output_of, response_object
from gateway.api.responses_stream import ResponseStream
from gateway.api.validation import decode
from gateway.control.response_store import ResponseStore, Stored
from gateway.http.edge import Handler, Prepared
from gateway.http.errors import error_response
from gateway.http.openai_front import KEEPALIVE, check_endpoint
from gateway.http.openai_routes import OpenAIRoutes
from gateway.http.translated import relay_translated
from gateway.observability.metrics import Trace

MAX_LIST = 100  # input_items: the most items one page holds (OpenAI's limit)


def owner_of(scope: Scope) -> str:
    """The API key's name a stored response belongs to ("" when the gateway is open)."""
    return str(scope.get("state", {}).get("key_name", ""))


class _ResponsesFront:
    """One Responses request (its own object: it keeps the turn, the conversation it continues, and the
    stream's state for an error event)."""

    endpoint = "responses"

    def __init__(self, routes: OpenAIRoutes, store: ResponseStore, owner: str, count_only: bool) -> None:
        self.routes = routes
        self.store = store
        self.owner = owner
        self.count_only = count_only
        self.asked = ""
        self.model = ""
        self.turn: Turn | None = None
        self.history: list[dict[str, Any]] = []
        self.events: ResponseStream | None = None
        self.response_id = new_id("resp")
        self.created = time.time()

    async def prepare(self, raw: bytes, started: float) -> Prepared:
        data = decode(raw)
        self.asked = data["model"]
        slot = self.routes.gw.registry.resolve(self.asked)
        self.model = slot.name
        previous = data.get("previous_response_id")
        if previous is not None:
            if not isinstance(previous, str):
                raise InvalidRequest("previous_response_id: expected a string", param="previous_response_id")
            stored = await asyncio.to_thread(self.store.get, self.owner, previous)
            if stored is None:
                raise InvalidRequest(
                    f"previous_response_id: no stored response '{previous}' (never stored, deleted, expired, "
                    "or made with another API key)",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            self.history = stored.conversation
        if self.count_only:  # the prompt as the engine counts it: one token generated, then its usage
            data = {**data, "max_output_tokens": 1, "stream": False, "store": False}
        self.turn = turn = to_chat(data, self.history)
        chat = turn.chat
        if chat.get("stream"):
            chat["stream_options"] = {"include_usage": True}
        check_endpoint(slot, "chat/completions", self.asked)
        request = self.routes.upstream_request(slot, "chat/completions", chat, None, False)
        return Prepared(slot, request, Trace(slot.name, self.endpoint, started, 1, chat.get("max_tokens")))

    async def _keep(self, outcome: Outcome | None, response: dict[str, Any]) -> None:
        turn = self.turn
        if turn is None or outcome is None or not turn.store:
            return
        conversation = [*self.history, *turn.items, *outcome.output]
        await asyncio.to_thread(self.store.put, self.owner, Stored(response, turn.items, conversation))

    async def relay(
        self, upstream: UpstreamResponse, send: Send, trace: Trace | None, strip_usage: bool
    ) -> None:
        turn = self.turn
        assert turn is not None
        if turn.chat.get("stream"):
            events = self.events = ResponseStream(
                self.response_id, self.asked, turn.echo, store=turn.store, created=self.created
            )

            async def before_end() -> None:
                if events.outcome is not None:
                    await self._keep(events.outcome, events.final)

            await relay_translated(upstream, send, trace, events, _JSON_HEADERS["sse"], before_end)
            return
        body = b"".join([chunk async for chunk in upstream.body])
        answer = json.loads(body)
        if self.count_only:
            usage = answer.get("usage") or {}
            out: dict[str, Any] = {
                "object": "response.input_tokens",
                "input_tokens": usage.get("prompt_tokens", 0),
            }
        else:
            outcome = output_of(answer)
            out = response_object(
                self.response_id, self.asked, turn.echo, outcome, created=self.created, store=turn.store
            )
            await self._keep(outcome, out)
        encoded = json.dumps(out).encode()
        await send({"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS["json"]})
        await send({"type": "http.response.body", "body": encoded, "more_body": False})
        if trace is not None:
            trace.first = time.perf_counter()
            trace.body = body  # the chat completion's usage, read by the metrics
            trace.completed = True

    def error(self, err: GatewayError) -> Response:
        return error_response(err)

    def error_event(self, err: GatewayError) -> bytes:
        events = self.events or ResponseStream(self.response_id, self.asked, {}, created=self.created)
        return b"".join(events.error(err.message, err.code or "server_error"))

    def keepalive(self) -> tuple[list[tuple[bytes, bytes]], bytes]:
        return _JSON_HEADERS["sse"], KEEPALIVE


_JSON_HEADERS = {
    "json": [(b"content-type", b"application/json")],
    "sse": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
}


class ResponsesRoutes:
    def __init__(self, openai: OpenAIRoutes) -> None:
        self.openai = openai
        self.store = openai.gw.responses

    def endpoints(self) -> dict[str, Handler]:
        def post(count_only: bool) -> Handler:
            async def handler(scope: Scope, receive: Receive, send: Send) -> None:
                front = _ResponsesFront(self.openai, self.store, owner_of(scope), count_only)
                await self.openai.handle(scope, receive, send, front)

            return handler

        return {"/v1/responses": post(False), "/v1/responses/input_tokens": post(True)}

    def routes(self) -> list[Route]:
        return [
            Route("/v1/responses/{id}/input_items", self.input_items, methods=["GET"]),
            Route("/v1/responses/{id}", self.retrieve, methods=["GET"]),
            Route("/v1/responses/{id}", self.delete, methods=["DELETE"]),
        ]

    async def _stored(self, request: Request) -> Stored:
        response_id = request.path_params["id"]
        stored = await asyncio.to_thread(self.store.get, owner_of(request.scope), response_id)
        if stored is None:
            raise _missing(response_id)
        return stored

    async def retrieve(self, request: Request) -> Response:
        if request.query_params.get("stream") in ("true", "1"):
            raise InvalidRequest("stream: a stored response cannot be streamed again here", param="stream")
        return JSONResponse((await self._stored(request)).response)

    async def delete(self, request: Request) -> Response:
        response_id = request.path_params["id"]
        if not await asyncio.to_thread(self.store.delete, owner_of(request.scope), response_id):
            raise _missing(response_id)
        return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})

    async def input_items(self, request: Request) -> Response:
        items = (await self._stored(request)).input_items
        query = request.query_params
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest("order: expected asc or desc", param="order")
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIST:
            raise InvalidRequest(f"limit: a whole number from 1 to {MAX_LIST}", param="limit")
        ordered = items if order == "asc" else items[::-1]
        after = query.get("after")
        if after is not None:
            ids = [item["id"] for item in ordered]
            if after not in ids:
                raise InvalidRequest(f"after: no item '{after}' in this response's input", param="after")
            ordered = ordered[ids.index(after) + 1 :]
        page = ordered[:limit]
        return JSONResponse(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(ordered) > limit,
            }
        )


def _missing(response_id: str) -> GatewayError:
    return NotFound(f"no stored response '{response_id}'", code="response_not_found")
