"""The one exception tree that both layers raise, and its OpenAI error bodies.

It lives below both ``backends/`` and ``gateway/``: backends raise these, the gateway raises them too, and the
HTTP edge (``gateway.http.errors.error_response``) is the only place that turns one into a response.
Everything that a client can be told about is a ``GatewayError``; code raises the most specific class::

    GatewayError                      500 server_error
    ├── InvalidRequest                400 invalid_request_error   (param names the offending field)
    ├── Unauthorized                  401 authentication_error
    ├── ModelNotFound                 404 model_not_found
    ├── PayloadTooLarge               413 request_too_large        (the body limit; the connection closes)
    ├── HeadersTooLarge               431 request_header_fields_too_large (sent by gateway.http.server_limits)
    ├── RequestTimeout                408 request_timeout          (too slow to arrive: server_limits)
    ├── QueueFull                     429 queue_full               (Retry-After)
    ├── ModelUnavailable              503 model_unavailable        (Retry-After; the reason says why)
    │   ├── LoadFailed                503 model_load_failed        (last_error of the load)
    │   └── InsufficientMemory        503 insufficient_memory      (what holds the memory)
    └── UpstreamError                 502 upstream_error           (source = "upstream")
        └── UpstreamUnavailable       502 upstream_unavailable     (before the first byte: retry elsewhere)
            └── GatewayTimeout        504 upstream_timeout         (no answer within a deadline: the same)

Every body carries ``source``: ``gateway`` when the gateway decided, ``upstream`` when an engine failed, so a
client can tell who failed.
"""

from __future__ import annotations

import json
from typing import Any, Literal

Source = Literal["gateway", "upstream"]


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = "internal_error"
    source: Source = "gateway"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
                "source": self.source,
            }
        }


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class PayloadTooLarge(GatewayError):
    """The request body is over ``GATEWAY_MAX_BODY_BYTES``; refused before it is buffered."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class HeadersTooLarge(GatewayError):
    """The request line and headers are over ``GATEWAY_MAX_HEADER_BYTES``; refused before they are parsed."""

    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"


class RequestTimeout(GatewayError):
    """A request's head or body did not arrive within its deadline (``GATEWAY_REQUEST_HEAD_TIMEOUT``,
    ``GATEWAY_REQUEST_BODY_TIMEOUT``); the connection closes."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"The model '{name}' does not exist. GET /v1/models lists the models served here.", param="model"
        )


class NotFound(GatewayError):
    """Something other than a model that the request names is not there (a stored response)."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class QueueFull(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class ModelUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "model_unavailable"


class LoadFailed(ModelUnavailable):
    code = "model_load_failed"


class InsufficientMemory(ModelUnavailable):
    code = "insufficient_memory"


class UpstreamError(GatewayError):
    status = 502
    type = "server_error"
    code = "upstream_error"
    source: Source = "upstream"


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached, could not start, or failed before answering; another replica may
    serve the request."""

    code = "upstream_unavailable"


class GatewayTimeout(UpstreamUnavailable):
    """The upstream did not connect, answer or finish within one of its deadlines (the model's ``timeouts``).
    Before the first byte it is retried on another replica like any ``UpstreamUnavailable``; after it, it
    ends the stream as an error event."""

    status = 504
    code = "upstream_timeout"


def sse_error_event(err: GatewayError) -> bytes:
    """An error sent inside an already-started stream; the OpenAI SDK raises it as an APIError."""
    return b"data: " + json.dumps(err.body()).encode() + b"\n\n"
