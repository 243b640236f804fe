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
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.validation import ChatRequest, CompletionRequest, EmbeddingRequest
from gateway.http import openapi_agents
from gateway.http.openapi_schemas import RESPONSE_MODELS

REQUEST_MODELS: dict[str, type[ChatRequest | CompletionRequest | EmbeddingRequest]] = {
    "/v1/chat/completions": ChatRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}
# Anthropic's Messages API and OpenAI's Responses API: translated to chat completions by their handlers
AGENT_REQUEST_MODELS = openapi_agents.REQUEST_MODELS

_SCHEMA = "#/components/schemas/{model}"
Security = list[dict[str, list[str]]]
# by path prefix: the tag and the key that guards it (/metrics and /health are open, as Prometheus expects)
AREAS: dict[str, tuple[str, Security]] = {
    "/v1/messages": ("Anthropic", [{"apiKey": []}, {"anthropicKey": []}]),  # Anthropic's SDKs: x-api-key
    "/v1/": ("OpenAI", [{"apiKey": []}]),
    "/admin/": ("Admin", [{"adminKey": []}]),
    "/": ("Operations", []),
}

# status: (component name, description, whether it carries Retry-After)
ERRORS: dict[int, tuple[str, str, bool]] = {
    400: ("BadRequest", "The request is invalid; `param` names the offending field.", False),
    401: ("Unauthorized", "Missing or wrong API key.", False),
    403: ("Forbidden", "The key is valid but not for this route (a `/v1` key on `/admin`).", False),
    404: ("NotFound", "No such model (`code: model_not_found`) or route.", False),
    408: (
        "RequestTimeout",
        "The request's head or body did not arrive within the gateway's deadline; the connection closes.",
        False,
    ),
    413: ("PayloadTooLarge", "The request body is larger than the gateway accepts.", False),
    429: (
        "TooManyRequests",
        "The model's queue is full (`code: queue_full`), or the API key has its cap of requests under way "
        "(`code: key_concurrency_exceeded`).",
        True,
    ),
    500: ("InternalError", "The gateway failed.", False),
    502: ("BadGateway", "The engine failed (`source: upstream`).", False),
    503: (
        "ServiceUnavailable",
        "The model cannot be served now: its load failed, or it does not fit in memory (`code` says which).",
        True,
    ),
    504: ("GatewayTimeout", "The engine did not answer within a deadline (`code: upstream_timeout`).", False),
}
V1_ERRORS = (400, 401, 403, 404, 408, 413, 429, 500, 502, 503, 504)
ANTHROPIC_ERRORS = tuple(c for c in V1_ERRORS if c != 408)
AUTH = (401, 403, 500)
NAMED = (401, 403, 404, 500)

STREAMED = (
    "with `stream: true`, `data: <{}>` events, then `data: [DONE]`; an error after the first event "
    "comes as `data: <ErrorResponse>`"
)

ANTHROPIC_STREAMED = (
    "with `stream: true`, Anthropic's events, each `event: <type>` and `data: <MessageStreamEvent>`: "
    "`message_start`, per content block `content_block_start`, `content_block_delta`..., "
    "`content_block_stop`, then `message_delta` (the stop reason and usage) and `message_stop`; an error "
    "after the first event comes as an `error` event, which ends the stream"
)
RESPONSES_STREAMED = (
    "with `stream: true`, OpenAI's typed events, each `event: <type>` and `data: <ResponseStreamEvent>` "
    "numbered by `sequence_number`: `response.created`, `response.in_progress`, the output items' events, "
    "then `response.completed` (or `response.incomplete`); an error after the first event comes as "
    "`response.failed`, which ends the stream"
)


@dataclass(frozen=True)
class Op:
    """One operation. ``returns`` names the component schema of its 200 JSON body; ``events``, when set, is
    what its ``text/event-stream`` alternative carries, and ``event_data`` the schema of each event's data."""

    method: str
    path: str
    op_id: str
    summary: str
    returns: str
    errors: tuple[int, ...] = ()
    params: tuple[str, ...] = ()
    body: str | None = None
    events: str | None = None
    event_data: str | None = None
    deprecated: bool = False


UNLOAD = "Unload: drain first, or with `force` cut in-flight requests with an error event"
OPERATIONS: tuple[Op, ...] = (
    Op(
        "post",
        "/v1/chat/completions",
        "createChatCompletion",
        "Chat completion",
        "ChatCompletion",
        V1_ERRORS,
        body="ChatRequest",
        events=STREAMED.format("ChatCompletionChunk"),
        event_data="ChatCompletionChunk",
    ),
    Op(
        "post",
        "/v1/completions",
        "createCompletion",
        "Text completion",
        "Completion",
        V1_ERRORS,
        body="CompletionRequest",
        events=STREAMED.format("Completion"),
        event_data="Completion",
    ),
    Op(
        "post",
        "/v1/embeddings",
        "createEmbedding",
        "Embeddings, one per input",
        "CreateEmbeddingResponse",
        V1_ERRORS,
        body="EmbeddingRequest",
    ),
    Op(
        "post",
        "/v1/messages",
        "createMessage",
        "Anthropic's Messages API: a message, on any model",
        "Message",
        V1_ERRORS,
        body="MessagesRequest",
        events=ANTHROPIC_STREAMED,
        event_data="MessageStreamEvent",
    ),
    Op(
        "post",
        "/v1/messages/count_tokens",
        "countMessageTokens",
        "The prompt's tokens, as the model counts them (it loads the model and generates one token)",
        "MessageTokensCount",
        V1_ERRORS,
        body="CountTokensRequest",
    ),
    Op(
        "post",
        "/v1/responses",
        "createResponse",
        "OpenAI's Responses API: a response, on any model; stored unless `store: false`",
        "Response",
        V1_ERRORS,
        body="ResponsesRequest",
        events=RESPONSES_STREAMED,
        event_data="ResponseStreamEvent",
    ),
    Op(
        "post",
        "/v1/responses/input_tokens",
        "countResponseInputTokens",
        "The input's tokens, as the model counts them (it loads the model and generates one token)",
        "ResponseInputTokens",
        V1_ERRORS,
        body="ResponsesInputTokensRequest",
    ),
    Op(
        "get",
        "/v1/responses/{response_id}",
        "getResponse",
        "A stored response (made with the same API key)",
        "Response",
        NAMED,
        ("ResponseId",),
    ),
    Op(
        "delete",
        "/v1/responses/{response_id}",
        "deleteResponse",
        "Delete a stored response",
        "ResponseDeleted",
        NAMED,
        ("ResponseId",),
    ),
    Op(
        "get",
        "/v1/responses/{response_id}/input_items",
        "listInputItems",
        "A stored response's input items, a page at a time",
        "InputItemList",
        (400, *NAMED),
        ("ResponseId", "Order", "Limit", "After"),
    ),
    Op("get", "/v1/models", "listModels", "Every model name and alias", "ListModelsResponse", AUTH),
    Op("get", "/v1/models/{model}", "retrieveModel", "One model", "Model", NAMED, ("ModelName",)),
    Op(
        "get",
        "/admin/models",
        "adminListModels",
        "Every model's state, memory and replicas; devices; refused manifests",
        "AdminModelList",
        AUTH,
    ),
    Op("get", "/admin/models/{name}", "adminGetModel", "One model", "AdminModel", NAMED, ("Name",)),
    Op(
        "post",
        "/admin/models/{name}/load",
        "adminLoadModel",
        "Load now (waits for the load)",
        "AdminModel",
        (*NAMED, 503),
        ("Name",),
    ),
    Op(
        "post",
        "/admin/models/{name}/unload",
        "adminUnloadModel",
        UNLOAD,
        "AdminModel",
        (400, *NAMED),
        ("Name", "Force"),
    ),
    Op(
        "post",
        "/admin/models/{name}/evict",
        "adminEvictModel",
        f"{UNLOAD} (the same as unload)",
        "AdminModel",
        (400, *NAMED),
        ("Name", "Force"),
        deprecated=True,
    ),
    Op(
        "post",
        "/admin/models/{name}/pin",
        "adminPinModel",
        "Never evict; loads it if needed",
        "AdminModel",
        (*NAMED, 503),
        ("Name",),
    ),
    Op(
        "post",
        "/admin/models/{name}/unpin",
        "adminUnpinModel",
        "Evictable again",
        "AdminModel",
        NAMED,
        ("Name",),
    ),
    Op(
        "get",
        "/admin/models/{name}/logs",
        "adminModelLogs",
        "The last lines each replica wrote",
        "ModelLogs",
        (400, *NAMED),
        ("Name", "Follow"),
        events="with `follow=true`: one event per new log line",
    ),
    Op(
        "get",
        "/admin/models/{name}/plan",
        "adminPlanLoad",
        "Would it fit now, and what would loading it evict (a dry run, by the same placement as a load)",
        "Plan",
        NAMED,
        ("Name",),
    ),
    Op(
        "get",
        "/admin/devices",
        "adminListDevices",
        "Memory per device against its budget",
        "DeviceList",
        AUTH,
    ),
    Op("post", "/admin/reload", "adminReload", "Reload the manifests", "ReloadResult", AUTH),
    Op(
        "get",
        "/admin/activity",
        "adminActivity",
        "The last requests: model, key name, status, tokens, TTFT, tokens/s (the console's Activity)",
        "ActivityList",
        (400, *AUTH),
        ("Since", "ActivityLimit"),
    ),
    Op(
        "get",
        "/admin/series",
        "adminSeries",
        "Tokens/s and queue depth per model, memory per device, sampled every 2 s (the console's charts)",
        "Series",
        (400, *AUTH),
        ("SeriesSince",),
    ),
    Op("get", "/admin/session", "adminSession", "The key a request carries; may it act", "Session", AUTH),
    Op(
        "get",
        "/admin/cluster",
        "adminCluster",
        "Cluster mode: the fleet's members, its leader, the store, the shared table (alone: role 'alone')",
        "object",
        AUTH,
    ),
    Op("get", "/health", "health", "Liveness", "Health"),
    Op("get", "/metrics", "metrics", "Prometheus metrics (text exposition format 0.0.4)", "text/plain"),
    Op("get", "/openapi.json", "openapi", "This document (OpenAPI 3.1)", "object"),
)

EXAMPLES: dict[str, dict[str, Any]] = {
    "ChatRequest": {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Hi!"}]},
    "CompletionRequest": {"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 16},
    "EmbeddingRequest": {"model": "text-embedding-3-small", "input": ["one vector", "per input"]},
    "MessagesRequest": {
        "model": "smollm2",
        "max_tokens": 64,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi!"}],
    },
    "CountTokensRequest": {"model": "smollm2", "messages": [{"role": "user", "content": "Hi!"}]},
    "ResponsesRequest": {
        "model": "gpt-3.5-turbo",
        "instructions": "Be brief.",
        "input": "Hi!",
        "max_output_tokens": 64,
    },
    "ResponsesInputTokensRequest": {"model": "gpt-3.5-turbo", "input": [{"role": "user", "content": "Hi!"}]},
}


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
