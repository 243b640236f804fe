"""The HTTP edge of the exception tree (``backends.errors``, which both layers share): an error to a response.

The tree is re-exported here so that gateway code imports errors from one place.
"""

from __future__ import annotations

import json
import math

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
    "sse_error_event",
]


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
