"""Forwarding to an OpenAI-compatible HTTP server (llama-server, vLLM, a remote API): the one helper that
every HTTP backend shares.

The client is ``backends/upstream/client.py``, by measurement: httpx was out at once (a minimal Starlette
proxy did ~400-600 req/s with it against ~3,200 with aiohttp, ``../shared/ENVIRONMENT.md``), and aiohttp, the
gateway's first client, then cost more CPU per request than everything else in the gateway (bench/README.md).

- The request body is re-serialised only when the upstream knows the model under another name.
- The status and the first body chunk are read before the gateway answers, so a failure before the first byte
  is a proper error, and can be retried on another replica (``UpstreamUnavailable``).
- A request that dies on a kept-alive connection before any response byte (llama-server closes idle
  connections without saying so) is retried once on a fresh connection: nothing reached the client yet.
- The body is passed through as it arrives, never re-chunked. ``close()`` drops the connection,
  which makes llama-server stop generating for a client that went away.
- An upstream that fails mid-response gets an error event in the stream, and ``finished`` resolves ``False``
  so that the replica is ejected; the gateway's own ``close()`` (the client left) resolves it ``True``.
- Every wait has a deadline, from the request's ``timeouts``: the connect, the first byte (the head and the
  first body bytes, or a whole non-streamed body), each gap in the body, and the request's total. Missed
  before the first byte, it is a ``GatewayTimeout`` (retried elsewhere, else a 504); after it, an error
  event ends the stream, and a silent upstream (the idle deadline) is ejected like a broken one. The total
  running out mid-stream ejects no one: the replica was still sending.
- A 200 that cannot be an OpenAI answer (``backends/upstream/answer_shape.py``) is an upstream failure: before
  the first byte, retried elsewhere; a bad event mid-stream is not passed on, an error event ends the stream
  and the replica is ejected.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable

from backends.base import OpenAIRequest, Timeouts, UpstreamResponse
from backends.errors import GatewayError, GatewayTimeout, UpstreamError, UpstreamUnavailable, sse_error_event
from backends.upstream.answer_shape import EventShape, first_problem
from backends.upstream.client import (
    SLACK,
    BodyTooLarge,
    Client,
    ConnectTimeout,
    Disconnected,
    HttpClientError,
    Response,
    TimedOut,
)

PASS_HEADERS = ("content-type", "cache-control")

log = logging.getLogger(__name__)


class UpstreamHttpError(UpstreamError):
    """The upstream answered with an error status; it is passed on in the OpenAI shape, tagged upstream."""

    def __init__(self, status: int, message: str, param: str | None, code: str | None) -> None:
        super().__init__(message, param=param, code=code or "upstream_error")
        self.status = status


def _upstream_error(status: int, raw: bytes) -> UpstreamHttpError:
    message, param, code = raw.decode(errors="replace")[:2000] or f"upstream answered {status}", None, None
    try:
        err = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict):
        message = str(err.get("message") or message)
        param = err.get("param")
        code = str(err["code"]) if err.get("code") is not None else None
    elif isinstance(err, str):
        message = err
    return UpstreamHttpError(status, message, param, code)


class HttpUpstream:
    """One upstream base URL with its own connection pool. Not a backend by itself: backends own one."""

    def __init__(self, base_url: str, api_key: str | None = None, upstream_model: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.upstream_model = upstream_model
        self.headers = b"content-type: application/json\r\n"
        if api_key:
            self.headers += f"authorization: Bearer {api_key}\r\n".encode("latin-1")
        self._client: Client | None = None

    def open(self) -> None:
        if self._client is None:
            self._client = Client(self.base_url)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def get(self, path: str, timeout: float) -> int:
        """Status of a GET (health probes); 0 when unreachable, slower than ``timeout``, or closed by a
        restart under a concurrent probe. Never raises."""
        if self._client is None:
            return 0
        try:
            async with asyncio.timeout(timeout):
                resp = await self._client.request("GET", path, self.headers)
                try:
                    await resp.read()
                finally:
                    resp.close()
                return resp.status
        except (HttpClientError, TimeoutError, OSError):
            return 0

    def _payload(self, request: OpenAIRequest) -> bytes:
        if self.upstream_model:
            return json.dumps({**request.body, "model": self.upstream_model}).encode()
        return request.raw if request.raw is not None else json.dumps(request.body).encode()

    async def _send(self, client: Client, path: str, data: bytes, t: Timeouts, by: float) -> Response:
        try:
            return await client.request(
                "POST", path, self.headers, data, deadline=by, connect_timeout=t.connect
            )
        except Disconnected as exc:
            if not exc.stale:
                raise
            # A pooled connection the upstream had closed (llama-server does, silently): the request never
            # ran, so once more, on a new connection.
            return await client.request(
                "POST", path, self.headers, data, fresh=True, deadline=by, connect_timeout=t.connect
            )

    async def forward(self, request: OpenAIRequest) -> UpstreamResponse:
        client = self._client
        if client is None:
            raise UpstreamUnavailable(f"upstream {self.base_url} is not running")
        t, now = request.timeouts, asyncio.get_running_loop().time()
        end = request.deadline if request.deadline is not None else now + t.total
        first_by = min(now + t.first_byte, end)
        try:
            resp = await self._send(client, f"/v1/{request.endpoint}", self._payload(request), t, first_by)
        except TimedOut as exc:
            raise GatewayTimeout(
                f"{exc} (timeouts.connect)"
                if isinstance(exc, ConnectTimeout)
                else _late_message(self.base_url, t, first_by == end)
            ) from exc
        except HttpClientError as exc:
            raise UpstreamUnavailable(f"cannot reach {self.base_url}: {exc}") from exc
        try:
            if resp.status >= 400:
                raw = await resp.read(first_by, ERROR_BODY_LIMIT)
                resp.close()
                if resp.status >= 500:
                    raise UpstreamUnavailable(_upstream_error(resp.status, raw).message)
                raise _upstream_error(resp.status, raw)
            # A non-streamed answer is small and complete: read it whole and pass it on with its length.
            first = await (
                resp.next_chunk(first_by) if request.stream else resp.read(first_by, request.max_body)
            )
            shape = EventShape() if request.stream else None
            problem = first_problem(first, request.stream) or (shape.check(first) if shape else None)
            if problem is not None:  # nothing has reached the client: another replica may answer
                resp.close()
                raise UpstreamUnavailable(f"{self.base_url} answered 200 with {problem}")
        except TimedOut as exc:
            resp.close()
            raise GatewayTimeout(_late_message(self.base_url, t, first_by == end)) from exc
        except BodyTooLarge as exc:  # the answer, not the replica, is at fault: no retry, no ejection
            resp.close()
            log.warning("%s answered with %s", self.base_url, exc)
            raise UpstreamError(f"the upstream answered {exc} (GATEWAY_MAX_UPSTREAM_BODY_BYTES)") from exc
        except HttpClientError as exc:
            resp.close()
            raise UpstreamUnavailable(f"{self.base_url} failed before answering: {exc}") from exc
        except BaseException:
            resp.close()
            raise
        finished: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def done(ok: bool) -> None:
            resp.close()
            if not finished.done():  # the first end wins: a close by the gateway is never a failure
                finished.set_result(ok)

        def close() -> None:
            done(True)

        headers = {k: resp.headers[k] for k in PASS_HEADERS if k in resp.headers}
        if request.stream:
            headers["x-accel-buffering"] = "no"
        else:
            headers["content-length"] = str(len(first))
        body = _body(first, resp, shape, done, t.idle, end)
        return UpstreamResponse(resp.status, headers, body, close, finished)


ERROR_BODY_LIMIT = 1 << 20  # an error body is a message; more is not one


def _late_message(url: str, t: Timeouts, total: bool) -> str:
    if total:
        return f"{url} did not answer within the request's total deadline ({t.total:g}s, timeouts.total)"
    return f"{url} sent no response within {t.first_byte:g}s (timeouts.first_byte)"


async def _body(
    first: bytes,
    resp: Response,
    shape: EventShape | None,
    end: Callable[[bool], None],
    idle: float,
    by: float,
) -> AsyncIterator[bytes]:
    """The body as it arrives, each gap at most ``idle`` and all of it by ``by`` (loop time); a stream's
    events are checked by ``shape`` (None: not a stream), and one that cannot be an OpenAI event ends it."""
    ok = True
    stream = shape is not None
    clock = asyncio.get_running_loop().time
    try:
        if first:
            yield first
        while True:
            now = clock()
            if now >= by and not resp.complete:
                raise TimedOut("the request's total deadline passed")
            chunk = await resp.next_chunk(min(now + idle, by))
            if not chunk:
                break
            if shape is not None and (problem := shape.check(chunk)) is not None:
                ok = False  # before the yield below, which may never resume
                yield sse_error_event(UpstreamError(f"the upstream sent {problem} mid-stream"))
                return
            yield chunk
    except HttpClientError as exc:
        # Bytes already reached the client: nothing can be retried. Say what happened, in the stream.
        err: GatewayError = UpstreamError(f"the upstream failed mid-response: {exc}")
        if isinstance(exc, TimedOut):
            total = clock() + SLACK >= by
            # A silent upstream is ejected like a broken one; one still sending when the request's total
            # deadline came was doing its part.
            err = GatewayTimeout(
                "the request's total deadline passed mid-response (timeouts.total)"
                if total
                else f"the upstream sent nothing for {idle:g}s mid-response (timeouts.idle)"
            )
            ok = total  # before the yield below, which may never resume (the client may be gone too)
        else:
            ok = False
        if stream:
            yield sse_error_event(err)
    finally:
        end(ok)
