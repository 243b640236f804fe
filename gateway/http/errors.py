"""The HTTP edge of the exception tree (``backends.errors``, which both layers share): an error to a response.

The tree is re-exported here so that gateway code imports errors from one place.
"""

from __future__ import annotations

import json
import logging
import math
import secrets

from starlette.responses import Response

from backends.errors import (
    GatewayError,
    HeadersTooLarge,
    InsufficientMemory,
    InvalidRequest,
    LoadFailed,
    ModelNotFound,
    ModelUnavailable,
    PayloadTooLarge,
    QueueFull,
    RequestTimeout,
    Source,
    Unauthorized,
    UpstreamError,
    UpstreamUnavailable,
    sse_error_event,
)
from gateway.api.anthropic import gateway_error_body

log = logging.getLogger("gateway.errors")

__all__ = [
    "GatewayError",
    "HeadersTooLarge",
    "InsufficientMemory",
    "InvalidRequest",
    "LoadFailed",
    "ModelNotFound",
    "ModelUnavailable",
    "PayloadTooLarge",
    "QueueFull",
    "RequestTimeout",
    "Source",
    "Unauthorized",
    "UpstreamError",
    "UpstreamUnavailable",
    "error_response",
    "internal_error",
    "sse_error_event",
]


def internal_error(where: str) -> GatewayError:
    """A 500 for a bug: the client gets a request id, the log gets it with the traceback (call it from the
    ``except`` block). The exception's text stays in the log: it may hold paths, addresses or data."""
    request_id = f"req_{secrets.token_hex(8)}"
    log.exception("unhandled error on %s (%s)", where, request_id)
    return GatewayError(f"internal error (request id {request_id}; the gateway's log has the details)")


def anthropic_error_response(err: GatewayError) -> Response:
    """An error in Anthropic's shape (``{"type": "error", "error": {"type", "message"}}``), with the status,
    Retry-After and source headers OpenAI's shape gets, and a ``request-id`` as Anthropic's API sends."""
    headers: dict[str, str] = {"x-error-source": err.source, "request-id": f"req_{secrets.token_hex(12)}"}
    if err.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(err.retry_after)))
    body = gateway_error_body(err)
    return Response(json.dumps(body), status_code=err.status, headers=headers, media_type="application/json")


def error_response(err: GatewayError) -> Response:
    headers: dict[str, str] = {"x-error-source": err.source}
    if err.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(err.retry_after)))
    if isinstance(err, PayloadTooLarge):
        # The rest of the body is still on its way; keeping the connection would mean reading it all.
        headers["connection"] = "close"
    return Response(
        json.dumps(err.body()), status_code=err.status, headers=headers, media_type="application/json"
    )
