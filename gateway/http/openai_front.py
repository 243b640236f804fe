"""OpenAI's own endpoints as a front of the routes (``gateway.http.openai_routes``): the model resolved, the
body checked and passed on, the answer streamed through as it comes; and what the gateway adds to a stream's
request so that the metrics get its usage (``stream_options.include_usage``, unless the model's streams carry
llama.cpp's ``timings``, which give it unasked), taken out of the answer again. ``check_endpoint`` and
``KEEPALIVE`` serve the Anthropic and Responses fronts too."""

from __future__ import annotations

import json
from collections.abc import MutableSet
from typing import Any, Protocol, TypeVar

from starlette.responses import Response
from starlette.types import Send

from backends.base import Endpoint, OpenAIRequest, UpstreamResponse
from backends.errors import GatewayError, InvalidRequest, sse_error_event
from gateway.api.validation import decode
from gateway.control.state import Gateway
from gateway.http.edge import Prepared
from gateway.http.errors import error_response
from gateway.http.relay import relay
from gateway.observability.metrics import Trace
from gateway.scheduling.lifecycle import ModelSlot

T = TypeVar("T")

SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
KEEPALIVE = b": waiting for the model\n\n"  # an SSE comment: clients skip it


class Routes(Protocol):
    """What a front needs of the routes (``gateway.http.openai_routes.OpenAIRoutes``)."""

    @property
    def gw(self) -> Gateway:
        """The gateway's state (its registry resolves the model)."""

    @property
    def observe(self) -> bool:
        """The metrics are on."""

    @property
    def usage_unasked(self) -> MutableSet[ModelSlot]:
        """The models whose streams carry their usage unasked (``learn_usage``)."""

    def upstream_request(
        self, slot: ModelSlot, endpoint: Endpoint, data: dict[str, Any], raw: bytes | None, strip_usage: bool
    ) -> OpenAIRequest: ...


class OpenAIFront:
    """OpenAI's own endpoints: the body is checked and passed on; the answer streams through as it comes (but
    for the usage event the gateway asked for, ``gateway.http.relay``)."""

    def __init__(self, routes: Routes, endpoint: Endpoint) -> None:
        self.routes = routes
        self.endpoint = endpoint
        self.model = ""
        self.slot: ModelSlot | None = None
        self.stream = False

    async def prepare(self, raw: bytes, started: float) -> Prepared:
        routes, endpoint = self.routes, self.endpoint
        data = decode(raw)
        slot = routes.gw.registry.resolve(data["model"])
        self.model, self.slot = slot.name, slot
        check_endpoint(slot, endpoint, data["model"])
        stream = self.stream = bool(data.get("stream"))
        strip_usage = (
            routes.observe
            and stream
            and endpoint != "embeddings"
            and slot not in routes.usage_unasked
            and ask_for_usage(data)
        )
        request = routes.upstream_request(slot, endpoint, data, raw, strip_usage)
        trace = Trace(slot.name, endpoint, started, _int(data.get("n"), 1), _max_tokens(data))
        return Prepared(slot, request, trace, strip_usage)

    async def relay(
        self, upstream: UpstreamResponse, send: Send, trace: Trace | None, strip_usage: bool
    ) -> None:
        try:
            await relay(upstream, send, trace, strip_usage)
        finally:  # also when the client left once it had ``[DONE]``: the stream was complete all the same
            # a 200 stream, not an error's body
            streamed = upstream.status == 200 and "content-length" not in upstream.headers
            if self.stream and streamed and trace is not None and trace.completed and self.slot is not None:
                got = trace.usage is not None
                learn_usage(self.routes.usage_unasked, self.slot, trace.timings, strip_usage, got)

    def error(self, err: GatewayError) -> Response:
        return error_response(err)

    def error_event(self, err: GatewayError) -> bytes:
        return sse_error_event(err)

    def keepalive(self) -> tuple[list[tuple[bytes, bytes]], bytes]:
        return SSE_HEADERS, KEEPALIVE


def check_endpoint(slot: ModelSlot, endpoint: Endpoint, name: str) -> None:
    """Refuse a request the model cannot serve before it costs a load or a queue place."""
    serves_embeddings = getattr(slot.manifest.backend, "embeddings", None)
    if serves_embeddings is not None and (endpoint == "embeddings") != serves_embeddings:
        what = "embeddings only" if serves_embeddings else "no embeddings"
        raise InvalidRequest(f"model '{name}' serves {what}; it cannot answer /v1/{endpoint}", param="model")


def learn_usage(unasked: MutableSet[T], model: T, timings: bool, asked: bool, got: bool) -> None:
    """What a completed stream of ``model`` showed: llama.cpp's ``timings`` (its usage need not be asked for
    from now on), or, not asked (``asked``: the gateway asked for the usage), no usage at all: ask again from
    the next stream on (a model whose replicas are not all llama.cpp servers; that one stream went
    uncounted). A client that asked itself leaves it as it was."""
    if timings:
        unasked.add(model)
    elif not asked and not got:
        unasked.discard(model)


class _Added(dict[str, Any]):
    """The ``stream_options`` the gateway put in a body that had none (``ask_for_usage``)."""


def ask_for_usage(data: dict[str, Any]) -> bool:
    """Ask the backend for the stream's usage (``stream_options.include_usage``) if the client did not; True
    when the gateway asked, so the usage event must be taken out again before the client sees it."""
    options = data.get("stream_options")
    if options is None and "stream_options" not in data:  # the usual case
        data["stream_options"] = _Added(include_usage=True)
        return True
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False
    data["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return True


def with_usage(raw: bytes, body: dict[str, Any]) -> bytes:
    """The client's bytes asking for usage too. When it sent no ``stream_options`` (the usual case; a key
    the gateway reads is never in a body twice, ``decode``), the option goes in front of its own bytes,
    which stay as they were: no search through them, no copy but one; otherwise the body is encoded again."""
    if type(body["stream_options"]) is _Added:
        start = 0 if raw[:1] == b"{" else raw.find(b"{")
        return b"".join((raw[: start + 1], INCLUDE_USAGE, memoryview(raw)[start + 1 :]))
    return json.dumps(body).encode()


INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _max_tokens(data: dict[str, Any]) -> int | None:
    value = data.get("max_completion_tokens", data.get("max_tokens"))
    return value if isinstance(value, int) and not isinstance(value, bool) else None
