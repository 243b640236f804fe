"""The OpenAPI 3.1 document of the gateway's HTTP surface, served at ``GET /openapi.json``.

``build_document`` is pure: the same dict every time, from the request models that the ``/v1`` handlers
validate with (``gateway.api.validation``, in their validation mode, so a fuzzer that follows the document
sends bodies the in-process engine accepts) and the response models of ``gateway.http.openapi_schemas``.
Pydantic's ``$defs`` become ``components/schemas``; OpenAPI 3.1 schemas are JSON Schema 2020-12, which is what
pydantic writes, so nothing is translated. The document is built once per process (``openapi_json``) and
served as bytes.

Request bodies describe what the in-process engine takes (``additionalProperties: false``: it refuses a field
it would not act on). Models behind an HTTP upstream (llama-server, vLLM, remote) take more: there the gateway
checks only ``model``, ``stream`` and the prompt field, and passes every other field to the engine (README:
"What each backend kind does with each request field").
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.validation import ChatRequest, CompletionRequest, EmbeddingRequest
from gateway.http import openapi_agents
from gateway.http.openapi_ops import ANTHROPIC_ERRORS, AREAS, ERRORS, EXAMPLES, OPERATIONS, Op
from gateway.http.openapi_schemas import RESPONSE_MODELS

REQUEST_MODELS: dict[str, type[ChatRequest | CompletionRequest | EmbeddingRequest]] = {
    "/v1/chat/completions": ChatRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}
# Anthropic's Messages API and OpenAI's Responses API: translated to chat completions by their handlers
AGENT_REQUEST_MODELS = openapi_agents.REQUEST_MODELS

_SCHEMA = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _SCHEMA.format(model=name)}


def _content(op: Op) -> dict[str, Any]:
    if op.returns == "text/plain":
        return {"text/plain": {"schema": {"type": "string"}}}
    if op.returns == "object":
        return {"application/json": {"schema": {"type": "object"}}}
    content: dict[str, Any] = {"application/json": {"schema": _ref(op.returns)}}
    if op.events is not None:
        # OpenAPI 3.1 cannot type the events of a stream: x-event-data names their schema for readers.
        stream: dict[str, Any] = {"schema": {"type": "string", "description": op.events}}
        if op.event_data is not None:
            stream["x-event-data"] = _ref(op.event_data)
        content["text/event-stream"] = stream
    return content


def _operation(op: Op) -> dict[str, Any]:
    tag, security = next(area for prefix, area in AREAS.items() if op.path.startswith(prefix))
    out: dict[str, Any] = {
        "operationId": op.op_id,
        "summary": op.summary,
        "tags": [tag],
        "security": security,
    }
    if op.params:
        out["parameters"] = [{"$ref": f"#/components/parameters/{p}"} for p in op.params]
    if op.body is not None:
        media = {"schema": _ref(op.body), "example": EXAMPLES[op.body]}
        out["requestBody"] = {"required": True, "content": {"application/json": media}}
    if op.deprecated:
        out["deprecated"] = True
    ok: dict[str, Any] = {
        "description": "OK" if op.events is None else f"JSON, or {op.events}",
        "content": _content(op),
    }
    anthropic = op.path.startswith("/v1/messages")
    if anthropic:
        ok["headers"] = {"request-id": {"$ref": "#/components/headers/RequestId"}}
    errors = {str(c): {"$ref": f"#/components/responses/{_error_name(c, anthropic)}"} for c in op.errors}
    out["responses"] = {"200": ok, **errors}
    return out


def _error_name(status: int, anthropic: bool) -> str:
    """The component of an error response: Anthropic's shape on /v1/messages, but for a 408, which the HTTP
    layer writes before any handler has the request (``server_limits``)."""
    name = ERRORS[status][0]
    return f"Anthropic{name}" if anthropic and status in ANTHROPIC_ERRORS else name


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return paths


def _parameter(name: str, where: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": description,
    }


def _parameters() -> dict[str, Any]:
    # Starlette's {name:path}: a name with a slash (Qwen/Qwen2.5-7B) is sent unescaped.
    named = "A model name or alias; it may contain `/`, sent unescaped (`Qwen/Qwen2.5-7B`)."
    flag = {"type": "boolean", "default": False}
    return {
        "ModelName": _parameter("model", "path", {"type": "string"}, named),
        "Name": _parameter("name", "path", {"type": "string"}, named),
        "Force": _parameter(
            "force", "query", flag, "Do not wait for in-flight requests: they end with an error."
        ),
        "Follow": _parameter("follow", "query", flag, "Stay open as `text/event-stream`, sending new lines."),
        "ResponseId": _parameter("response_id", "path", {"type": "string"}, "A stored response's `id`."),
        "Since": _parameter(
            "since", "query", {"type": "integer", "minimum": 0, "default": 0}, "Entries with a larger `id`."
        ),
        "ActivityLimit": _parameter(
            "limit", "query", {"type": "integer", "minimum": 0, "default": 0}, "The newest this many (0: all)"
        ),
        "SeriesSince": _parameter(
            "since", "query", {"type": "number", "default": 0}, "Only samples after this time (Unix seconds)."
        ),
        "Order": _parameter(
            "order",
            "query",
            {"type": "string", "enum": ["asc", "desc"], "default": "desc"},
            "`desc`: the last item first.",
        ),
        "Limit": _parameter(
            "limit",
            "query",
            {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
            "Items a page.",
        ),
        "After": _parameter(
            "after", "query", {"type": "string"}, "The page after this item's `id` (one of this response's)."
        ),
    }


def _responses() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, description, retry in ERRORS.values():
        headers: dict[str, Any] = {"x-error-source": {"$ref": "#/components/headers/ErrorSource"}}
        if retry:
            headers["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
        out[name] = {
            "description": description,
            "headers": headers,
            "content": {"application/json": {"schema": _ref("ErrorResponse")}},
        }
    for status in ANTHROPIC_ERRORS:
        name = ERRORS[status][0]
        out[f"Anthropic{name}"] = {
            **out[name],
            "description": f"{out[name]['description']} In Anthropic's shape.",
            "headers": {**out[name]["headers"], "request-id": {"$ref": "#/components/headers/RequestId"}},
            "content": {"application/json": {"schema": _ref("AnthropicErrorResponse")}},
        }
    return out


def _component_schemas() -> dict[str, Any]:
    inputs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (m, "validation") for m in [*REQUEST_MODELS.values(), *AGENT_REQUEST_MODELS.values()]
    ]
    outputs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (m, "serialization") for m in [*RESPONSE_MODELS, *openapi_agents.RESPONSE_MODELS]
    ]
    _, top = models_json_schema([*inputs, *outputs], ref_template=_SCHEMA)
    schemas: dict[str, Any] = top["$defs"]
    # Where the models' types say less than the gateway or OpenAI require: EmbeddingRequest's type allows ""
    # and [], which validate() then refuses ('input' must not be empty); logit_bias maps token ids to a bias
    # in [-100, 100] (OpenAI's rule; the engine indexes its logits by int(key), a C long).
    for alt in schemas["EmbeddingRequest"]["properties"]["input"]["anyOf"]:
        alt["minLength" if alt["type"] == "string" else "minItems"] = 1
    for name in ("ChatRequest", "CompletionRequest"):
        for alt in schemas[name]["properties"]["logit_bias"]["anyOf"]:
            if alt["type"] == "object":
                alt["propertyNames"] = {"pattern": "^[0-9]{1,9}$"}
                alt["additionalProperties"] = {"type": "number", "minimum": -100, "maximum": 100}
    return schemas


def _version() -> str:
    try:
        return importlib.metadata.version("llm-gateway")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


DESCRIPTION = """One OpenAI-compatible endpoint in front of many self-hosted models. `/v1` is OpenAI's API for
chat completions, completions, embeddings, models and responses (the Responses API), and Anthropic's Messages
API (`/v1/messages`); `/admin` is the operator's API. Every error is
`{"error": {"message", "type", "param", "code", "source"}}`, where `source` says who failed: `gateway` or
`upstream` (the engine); the `x-error-source` header says the same. On `/v1/messages` errors are in
Anthropic's shape, `{"type": "error", "error": {"type", "message"}}`, with the same status codes and
headers."""


def build_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document, as a fresh dict (pure: no I/O but the installed package's version)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "llm-gateway", "version": _version(), "description": DESCRIPTION},
        "tags": [
            {"name": "OpenAI", "description": "The OpenAI-compatible API, the Responses API included."},
            {
                "name": "Anthropic",
                "description": "Anthropic's Messages API, translated to chat completions: every model.",
            },
            {"name": "Admin", "description": "Models, memory and manifests, with the admin key."},
            {"name": "Operations", "description": "Unauthenticated: health, metrics, this document."},
        ],
        "paths": _paths(),
        "components": {
            "schemas": _component_schemas(),
            "responses": _responses(),
            "parameters": _parameters(),
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer", "minimum": 1},
                },
                "RequestId": {
                    "description": "The request's id (`req_...`), as Anthropic's API sends it.",
                    "schema": {"type": "string"},
                },
                "ErrorSource": {
                    "description": "Who failed.",
                    "schema": {"type": "string", "enum": ["gateway", "upstream"]},
                },
            },
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key for `/v1`."},
                "anthropicKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "An API key for `/v1`, as Anthropic's SDKs send it (Bearer works too).",
                },
                "adminKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The admin key, for `/admin`.",
                },
            },
        },
    }


@functools.cache
def openapi_json() -> bytes:
    """The document as served: built once per process."""
    return json.dumps(build_document(), separators=(",", ":")).encode()


async def openapi_endpoint(request: Request) -> Response:
    return Response(openapi_json(), media_type="application/json")


def openapi_route() -> Route:
    """``GET /openapi.json``; it is outside ``/v1`` and ``/admin``, so no key guards it."""
    return Route("/openapi.json", openapi_endpoint, methods=["GET"])
