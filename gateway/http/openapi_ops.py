"""The gateway's HTTP operations as the OpenAPI document describes them (``gateway.http.openapi`` builds
it): each path's method, summary, body, answer, streamed events and errors; the areas (tags and keys) of the
paths; the error statuses with their meaning; the request examples. Data only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
