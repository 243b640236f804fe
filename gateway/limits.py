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
- **Connections** (``max_connections``): uvicorn's ``limit_concurrency``. A request on a connection opened
  while that many others are open (idle keep-alive ones count) is answered ``503 Service Unavailable`` (plain
  text, uvicorn's own) and its connection closed. The connection is still accepted: the limit bounds the
  work, and the file descriptors only as far as refused clients go away.
- **Keep-alive** (``keep_alive_timeout``) and **graceful shutdown** (``graceful_shutdown_timeout``): uvicorn's
  ``timeout_keep_alive`` and ``timeout_graceful_shutdown``.
"""

from __future__ import annotations

import json
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.config import Settings
from gateway.errors import HeadersTooLarge


def server_options(settings: Settings) -> dict[str, Any]:
    """``uvicorn.run``'s keyword arguments for the limits and timeouts in ``settings``."""
    return {
        "http": bounded_http(int(settings.max_header_bytes)),
        # uvicorn refuses once the open connections, the new one included, reach limit_concurrency
        "limit_concurrency": settings.max_connections + 1,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "timeout_graceful_shutdown": settings.graceful_shutdown_timeout,
    }


def bounded_http(max_head: int) -> type[BoundedHttpTools]:
    """uvicorn's ``http`` protocol class, refusing request heads over ``max_head`` bytes."""
    return cast(type[BoundedHttpTools], type("BoundedHttpTools", (BoundedHttpTools,), {"max_head": max_head}))


class _HeadTooLarge(Exception):
    pass


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on each request's head (``bounded_http`` sets it)."""

    max_head = 64 * 2**10

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between a message's end and the end of the next one's headers
        self._head_read = 0  # bytes read while in a head: bounds a head that never ends
        self._refused = False

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
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True

    def send_400_response(self, msg: str) -> None:
        if self._refused:
            self._refuse()
        else:
            super().send_400_response(msg)

    def _refuse(self) -> None:
        err = HeadersTooLarge(
            f"the request's URL and headers are over this gateway's limit of {self.max_head} bytes "
            "(GATEWAY_MAX_HEADER_BYTES)"
        )
        body = json.dumps(err.body()).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\n"
            b"x-error-source: gateway\r\n"
            b"connection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()
