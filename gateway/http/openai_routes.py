"""The ``/v1/*`` handlers: read the body, let the API's front prepare it (``gateway.http.openai_front``: the
model resolved, the body checked), take a lease, dispatch (``gateway.routing.dispatch``: pick a replica,
forward, retry before the first byte), stream back.

The POST handlers are plain ASGI endpoints rather than request/response functions, so that one disconnect
watcher covers the request from the moment its body is read until its last byte is sent. ``HotPath`` serves
them in front of Starlette, and they render their own errors: the router, the middleware stack and the
Request object cost a third of the gateway's time per proxied request (bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Hashable
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from backends.base import Endpoint, OpenAIRequest
from backends.errors import (
    GatewayError,
    GatewayTimeout,
    QueueFull,
    UpstreamError,
)
from gateway.api.validation import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    _Body,
    check_passthrough,
    validate,
)
from gateway.control.state import Gateway
from gateway.http.edge import (
    Front,
    Handler,
    _Asgi,
    _read_body,
    _Send,
)
from gateway.http.errors import internal_error
from gateway.http.key_limits import KeyLimits
from gateway.http.openai_front import OpenAIFront, with_usage
from gateway.http.relay import CancelOnDisconnect, ClientGone, SlowClient, Watchdog
from gateway.http.server_limits import ABORT
from gateway.observability.metrics import Trace
from gateway.routing.dispatch import affinity_key, dispatch, upstream_timeouts
from gateway.routing.fair_queue import Priority
from gateway.scheduling.lifecycle import Lease, ModelSlot, State

log = logging.getLogger(__name__)

SCHEMAS: dict[Endpoint, type[_Body]] = {
    "chat/completions": ChatRequest,
    "completions": CompletionRequest,
    "embeddings": EmbeddingRequest,
}

TOTAL_SLACK = 1.0  # after an HTTP upstream's own total deadline, which ends its stream itself
CLIENT_GONE = 499  # nginx's status for a client that closed the connection before the response ended
SLOW_CLIENT = 408  # a client that stopped reading its answer (counted so in the metrics; it is not sent)


class OpenAIRoutes:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.observe = gw.settings.metrics
        self.created = int(time.time())
        self.max_body = int(gw.settings.max_upstream_body_bytes)
        settings = gw.settings
        self.keys = KeyLimits(settings.key_max_concurrency, settings.key_max_queued)
        # Models whose streams end with llama.cpp's ``timings`` (its server, in a process, a container or
        # behind a remote URL): their usage is read from those, and ``include_usage`` is not asked for, which
        # spares each stream an event to read and take out again (bench/README.md, issue 16).
        self.usage_unasked = gw.usage_unasked

    def endpoints(self) -> dict[str, Handler]:
        """The POST endpoints, by path: plain ASGI handlers."""

        def post(endpoint: Endpoint) -> Handler:
            async def handler(scope: Scope, receive: Receive, send: Send) -> None:
                await self._forward(scope, receive, send, endpoint)

            return handler

        return {f"/v1/{e}": post(e) for e in SCHEMAS}

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{name:path}", self.model, methods=["GET"]),
            *(Route(path, _Asgi(h), methods=["POST"]) for path, h in self.endpoints().items()),
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

    def _anthropic_card(self, name: str) -> dict[str, object]:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))
        return {"type": "model", "id": name, "display_name": name, "created_at": created}

    async def models(self, request: Request) -> Response:
        names = list(self.gw.registry.names)
        if "anthropic-version" in request.headers:  # Anthropic's SDKs send it: their list shape
            cards = [self._anthropic_card(n) for n in names]
            first, last = (names[0], names[-1]) if names else (None, None)
            return JSONResponse({"data": cards, "has_more": False, "first_id": first, "last_id": last})
        return JSONResponse({"object": "list", "data": [self._model_card(n) for n in names]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.gw.registry.resolve(name)
        if "anthropic-version" in request.headers:
            return JSONResponse(self._anthropic_card(name))
        return JSONResponse(self._model_card(name))

    async def _forward(self, scope: Scope, receive: Receive, send: Send, endpoint: Endpoint) -> None:
        await self.handle(scope, receive, send, OpenAIFront(self, endpoint))

    def upstream_request(
        self, slot: ModelSlot, endpoint: Endpoint, data: dict[str, Any], raw: bytes | None, strip_usage: bool
    ) -> OpenAIRequest:
        """The request a replica gets: validated whole where the gateway is the engine's OpenAI server, else
        checked for what the gateway reads and passed on as the client's bytes (``raw``; None: encoded)."""
        stream = bool(data.get("stream"))
        if slot.manifest.backend.gateway_validates:
            return OpenAIRequest(endpoint, validate(data, SCHEMAS[endpoint]), stream, max_body=self.max_body)
        body = check_passthrough(data, endpoint)
        if raw is not None and strip_usage:
            raw = with_usage(raw, body)
        raw = raw if raw is not None else json.dumps(body).encode()
        return OpenAIRequest(endpoint, body, stream, raw, max_body=self.max_body)

    async def handle(self, scope: Scope, receive: Receive, send: Send, front: Front) -> None:
        """One request of an API family (``front``): read, prepare, serve, relay; errors in its shape."""
        started = time.perf_counter()
        response = _Send(send)
        model = ""
        status = 500
        trace: Trace | None = None
        who = self._who(scope)
        key = self.keys.capped(who[0])
        counted = False
        try:
            if key is not None:
                self.keys.begin(key)
                counted = True
            raw = await _read_body(scope, receive, self.gw.settings.max_body_bytes)
            prepared = await front.prepare(raw, started)
            model, trace = prepared.slot.name, prepared.trace
            async with CancelOnDisconnect(receive):
                await self._serve(
                    prepared.slot, prepared.request, Headers(scope=scope), response, trace,
                    prepared.strip_usage, front, who, _peer(scope),
                )  # fmt: skip
            status = trace.status
        except ClientGone:  # gone before the end, or just after it (then the answer was whole)
            status = trace.status if trace is not None and trace.completed else CLIENT_GONE
        except SlowClient as exc:  # its upstream request is cancelled and its slot free; cut the connection
            log.warning("%s: %s; connection cut", scope["path"], exc)
            status = SLOW_CLIENT
            abort = scope.get("extensions", {}).get(ABORT)
            if abort is None:
                raise  # uvicorn closes the connection of an app that fails mid-response
            abort()
        except GatewayError as err:
            status = err.status
            if isinstance(err, QueueFull):
                self.gw.metrics.rejected(model)
            if response.early and not response.answered:  # only keep-alives went out: end with the error
                with contextlib.suppress(OSError):
                    await response.end_with(front.error_event(err))
                return
            if response.started:
                raise
            await front.error(err)(scope, receive, send)
        except Exception:
            if response.started:
                raise
            await front.error(internal_error(scope["path"]))(scope, receive, send)
        finally:
            if counted and key is not None:
                self.keys.end(key)
            if self.observe:
                if trace is None:  # refused before it had a model's trace: counted, and in the activity
                    trace = Trace(model or front.model, front.endpoint, started)
                trace.status, (trace.key, trace.priority) = status, who
                self.gw.metrics.finished(trace, time.perf_counter())

    async def _serve(
        self,
        slot: ModelSlot,
        request: OpenAIRequest,
        headers: Headers,
        send: _Send,
        trace: Trace,
        strip_usage: bool,
        front: Front,
        who: tuple[str, Priority] = ("", "interactive"),
        peer: Hashable | None = None,
    ) -> None:
        """``peer``: the client's connection (host, port), where known."""
        gw = self.gw
        place = self.keys.queue(who[0], slot, who[1])  # the key's waiting requests, until a replica takes it
        try:
            lease = await self._acquire(slot, request.stream, send, front, who[1], peer)
        except BaseException:
            if place is not None:
                place.leave()
            raise
        slot = lease.slot  # a reload may have put a new version in its place while the request waited
        key = affinity_key(slot.manifest.affinity, request.body, headers)

        def scheduled() -> None:
            trace.scheduled = time.perf_counter()
            if place is not None:
                place.leave()

        timeouts = upstream_timeouts(slot.manifest.backend, gw.settings)
        # The upstream's own check of the total deadline (HTTP kinds) comes first; this timer is the backstop.
        total_by = asyncio.get_running_loop().time() + timeouts.total + TOTAL_SLACK
        try:
            replica, upstream = await dispatch(
                lease.pool,
                request,
                key,
                gw.settings.queue_timeout,
                timeouts=timeouts,
                scheduled=scheduled,
                upstream_error=self._upstream_error,
                client=who[0],
                priority=who[1],
            )
        except BaseException:
            lease.release()
            if place is not None:
                place.leave()
            raise
        upstream.finished.add_done_callback(lambda _: lease.release())  # after dispatch's own (the replica)
        if send.early and upstream.status != 200:  # the stream has started: the failure goes in it
            upstream.close()
            raise UpstreamError(f"model '{slot.name}' answered {upstream.status}")
        trace.status = upstream.status
        trace.engine = str(replica.index)
        watch = Watchdog(gw.settings.send_timeout, total_by)
        try:
            await front.relay(upstream, watch.guard(send), trace if self.observe else None, strip_usage)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if watch.fired is None or task is None:
                raise
            task.uncancel()  # the watchdog's cancellation, turned into SlowClient or a timeout
            if watch.fired == "send":
                raise SlowClient(f"the client took over {watch.timeout:g}s to accept a piece") from None
            late = GatewayTimeout(
                f"the request's total deadline passed ({timeouts.total:g}s, timeouts.total)"
            )
            if not send.started:
                raise late from None
            trace.status = late.status
            with contextlib.suppress(TimeoutError, OSError):  # a client that cannot take it is gone anyway
                async with asyncio.timeout(1.0):
                    await send(
                        {"type": "http.response.body", "body": front.error_event(late), "more_body": True}
                    )
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watch.stop()
            upstream.close()
        if trace.status >= 500 and trace.first:
            self._upstream_error(slot.name, "mid_stream")

    def _who(self, scope: Scope) -> tuple[str, Priority]:
        """The API key's name and the request's priority class: the key's (``key_priorities``), lowered to
        batch by ``X-Priority: batch``; a header can never raise it."""
        name = str(scope.get("state", {}).get("key_name", ""))
        priority: Priority = self.gw.settings.key_priorities.get(name, "interactive")
        for header, value in scope["headers"]:
            if header == b"x-priority" and value.strip().lower() == b"batch":
                priority = "batch"
        return name, priority

    async def _acquire(
        self,
        slot: ModelSlot,
        stream: bool,
        send: _Send,
        front: Front,
        priority: Priority = "interactive",
        peer: Hashable | None = None,
    ) -> Lease:
        """A lease on ``slot`` (``Scheduler.acquire``). A streaming request that waits longer than the
        keep-alive interval for its model (a load, a swap) gets its stream started and a keep-alive line at
        each interval, so that proxies in between do not time it out; its first answer bytes follow once it
        is admitted. A quicker wait keeps the plain status codes (a 503 is a 503)."""
        acquiring = self.gw.scheduler.acquire(slot, self.gw.settings.load_timeout, priority, peer)
        interval = self.gw.settings.stream_keepalive
        if not stream or not interval or slot.state is State.READY:
            return await acquiring
        task = asyncio.ensure_future(acquiring)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=interval)
                if done:
                    return task.result()
                headers, line = front.keepalive()
                await send.keepalive(headers, line)
        finally:
            task.cancel()  # when this request was cancelled (its client left): its wait ends too

    def _upstream_error(self, model: str, kind: str) -> None:
        if self.observe:
            self.gw.metrics.upstream_error(model, kind)


def _peer(scope: Scope) -> Hashable | None:
    """The client's connection, (host, port), as the server gives it (None where it does not): a client
    that switches models is known by it (``Scheduler.acquire``)."""
    client = scope.get("client")
    return tuple(client) if client else None
