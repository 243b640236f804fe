"""Anthropic's Messages API (``POST /v1/messages``, ``/v1/messages/count_tokens``) on every model.

Where the model's kind speaks the API itself (``native_apis: [messages]``: llama-server, and containers or
remote upstreams that say so), the request is checked as below and passed through to the engine's own
endpoint, its answer streamed back untouched (the usage read on the way, ``gateway.api.anthropic_native``).
Elsewhere the body is translated to a chat completion (``gateway.api.anthropic``), which every kind serves,
and the answer translated back: Anthropic's message object, or its event sequence. Either way it goes the
way an OpenAI request goes (``OpenAIRoutes.handle``): the same queue, load, affinity (``metadata.user_id``),
deadlines, failover, limits and metrics; errors in Anthropic's shape with the same status codes. A
translated ``count_tokens`` asks the engine for one token and reports the prompt's tokens it counted, so it
is what the model itself counts (and loads the model like any request).
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from backends.base import Endpoint, OpenAIRequest, UpstreamResponse
from backends.errors import GatewayError
from gateway.api.anthropic import from_chat, gateway_error_body, message_id, to_chat
from gateway.api.anthropic_native import EventUsage, message_usage
from gateway.api.anthropic_stream import MessageStream, event
from gateway.api.validation import decode
from gateway.http.edge import Handler, Prepared
from gateway.http.errors import anthropic_error_response
from gateway.http.openai_front import check_endpoint
from gateway.http.openai_routes import OpenAIRoutes
from gateway.http.translated import relay_translated
from gateway.observability.metrics import Trace
from gateway.scheduling.lifecycle import ModelSlot


class _MessagesFront:
    """One Messages request (its own object: it remembers the model name asked and whether it streams)."""

    endpoint = "messages"

    def __init__(self, routes: OpenAIRoutes, count_only: bool) -> None:
        self.routes = routes
        self.count_only = count_only
        self.asked = ""
        self.model = ""
        self.stream = False
        self.native = False  # passed through to the engine's own Messages API

    async def prepare(self, raw: bytes, started: float) -> Prepared:
        data = decode(raw)
        self.asked = data["model"]
        slot = self.routes.gw.registry.resolve(self.asked)
        self.model = slot.name
        check_endpoint(slot, "chat/completions", self.asked)
        # The translation checks every field, also for an engine that gets the request as it came: what the
        # gateway refuses (a field no engine here can honour), it refuses on every kind alike.
        chat = to_chat({**data, "max_tokens": 1, "stream": False} if self.count_only else data)
        if "messages" in getattr(slot.manifest.backend, "native_apis", ()):
            return self._native(slot, data, raw, started)
        self.stream = bool(chat.get("stream"))
        if self.stream:
            chat["stream_options"] = {"include_usage": True}
        request = self.routes.upstream_request(slot, "chat/completions", chat, None, False)
        return Prepared(slot, request, Trace(slot.name, self.endpoint, started, 1, chat["max_tokens"]))

    def _native(self, slot: ModelSlot, data: dict[str, Any], raw: bytes, started: float) -> Prepared:
        """The client's own bytes, to the engine's own endpoint (count_tokens included)."""
        self.native = True
        self.stream = bool(data.get("stream")) and not self.count_only
        endpoint: Endpoint = "messages/count_tokens" if self.count_only else "messages"
        request = OpenAIRequest(endpoint, data, self.stream, raw, max_body=self.routes.max_body)
        limit = data.get("max_tokens")
        trace = Trace(slot.name, self.endpoint, started, 1, limit if isinstance(limit, int) else None)
        return Prepared(slot, request, trace)

    async def relay(
        self, upstream: UpstreamResponse, send: Send, trace: Trace | None, strip_usage: bool
    ) -> None:
        if self.native:
            await _relay_native(upstream, send, trace)
            return
        if self.stream:
            await self._relay_stream(upstream, send, trace)
            return
        body = b"".join([chunk async for chunk in upstream.body])
        answer = json.loads(body)
        usage = answer.get("usage") or {}
        out: dict[str, Any] = (
            {"input_tokens": usage.get("prompt_tokens", 0)}
            if self.count_only
            else from_chat(answer, self.asked)
        )
        encoded = json.dumps(out).encode()
        await send({"type": "http.response.start", "status": 200, "headers": _headers("application/json")})
        await send({"type": "http.response.body", "body": encoded, "more_body": False})
        if trace is not None:
            trace.first = time.perf_counter()
            trace.body = body  # the chat completion's usage, read by the metrics
            trace.completed = True

    async def _relay_stream(self, upstream: UpstreamResponse, send: Send, trace: Trace | None) -> None:
        events = MessageStream(self.asked, message_id())
        await relay_translated(upstream, send, trace, events, _headers("text/event-stream"))

    def error(self, err: GatewayError) -> Response:
        return anthropic_error_response(err)

    def error_event(self, err: GatewayError) -> bytes:
        return event("error", gateway_error_body(err))

    def keepalive(self) -> tuple[list[tuple[bytes, bytes]], bytes]:
        return _headers("text/event-stream"), event("ping", {"type": "ping"})  # Anthropic's own keep-alive


async def _relay_native(upstream: UpstreamResponse, send: Send, trace: Trace | None) -> None:
    """The engine's own answer, untouched (with a ``request-id``); its usage and stop reason noted on the
    trace as the bytes pass, as ``relay`` does for chat completions."""
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in upstream.headers.items()]
    headers.append((b"request-id", message_id().replace("msg_", "req_").encode()))
    await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
    if "content-length" in upstream.headers:  # a whole message (or count): one write
        body = b"".join([chunk async for chunk in upstream.body])
        await send({"type": "http.response.body", "body": body, "more_body": False})
        if trace is not None:
            trace.first = time.perf_counter()
            trace.usage, trace.finish_reasons = message_usage(body)
            trace.completed = True
        return
    reader = EventUsage()
    last = 0.0
    try:
        async for chunk in upstream.body:
            if trace is not None:
                reader.feed(chunk)
                now = time.perf_counter()
                if last:
                    trace.gaps.append(now - last)
                else:
                    trace.first = now
                last = now
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        if trace is not None:
            trace.usage = reader.usage
            trace.finish_reasons = [reader.finish] if reader.finish else []
            trace.completed = reader.finish is not None


def _headers(content_type: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", content_type.encode()),
        (b"request-id", message_id().replace("msg_", "req_").encode()),
    ]


class AnthropicRoutes:
    def __init__(self, openai: OpenAIRoutes) -> None:
        self.openai = openai

    def endpoints(self) -> dict[str, Handler]:
        def post(count_only: bool) -> Handler:
            async def handler(scope: Scope, receive: Receive, send: Send) -> None:
                await self.openai.handle(scope, receive, send, _MessagesFront(self.openai, count_only))

            return handler

        return {"/v1/messages": post(False), "/v1/messages/count_tokens": post(True)}
