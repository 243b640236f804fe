"""A lean HTTP/1.1 client for the proxy's hot path: a keep-alive pool per origin over asyncio protocols, with
llhttp (``httptools``, the parser uvicorn uses) reading the responses.

Why not aiohttp, which the gateway used first: under ``bench/proxy_overhead.py`` aiohttp's request machinery
(URL handling, header multidicts, timers, tracing, payload registry, stream readers) was ~40% of the gateway's
CPU per proxied request, more than the gateway's own work and uvicorn's together. A proxy needs little of it.

Deliberately small. HTTP/1.1 over TCP or TLS; one request per connection at a time; response bodies delimited
by Content-Length, chunked, or the connection's end; the body's bytes are handed over as they arrive, never
re-chunked or decompressed; reading pauses while the consumer lags (``HIGH_WATER``). No redirects, cookies,
proxies or request streaming: a proxy in front of OpenAI-compatible servers sends one small JSON body.

Every wait can have a deadline (the event loop's clock, ``loop.time()``): the connect, the response head
(``request(deadline=)``) and each wait for body bytes (``next_chunk(deadline=)``); past it, ``TimedOut``.
A response keeps one timer for all its waits and moves it lazily (it fires, finds the deadline moved on, and
sleeps again), so a stream that moves its deadline on every chunk does not create a timer per chunk.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import cast
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 256 * 1024  # buffered response bytes above which the connection stops reading
MAX_IDLE = 256  # idle connections kept per origin


class HttpClientError(Exception):
    pass


class ConnectFailed(HttpClientError):
    pass


class TimedOut(HttpClientError):
    """A deadline passed while waiting for the server (connect, response head, body bytes). The connection
    is dropped once the response is closed: whatever the server still sends is not wanted any more."""


class ConnectTimeout(ConnectFailed, TimedOut):
    pass


SLACK = 0.001  # a timer may fire this early (the loop's clock resolution); it still counts as on time


class BodyTooLarge(HttpClientError):
    """A body read whole was larger than the caller's limit."""


class Disconnected(HttpClientError):
    """The connection ended before the response did. ``stale`` when it was a reused keep-alive connection
    that ended before a single response byte: the server had closed it, and the request never ran."""

    def __init__(self, message: str, stale: bool = False) -> None:
        super().__init__(message)
        self.stale = stale


class Response:
    """A response whose body may still be arriving. ``close()`` when done: the connection goes back to the
    pool only if the body was read to its end; otherwise it is closed, which stops the upstream's work."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._error: HttpClientError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._watched: asyncio.Future[None] | None = None  # what the timer fails when the deadline passes
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # -- fed by the connection -------------------------------------------------------------------------
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def _finish(self, error: HttpClientError | None = None) -> None:
        if not self._complete and self._error is None:
            if error is None:
                self._complete = True
            else:
                self._error = error
        self._wake()

    # -- deadlines -------------------------------------------------------------------------------------
    async def _until(self, future: asyncio.Future[None], deadline: float | None) -> None:
        """Wait for ``future``; ``TimedOut`` if ``deadline`` (loop time) passes first."""
        if deadline is None:
            await future
            return
        self._watched, self._deadline = future, deadline
        if self._timer is None or self._timer_at > deadline:
            self._arm(deadline)
        try:
            await future
        finally:
            self._watched = None

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = self._loop.call_at(at, self._alarm), at

    def _alarm(self) -> None:
        self._timer = None
        watched = self._watched
        if watched is None or watched.done():
            return  # not waiting now: the next wait arms it again
        if self._loop.time() + SLACK < self._deadline:
            self._arm(self._deadline)  # the deadline moved on since the timer was set
        else:
            watched.set_exception(TimedOut("the deadline passed"))

    # -- read by the caller ----------------------------------------------------------------------------
    async def next_chunk(self, deadline: float | None = None) -> bytes:
        """The next piece of the body as it arrived; b"" at its end. Raises ``Disconnected``, or
        ``TimedOut`` when nothing arrived by ``deadline`` (loop time)."""
        while not self._chunks:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            await self._until(self._waiter, deadline)
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._buffered <= HIGH_WATER // 4:
            self._conn.resume_reading()
        return data

    async def read(self, deadline: float | None = None, limit: int | None = None) -> bytes:
        """The rest of the body, by ``deadline`` (loop time); ``BodyTooLarge`` past ``limit`` bytes."""
        parts = []
        size = 0
        while chunk := await self.next_chunk(deadline):
            size += len(chunk)
            if limit is not None and size > limit:
                raise BodyTooLarge(f"a body over {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    @property
    def complete(self) -> bool:
        return self._complete

    def close(self) -> None:
        """Idempotent, synchronous."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._conn.done(reusable=self._complete and not self._chunks)


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Client) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._response: Response | None = None
        self._headers_known: asyncio.Future[None] | None = None
        self._header_list: list[tuple[bytes, bytes]] = []
        self._got_bytes = False
        self._keep_alive = False
        self._paused = False
        self.lost = False
        self.uses = 0

    # -- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Disconnected(f"invalid HTTP response: {exc}"))
            self._abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        response = self._response
        if response is not None and not response.complete and self._headers_known is not None:
            if self._headers_known.done() and _close_delimited(response.headers):
                response._finish()  # a body delimited by the end of the connection
            else:
                self._fail(Disconnected(_lost_reason(exc), stale=self.uses > 1 and not self._got_bytes))
        self._pool._forget(self)

    # -- llhttp callbacks ------------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name, value))

    def on_headers_complete(self) -> None:
        response = self._response
        if response is None or self._headers_known is None:
            return
        response.status = self._parser.get_status_code()
        response.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self._header_list}
        if not self._headers_known.done():
            self._headers_known.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()
        if self._response is not None:
            self._response._finish()

    # -- used by the client and the response -----------------------------------------------------------
    def _fail(self, error: HttpClientError) -> None:
        if self._headers_known is not None and not self._headers_known.done():
            self._headers_known.set_exception(error)
        if self._response is not None:
            self._response._finish(error)

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def pause_reading(self) -> None:
        if not self._paused and self._transport is not None and not self.lost:
            self._paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self._transport is not None and not self.lost:
            self._paused = False
            self._transport.resume_reading()

    async def send(self, request: bytes, deadline: float | None = None) -> Response:
        assert self._transport is not None
        self.uses += 1
        self._response = response = Response(self)
        self._headers_known = headers_known = asyncio.get_running_loop().create_future()
        self._header_list = []
        self._got_bytes = False
        self._keep_alive = False
        self._transport.write(request)
        try:
            await response._until(headers_known, deadline)
        except BaseException:
            response.close()  # its timer
            self._abort()  # cancelled (the client went away), failed or late: this connection is done
            raise
        return response

    def done(self, reusable: bool) -> None:
        self._response = None
        if reusable and self._keep_alive and not self.lost and not self._paused:
            self._pool._idle_put(self)
        else:
            self._abort()


def _close_delimited(headers: dict[str, str]) -> bool:
    return "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "")


def _lost_reason(exc: Exception | None) -> str:
    return f"connection lost: {exc}" if exc else "the server closed the connection"


class Client:
    """Requests to one origin (scheme://host:port), over a pool of kept-alive connections."""

    def __init__(
        self, base_url: str, connect_timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.prefix = url.path.rstrip("/")
        self._ssl = (ssl_context or ssl.create_default_context()) if url.scheme == "https" else None
        default_port = self.port == (443 if url.scheme == "https" else 80)
        self._host_header = (url.netloc.rpartition("@")[2] if not default_port else self.host).encode()
        self._connect_timeout = connect_timeout
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._closed = False

    def _idle_put(self, conn: _Connection) -> None:
        if self._closed or len(self._idle) >= MAX_IDLE:
            conn._abort()
        else:
            self._idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    async def _connect(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None,
                )
        except TimeoutError as exc:
            raise ConnectTimeout(f"cannot connect to {self.host}:{self.port} within {timeout:.3g}s") from exc
        except OSError as exc:
            reason = str(exc) or type(exc).__name__
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {reason}") from exc
        self._open.add(conn)
        return conn

    def _request_bytes(self, method: str, path: str, headers: bytes, body: bytes) -> bytes:
        head = f"{method} {self.prefix}{path} HTTP/1.1\r\n".encode() + b"host: " + self._host_header
        head += b"\r\ncontent-length: %d\r\n" % len(body) + headers + b"\r\n"
        return head + body

    async def request(
        self,
        method: str,
        path: str,
        headers: bytes = b"",
        body: bytes = b"",
        fresh: bool = False,
        deadline: float | None = None,
        connect_timeout: float | None = None,
    ) -> Response:
        """Send a request; returns once the status and headers are known. ``headers`` are preformatted
        ``name: value\\r\\n`` lines. ``fresh`` uses a new connection (for the retry of a stale one).
        ``deadline`` (loop time) bounds the whole wait, a new connection included, which also has
        ``connect_timeout`` (default: the client's); past either, ``TimedOut``."""
        if self._closed:
            raise ConnectFailed("the client is closed")
        conn = None
        while self._idle and not fresh:
            candidate = self._idle.pop()
            if not candidate.lost:
                conn = candidate
                break
        if conn is None:
            timeout = self._connect_timeout if connect_timeout is None else connect_timeout
            if deadline is not None:
                timeout = min(timeout, deadline - asyncio.get_running_loop().time())
            conn = await self._connect(max(timeout, 0.0))
        return await conn.send(self._request_bytes(method, path, headers, body), deadline)

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._open):
            conn._abort()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run connection_lost
