"""Forwarding to an OpenAI-compatible HTTP server (llama-server, vLLM, a remote API): the one helper that
every HTTP backend shares.

The client is ``backends/http1.py``, by measurement: httpx was out at once (a minimal Starlette proxy did
~400-600 req/s with it against ~3,200 with aiohttp, ``../shared/ENVIRONMENT.md``), and aiohttp, the gateway's
first client, then cost more CPU per request than everything else in the gateway (bench/README.md).

- The request body is re-serialised only when the upstream knows the model under another name.
- The status and the first body chunk are read before the gateway answers, so a failure before the first byte
  is a proper error, and can be retried on another replica (``UpstreamUnavailable``).
- A request that dies on a kept-alive connection before any response byte (llama-server closes idle
  connections without saying so) is retried once on a fresh connection: nothing reached the client yet.
- The body is passed through as it arrives, never re-chunked. ``close()`` drops the connection,
  which makes llama-server stop generating for a client that went away.
- An upstream that fails mid-response gets an error event in the stream, and ``finished`` resolves ``False``
  so that the replica is ejected; the gateway's own ``close()`` (the client left) resolves it ``True``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

from backends.base import OpenAIRequest, UpstreamResponse
from backends.errors import GatewayError, UpstreamError, UpstreamUnavailable, sse_error_event
from backends.http1 import Client, Disconnected, HttpClientError, Response

PASS_HEADERS = ("content-type", "cache-control")


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

    async def _send(self, client: Client, path: str, data: bytes) -> Response:
        try:
            return await client.request("POST", path, self.headers, data)
        except Disconnected as exc:
            if not exc.stale:
                raise
            # A pooled connection the upstream had closed (llama-server does, silently): the request never
            # ran, so once more, on a new connection.
            return await client.request("POST", path, self.headers, data, fresh=True)

    async def forward(self, request: OpenAIRequest) -> UpstreamResponse:
        client = self._client
        if client is None:
            raise UpstreamUnavailable(f"upstream {self.base_url} is not running")
        try:
            resp = await self._send(client, f"/v1/{request.endpoint}", self._payload(request))
        except HttpClientError as exc:
            raise UpstreamUnavailable(f"cannot reach {self.base_url}: {exc}") from exc
        try:
            if resp.status >= 400:
                raw = await resp.read()
                resp.close()
                if resp.status >= 500:
                    raise UpstreamUnavailable(_upstream_error(resp.status, raw).message)
                raise _upstream_error(resp.status, raw)
            # A non-streamed answer is small and complete: read it whole and pass it on with its length.
            first = await (resp.next_chunk() if request.stream else resp.read())
        except HttpClientError as exc:
            resp.close()
            raise UpstreamUnavailable(f"{self.base_url} failed before answering: {exc}") from exc
        except BaseException:
            resp.close()
            raise
        finished: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def end(ok: bool) -> None:
            resp.close()
            if not finished.done():  # the first end wins: a close by the gateway is never a failure
                finished.set_result(ok)

        def close() -> None:
            end(True)

        headers = {k: resp.headers[k] for k in PASS_HEADERS if k in resp.headers}
        if request.stream:
            headers["x-accel-buffering"] = "no"
        else:
            headers["content-length"] = str(len(first))
        return UpstreamResponse(
            resp.status, headers, _body(first, resp, request.stream, end), close, finished
        )


async def _body(
    first: bytes, resp: Response, stream: bool, end: Callable[[bool], None]
) -> AsyncIterator[bytes]:
    ok = True
    try:
        if first:
            yield first
        while chunk := await resp.next_chunk():
            yield chunk
    except HttpClientError as exc:
        ok = False  # before the yield below, which may never resume (the client may be gone too)
        # Bytes already reached the client: nothing can be retried. Say what happened, in the stream.
        if stream:
            err: GatewayError = UpstreamError(f"the upstream failed mid-response: {exc}")
            yield sse_error_event(err)
    finally:
        end(ok)
