"""The agent APIs in the OpenAPI document: which model describes each request body, and the answers'
models (``openapi_anthropic``: Anthropic's Messages API; ``openapi_responses``: OpenAI's Responses API)."""

from __future__ import annotations

from pydantic import BaseModel

from gateway.http.openapi_anthropic import (
    AnthropicErrorResponse,
    CountTokensRequest,
    Message,
    MessagesRequest,
    MessageStreamEvent,
    MessageTokensCount,
)
from gateway.http.openapi_responses import (
    InputItemList,
    Response,
    ResponseDeleted,
    ResponseInputTokens,
    ResponsesInputTokensRequest,
    ResponsesRequest,
    ResponseStreamEvent,
)

REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "/v1/messages": MessagesRequest,
    "/v1/messages/count_tokens": CountTokensRequest,
    "/v1/responses": ResponsesRequest,
    "/v1/responses/input_tokens": ResponsesInputTokensRequest,
}
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    Message,
    MessageTokensCount,
    MessageStreamEvent,
    AnthropicErrorResponse,
    Response,
    ResponseInputTokens,
    ResponseDeleted,
    InputItemList,
    ResponseStreamEvent,
)
