"""Anthropic's Messages API in the OpenAPI document (``POST /v1/messages``, ``/v1/messages/count_tokens``):
its request and answer bodies as pydantic models, for ``gateway.http.openapi`` only (nothing validates or
serializes through them). Answers are as ``from_chat`` and ``anthropic_stream`` write them (and as engines
that speak the API send them through)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, RootModel
from pydantic.json_schema import SkipJsonSchema

from gateway.http.openapi_base import (
    IGNORED,
    TOOL_NAME,
    Closed,
    NoDefault,
    Open,
    Positive,
    Temperature,
    TopP,
    no_default,
)


class TextBlockParam(Open):
    type: Literal["text"]
    text: str


class ToolResultBlockParam(Open):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlockParam] = Field("", description="text only: images are refused")
    is_error: bool | None = Field(None, description="true: the content is sent to the model as 'Error: ...'")


class ToolUseBlockParam(Open):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class UserMessageParam(Open):
    role: Literal["user"]
    content: str | Annotated[list[TextBlockParam | ToolResultBlockParam], Field(min_length=1)] = Field(
        description="text and tool_result blocks (image, document: a 400 naming the block)"
    )


class AssistantMessageParam(Open):
    role: Literal["assistant"]
    content: str | list[TextBlockParam | ToolUseBlockParam] = Field(
        description="text and tool_use blocks (thinking blocks: a 400)"
    )


class AnthropicTool(Open):
    """A client tool; server tools (``web_search_...``, ``bash_...``) are a 400."""

    type: Literal["custom"] | SkipJsonSchema[None] = NoDefault
    name: str = Field(pattern=TOOL_NAME)
    input_schema: dict[str, Any]
    description: str | None = None


class ToolChoiceAuto(Open):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(Open):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(Open):
    type: Literal["none"]


class ToolChoiceTool(Open):
    type: Literal["tool"]
    name: str = Field(min_length=1)
    disable_parallel_tool_use: bool | None = None


class AnthropicMetadata(Open):
    user_id: str | None = Field(None, description="Session affinity, as a chat request's user.")


class ThinkingDisabled(Open):
    type: Literal["disabled"]


class OutputConfig(Closed):
    effort: Any = Field(None, description="Ignored: it tunes reasoning, which these models do not do.")


class MessagesRequest(Closed):
    model: str = Field(min_length=1)
    max_tokens: Positive
    messages: Annotated[list[UserMessageParam | AssistantMessageParam], Field(min_length=1)]
    system: str | list[TextBlockParam] | None = None
    stop_sequences: list[str] | None = None
    temperature: Temperature | None = Field(
        None, description="Anthropic's range is [0, 1]; the engine's [0, 2]."
    )
    top_p: TopP | None = None
    top_k: Annotated[int, Field(ge=0, le=1 << 20)] | None = None
    stream: bool | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: ToolChoiceAuto | ToolChoiceAny | ToolChoiceNone | ToolChoiceTool | None = None
    metadata: AnthropicMetadata | None = None
    output_config: OutputConfig | None = None
    thinking: ThinkingDisabled | SkipJsonSchema[None] = Field(
        None,
        json_schema_extra=no_default,
        description="Only {type: disabled}: these models do not expose extended thinking.",
    )
    service_tier: Any = Field(None, description=IGNORED)
    container: Any = Field(None, description=IGNORED)
    context_management: Any = Field(None, description=IGNORED)
    cache_control: Any = Field(None, description=IGNORED)
    diagnostics: Any = Field(None, description=IGNORED)
    inference_geo: Any = Field(None, description=IGNORED)
    speed: Any = Field(None, description=IGNORED)
    user_profile_id: Any = Field(None, description=IGNORED)
    workspace_id: Any = Field(None, description=IGNORED)


class CountTokensRequest(MessagesRequest):
    """A Messages body whose prompt is counted by the model itself (the engine generates one token)."""

    max_tokens: Any = Field(None, description="Ignored: the count generates one token.")
    stream: Any = Field(None, description="Ignored: the count is never streamed.")


# answers


class TextBlock(BaseModel):
    type: Literal["text"]
    text: str


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(description="the arguments the model wrote ({} in a content_block_start)")


class AnthropicUsage(BaseModel):
    input_tokens: int
    output_tokens: int


StopReason = Literal["end_turn", "max_tokens", "tool_use"]


class Message(BaseModel):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str = Field(description="the name the request asked for")
    content: list[TextBlock | ToolUseBlock]
    stop_reason: StopReason | None = Field(description="null only in message_start")
    stop_sequence: None
    usage: AnthropicUsage


class MessageTokensCount(BaseModel):
    input_tokens: int


class AnthropicErrorDetail(BaseModel):
    type: str = Field(
        description="invalid_request_error, authentication_error, not_found_error, request_too_large, "
        "rate_limit_error, overloaded_error, timeout_error, api_error"
    )
    message: str


class AnthropicErrorResponse(BaseModel):
    type: Literal["error"]
    error: AnthropicErrorDetail


class MessageStart(BaseModel):
    type: Literal["message_start"]
    message: Message


class ContentBlockStart(BaseModel):
    type: Literal["content_block_start"]
    index: int
    content_block: TextBlock | ToolUseBlock


class TextDelta(BaseModel):
    type: Literal["text_delta"]
    text: str


class InputJsonDelta(BaseModel):
    type: Literal["input_json_delta"]
    partial_json: str


class ContentBlockDelta(BaseModel):
    type: Literal["content_block_delta"]
    index: int
    delta: TextDelta | InputJsonDelta


class ContentBlockStop(BaseModel):
    type: Literal["content_block_stop"]
    index: int


class MessageDeltaBody(BaseModel):
    stop_reason: StopReason
    stop_sequence: None


class MessageDelta(BaseModel):
    type: Literal["message_delta"]
    delta: MessageDeltaBody
    usage: AnthropicUsage


class MessageStop(BaseModel):
    type: Literal["message_stop"]


class MessageStreamEvent(
    RootModel[
        Annotated[
            MessageStart
            | ContentBlockStart
            | ContentBlockDelta
            | ContentBlockStop
            | MessageDelta
            | MessageStop
            | AnthropicErrorResponse,
            Field(discriminator="type"),
        ]
    ]
):
    """The data of one event (``event: <its type>``): ``message_start``, per block ``content_block_start``,
    ``content_block_delta``..., ``content_block_stop``, then ``message_delta`` and ``message_stop``; or an
    ``error`` event, which ends the stream."""
