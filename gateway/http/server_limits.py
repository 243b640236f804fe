"""What one client may cost the server: the bounds that ``llm-gateway serve`` gives uvicorn.

The request body's bound (``max_body_bytes``) is kept where the body is read (``openai_api._read_body``: a
413 before it is buffered). This module owns the rest, all from ``Settings``:

- **Request head** (``max_header_bytes``): uvicorn's fast parser, httptools (llhttp), has no limit of its own
  (measured: a 10 MB header was accepted), and h11's ``h11_max_incomplete_event_size`` only bounds a head
  that is still incomplete after one read, on the slower pure-Python parser. So the gateway runs uvicorn's
  httptools protocol with a bound added (``BoundedHttpTools``): a complete head whose URL and header names
  and values come to more than the limit is a 431 in the OpenAI error shape, and so is a head still arriving
  after twice the limit has been read (the raw lines carry separators too), so that no more than that, plus
  one socket read, is ever buffered.
- **Time to send a request** (``request_head_timeout``, ``request_body_timeout``): uvicorn arms its keep-alive
  timeout only after a response and has no deadline on reading a request, so a connection that sends nothing,
  or a head or body a byte at a time (slow loris), was held for as long as its client liked, and
  ``max_connections`` of them made uvicorn refuse everyone else. ``BoundedHttpTools`` gives a new
  connection ``request_head_timeout`` to send a whole head (a head begun on a kept-alive connection gets as
  long from its first byte; idle time between requests stays the keep-alive timeout's), then
  ``request_body_timeout`` for the whole body. Past either, a connection that had sent part of a request
  gets a 408 in the OpenAI error shape, one that had sent nothing is just closed (as nginx and Go's server
  do), and a handler still reading that body sees the client gone. The deadlines are totals, not gaps
  between reads, so a byte at a time cannot extend them. Nothing runs once a request has arrived: a long
  stream is bounded by the upstream timeouts instead.
- **Connections** (``max_connections``): uvicorn's ``limit_concurrency``. A request on a connection opened
  while that many others are open (idle keep-alive ones count) is answered ``503 Service Unavailable`` (plain
  text, uvicorn's own) and its connection closed. The connection is still accepted: the limit bounds the
  work, and the file descriptors only as far as refused clients go away.
- **Keep-alive** (``keep_alive_timeout``) and **graceful shutdown** (``graceful_shutdown_timeout``): uvicorn's
  ``timeout_keep_alive`` and ``timeout_graceful_shutdown``.
"""

from __future__ import annotations

import json
import socket
import struct
from asyncio import TimerHandle, Transport
from http import HTTPStatus
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from backends.errors import GatewayError, HeadersTooLarge, RequestTimeout
from gateway.config.settings import Settings


def server_options(settings: Settings) -> dict[str, Any]:
    """``uvicorn.run``'s keyword arguments for the limits and timeouts in ``settings``."""
    return {
        "http": bounded_http(
            int(settings.max_header_bytes), settings.request_head_timeout, settings.request_body_timeout
        ),
        # uvicorn refuses once the open connections, the new one included, reach limit_concurrency
        "limit_concurrency": settings.max_connections + 1,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "timeout_graceful_shutdown": settings.graceful_shutdown_timeout,
    }


def bounded_http(max_head: int, head_timeout: float, body_timeout: float) -> type[BoundedHttpTools]:
    """uvicorn's ``http`` protocol class, refusing request heads over ``max_head`` bytes and requests whose
    head or body takes longer than its timeout to arrive."""
    bounds = {"max_head": max_head, "head_timeout": head_timeout, "body_timeout": body_timeout}
    return cast(type[BoundedHttpTools], type("BoundedHttpTools", (BoundedHttpTools,), bounds))


ABORT = "gateway.abort"  # the ASGI scope extension: a callable that resets the connection


class _HeadTooLarge(Exception):
    pass


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on each request's head, and deadlines on the time a request
    takes to arrive (``bounded_http`` sets them)."""

    max_head = 64 * 2**10
    head_timeout = 10.0
    body_timeout = 120.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between a message's end and the end of the next one's headers
        self._head_read = 0  # bytes read while in a head: bounds a head that never ends
        self._refused = False
        self._arriving = False  # a request has begun and has not yet wholly arrived
        self._deadline: float | None = None  # by when the request arriving now must have arrived (loop time)
        self._read_timer: TimerHandle | None = None

    # The deadlines. One float per connection, moved at each step of a request's arrival, and one timer that
    # is only re-created when it fires early or too late: a request costs a few assignments, not a timer.

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._set_deadline(self.head_timeout)  # a connection that never sends a request

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # How the app cuts a connection whose client stopped reading (``openai_routes``, SlowClient):
        # uvicorn's own close() would wait for the full write buffer to drain, which it never does.
        self.scope["extensions"] = {ABORT: self._abort}  # type: ignore[dict-item]
        self._arriving = True
        if self._deadline is None:  # a kept-alive connection's next request: its head from its first byte
            self._set_deadline(self.head_timeout)

    def _set_deadline(self, timeout: float) -> None:
        self._deadline = deadline = self.loop.time() + timeout
        timer = self._read_timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._read_timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._read_timer = None
        deadline = self._deadline
        if deadline is None:  # the request arrived in time
            return
        if self.loop.time() < deadline:  # moved on since the timer was set
            self._read_timer = self.loop.call_at(deadline, self._on_timer)
            return
        self._deadline = None
        self._too_slow()

    def _too_slow(self) -> None:
        if self.transport.is_closing():
            return
        cycle = self.cycle
        answering = cycle is not None and cycle.response_started and not cycle.response_complete
        if answering and self._in_head:
            # a pipelined request's head behind a response still being sent: its time starts after that one
            self._set_deadline(self.head_timeout)
            return
        if self._arriving and not answering:
            which = "head" if self._in_head else "body"
            timeout = self.head_timeout if self._in_head else self.body_timeout
            setting = f"GATEWAY_REQUEST_{which.upper()}_TIMEOUT"
            self._write_error(
                RequestTimeout(f"the request's {which} did not arrive within {timeout:g}s ({setting})")
            )
        if cycle is not None and not cycle.response_complete:
            # a handler still reading this body: it sees the client gone, and whatever it sends is dropped
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_read += len(data)
        super().data_received(data)
        if self._in_head and self._head_read > 2 * self.max_head and not self.transport.is_closing():
            self._refuse()

    def on_headers_complete(self) -> None:
        if len(self.url) + sum(len(name) + len(value) for name, value in self.headers) > self.max_head:
            # Raising stops the parser; uvicorn answers a parser error with send_400_response, below.
            self._refused = True
            raise _HeadTooLarge
        self._in_head = False
        self._head_read = 0
        self._deadline = self.loop.time() + self.body_timeout  # later than the head's: the timer moves lazily
        super().on_headers_complete()

    def _abort(self) -> None:
        """Reset the connection: what is still in the kernel's send buffer is dropped, not delivered (a plain
        close would deliver it first, to a client that does not read)."""
        if self.transport.is_closing():
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def on_message_complete(self) -> None:
        self._deadline = None
        self._arriving = False
        super().on_message_complete()
        self._in_head = True

    def send_400_response(self, msg: str) -> None:
        if self._refused:
            self._refuse()
        else:
            super().send_400_response(msg)

    def _refuse(self) -> None:
        self._deadline = None
        err = HeadersTooLarge(
            f"the request's URL and headers are over this gateway's limit of {self.max_head} bytes "
            "(GATEWAY_MAX_HEADER_BYTES)"
        )
        self._write_error(err)
        self.transport.close()

    def _write_error(self, err: GatewayError) -> None:
        """An OpenAI error response written straight to the socket, ahead of any ASGI handler, which has not
        started one (only called before a request has wholly arrived); the caller closes the connection."""
        body = json.dumps(err.body()).encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\n"
            b"x-error-source: gateway\r\n"
            b"connection: close\r\n\r\n%s"
            % (err.status, HTTPStatus(err.status).phrase.encode(), len(body), body)
        )
