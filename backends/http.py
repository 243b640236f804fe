"""Forwarding to an OpenAI-compatible HTTP server (llama-server, vLLM, a remote API): the one helper that
every HTTP backend shares.

aiohttp is the client on this path, by measurement: a minimal Starlette proxy did ~3,200 req/s with aiohttp
against ~400-600 with httpx on this machine (``../shared/ENVIRONMENT.md``), and the gateway's overhead target
needs the former.

- The request body is re-serialised only when the upstream knows the model under another name.
- The status and the first body chunk are read before the gateway answers, so a failure before the first byte
  is a proper error, and can be retried on another replica (``UpstreamUnavailable``).
- A request that dies on a kept-alive connection before any response byte (llama-server closes idle
  connections without saying so) is retried once on a fresh connection: nothing reached the client yet.
- The body is passed through as it arrives (``iter_any``), never re-chunked. ``close()`` drops the connection,
  which makes llama-server stop generating for a client that went away.
- An upstream that fails mid-response gets an error event in the stream, and ``finished`` resolves ``False``
  so that the replica is ejected; the gateway's own ``close()`` (the client left) resolves it ``True``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from backends.base import OpenAIRequest, UpstreamResponse
from gateway.errors import GatewayError, UpstreamError, sse_error_event

PASS_HEADERS = ("content-type", "cache-control")


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached or failed before answering; another replica may serve the request."""

    code = "upstream_unavailable"


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
        self.headers = {"content-type": "application/json"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None  # never reuses a connection: for the one retry

    def open(self) -> None:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                timeout=timeout,
                auto_decompress=False,
            )
            self._fresh = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
                timeout=timeout,
                auto_decompress=False,
            )

    async def close(self) -> None:
        sessions = (self._session, self._fresh)
        self._session = self._fresh = None
        for session in sessions:
            if session is not None:
                await session.close()

    async def get(self, path: str, timeout: float) -> int:
        """Status of a GET (health probes); 0 when unreachable. Never raises."""
        if self._session is None or self._session.closed:  # closed by a restart under a concurrent probe
            return 0
        try:
            async with self._session.get(
                self.base_url + path, headers=self.headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return 0

    def _payload(self, request: OpenAIRequest) -> bytes:
        body: dict[str, Any] = request.body
        if self.upstream_model:
            body = {**body, "model": self.upstream_model}
        return json.dumps(body).encode()

    async def forward(self, request: OpenAIRequest) -> UpstreamResponse:
        if self._session is None or self._fresh is None:
            raise UpstreamUnavailable(f"upstream {self.base_url} is not running")
        url = f"{self.base_url}/v1/{request.endpoint}"
        data = self._payload(request)
        try:
            resp = await self._session.post(url, data=data, headers=self.headers)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            # Most likely a pooled connection the upstream had closed: once more, on a new connection.
            try:
                resp = await self._fresh.post(url, data=data, headers=self.headers)
            except (aiohttp.ClientError, OSError) as exc:
                raise UpstreamUnavailable(f"cannot reach {self.base_url}: {exc}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(f"cannot reach {self.base_url}: {exc}") from exc
        try:
            if resp.status >= 400:
                raw = await resp.read()
                resp.release()
                if resp.status >= 500:
                    raise UpstreamUnavailable(_upstream_error(resp.status, raw).message)
                raise _upstream_error(resp.status, raw)
            # A non-streamed answer is small and complete: read it whole and pass it on with its length.
            first = await (resp.content.readany() if request.stream else resp.read())
        except (aiohttp.ClientError, OSError) as exc:
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
    first: bytes, resp: aiohttp.ClientResponse, stream: bool, end: Callable[[bool], None]
) -> AsyncIterator[bytes]:
    ok = True
    try:
        if first:
            yield first
        async for chunk in resp.content.iter_any():
            yield chunk
    except (aiohttp.ClientError, OSError) as exc:
        ok = False  # before the yield below, which may never resume (the client may be gone too)
        # Bytes already reached the client: nothing can be retried. Say what happened, in the stream.
        if stream:
            err: GatewayError = UpstreamError(f"the upstream failed mid-response: {exc}")
            yield sse_error_event(err)
    finally:
        end(ok)
